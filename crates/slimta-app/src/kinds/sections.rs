//! Reading `[SECTION.NAME]` tables whose `type` picks a kind from a table:
//! the part `[policy.NAME]`, `[check.NAME]` and `[relay.NAME]` share, and
//! the storage `type` of a `[queue.NAME]` (whose other keys are the
//! queue's).
//!
//! Each section's `type` must name a known kind; a kind without a reader
//! is known but not built yet, and using it is an error ("not built yet",
//! with the built ones listed) rather than a section silently ignored. The
//! kind's reader takes its own keys; unknown keys are reported afterwards
//! (a key that only another kind takes as "unknown key for type").
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

/// A configured section (or, for policies, a bare kind name; for a
/// storage, the queue section it is part of): its name, its kind, and the
/// settings the kind read.
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
/// `"check"`, `"relay"`, ...) with the kinds of `kinds`.
pub(crate) fn read<K: Readable>(
    section: &str,
    kinds: &'static [K],
    tables: &BTreeMap<String, &Table>,
    errors: &mut Errors,
) -> BTreeMap<String, Configured<K>> {
    let elsewhere = keys_of(kinds);
    let mut out = BTreeMap::new();
    for (name, table) in tables {
        let mut s = Section::new(format!("{section}.{name}"), table);
        let Some((kind, settings)) = read_kind(section, kinds, &mut s, errors) else {
            continue;
        };
        s.finish(errors, &elsewhere, Some(kind.name()));
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

/// Reads the `type` of `s` and lets that kind read its keys from `s`; the
/// caller reads its own keys and then finishes `s` (with [`keys_of`] as the
/// keys of other kinds). `None`: no usable kind (reported); `Some((kind,
/// None))`: the kind's keys have errors (reported). `section` names the
/// section in the "not built yet" message. For kinds that live inside a
/// section with keys of its own, such as a queue's storage.
pub(crate) fn read_kind<K: Readable>(
    section: &str,
    kinds: &'static [K],
    s: &mut Section<'_>,
    errors: &mut Errors,
) -> Option<(&'static K, Option<Arc<K::Settings>>)> {
    let names: Vec<&str> = kinds.iter().map(Kind::name).collect();
    let kind = s
        .required(errors, "type", choice(&names))
        .and_then(|t| kinds.iter().find(|k| k.name() == t))?;
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
        return None;
    };
    Some((kind, read(s, errors)))
}

/// Every key some kind of `kinds` reads, for "unknown key for type" (a key
/// that another kind takes is a wrong type, not a typo). Found by running
/// each reader on an empty section and keeping the keys it asked for, so
/// there is no second list to keep in step with the readers; a reader
/// therefore asks for its keys whether or not the others are present.
pub(crate) fn keys_of<K: Readable>(kinds: &'static [K]) -> Vec<&'static str> {
    let empty = Table::new();
    let mut keys = BTreeSet::new();
    for read in kinds.iter().filter_map(Readable::reader) {
        let mut s = Section::new(String::new(), &empty);
        let _ = read(&mut s, &mut Errors::default());
        keys.extend(s.asked());
    }
    keys.into_iter().collect()
}

/// The names of every section, read or not.
pub(crate) fn section_names(tables: &BTreeMap<String, &Table>) -> BTreeSet<String> {
    tables.keys().cloned().collect()
}
