//! Reading `[SECTION.NAME]` tables whose `type` picks a kind from a table:
//! the part `[policy.NAME]` and `[check.NAME]` share.
//!
//! Each section's `type` must name a known kind; a kind without a reader
//! is known but not built yet, and using it is an error ("not built yet",
//! with the built ones listed) rather than a section silently ignored. The
//! kind's reader takes its own keys; unknown keys are reported afterwards.
//! A section with errors is left out (its errors are reported), but its
//! name stays known ([`section_names`]), so references to it are not
//! reported a second time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use toml::Table;

use crate::config::fields::{Errors, Section, choice, quoted};

/// Reads a kind's keys from its section (`type` is already taken).
pub(crate) type Reader<S> = fn(&mut Section<'_>, &mut Errors) -> Option<Arc<S>>;

/// One entry of a kind table.
pub(crate) trait Kind: Sync + 'static {
    /// What the reader produces.
    type Settings: ?Sized;
    /// The `type` in the file.
    fn name(&self) -> &'static str;
    /// `None`: known but not built yet.
    fn reader(&self) -> Option<Reader<Self::Settings>>;
}

/// Reads every `[SECTION.NAME]` of `tables` (`section` is `"policy"`,
/// `"check"`, ...) with the kinds of `kinds`.
pub(crate) fn read<K: Kind>(
    section: &str,
    kinds: &'static [K],
    tables: &BTreeMap<String, &Table>,
    errors: &mut Errors,
) -> BTreeMap<String, (&'static K, Arc<K::Settings>)> {
    let names: Vec<&str> = kinds.iter().map(Kind::name).collect();
    let mut out = BTreeMap::new();
    for (name, table) in tables {
        let mut s = Section::new(format!("{section}.{name}"), table);
        let Some(kind) = s
            .required(errors, "type", choice(&names))
            .and_then(|t| kinds.iter().find(|k| k.name() == t))
        else {
            continue;
        };
        let Some(read) = kind.reader() else {
            let built: Vec<&str> = kinds
                .iter()
                .filter(|k| k.reader().is_some())
                .map(Kind::name)
                .collect();
            errors.push(
                s.key_path("type"),
                format!(
                    "{section} type \"{}\" is not built yet (built: {})",
                    kind.name(),
                    quoted(&built)
                ),
            );
            continue;
        };
        let settings = read(&mut s, errors);
        s.finish(errors, &[], Some(kind.name()));
        if let Some(settings) = settings {
            out.insert(name.clone(), (kind, settings));
        }
    }
    out
}

/// The names of every section, read or not.
pub(crate) fn section_names(tables: &BTreeMap<String, &Table>) -> BTreeSet<String> {
    tables.keys().cloned().collect()
}
