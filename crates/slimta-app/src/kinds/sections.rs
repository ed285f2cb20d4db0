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
use std::fmt;
use std::sync::Arc;

use toml::Table;

use crate::config::fields::{Errors, Section, choice, quoted};

/// Reads a kind's keys from its section (`type` is already taken).
pub(crate) type Reader<S> = fn(&mut Section<'_>, &mut Errors) -> Option<Arc<S>>;

/// One entry of a kind table.
pub trait Kind: Sync + 'static {
    /// What the reader produces.
    type Settings: ?Sized + fmt::Debug + Send + Sync;
    /// The `type` in the file.
    fn name(&self) -> &'static str;
}

/// How a kind reads its section (apart from [`Kind`], which the public
/// configuration types name, because readers use the crate's own
/// section walker).
pub(crate) trait Readable: Kind {
    /// `None`: known but not built yet.
    fn reader(&self) -> Option<Reader<Self::Settings>>;
}

/// A configured section (or, for policies, a bare kind name): its name,
/// its kind, and the settings the kind read.
pub struct Configured<K: Kind> {
    /// The section name (a bare kind: the kind's name).
    pub name: String,
    /// Its kind.
    pub kind: &'static K,
    pub(crate) settings: Arc<K::Settings>,
}

impl<K: Kind> Clone for Configured<K> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            kind: self.kind,
            settings: self.settings.clone(),
        }
    }
}

impl<K: Kind> fmt::Debug for Configured<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Configured")
            .field("name", &self.name)
            .field("type", &self.kind.name())
            .field("settings", &self.settings)
            .finish()
    }
}

/// Two are the same when name, kind and settings read the same (what
/// SIGHUP needs to tell a changed queue or edge from an unchanged one).
impl<K: Kind> PartialEq for Configured<K> {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

impl<K: Kind> Eq for Configured<K> {}

/// Reads every `[SECTION.NAME]` of `tables` (`section` is `"policy"`,
/// `"check"`, ...) with the kinds of `kinds`.
pub(crate) fn read<K: Readable>(
    section: &str,
    kinds: &'static [K],
    tables: &BTreeMap<String, &Table>,
    errors: &mut Errors,
) -> BTreeMap<String, Configured<K>> {
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
            out.insert(
                name.clone(),
                Configured {
                    name: name.clone(),
                    kind,
                    settings,
                },
            );
        }
    }
    out
}

/// The names of every section, read or not.
pub(crate) fn section_names(tables: &BTreeMap<String, &Table>) -> BTreeSet<String> {
    tables.keys().cloned().collect()
}
