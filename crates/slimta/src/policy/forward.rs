//! Recipient rewriting: python-slimta's `Forward` (regex rewrites) plus
//! alias tables (`address: target, target`), as a [`QueuePolicy`] that runs
//! before the message is stored.
//!
//! Why before storage: the stored envelope then holds the final
//! recipients, so retries, bounces and per-recipient results all speak of
//! the addresses actually attempted, and a rewrite that goes wrong refuses
//! the message while the client is still there.
//!
//! How a recipient is rewritten:
//! - The rules are tried in the order they were added; the **first rule
//!   that matches wins**. A regex rule ([`Forward::add_mapping`]) gives one
//!   address (every match of the pattern replaced, as python's `re.sub`;
//!   `$1`/`${name}` name captures, write `${1}x` when a letter follows). An
//!   alias rule ([`Forward::add_aliases`]) gives its targets, one or more.
//! - Each new address is rewritten again, until no rule matches. A rule
//!   that gives back the address it was given ends that address's rewriting
//!   (`alice: alice, bob` keeps a copy for alice, as Postfix and sendmail
//!   treat an alias that names itself); that is not a loop.
//! - A chain of more than [`MAX_CHAIN`] rewrites, or an address that comes
//!   back in its own chain (`a -> b -> a`), is an error, never an endless
//!   rewrite. So is an expansion to more than [`MAX_RECIPIENTS`] addresses
//!   (a table that fans out at every level).
//! - The result has no recipient twice (compared case-insensitively, the
//!   first spelling kept, in order of first appearance): an alias and its
//!   member both named by the client deliver one copy. The sender is never
//!   touched.
//!
//! Decisions:
//! - **Case.** RFC 5321 says local parts are case-sensitive, but every MTA
//!   folds them for alias lookups (Postfix, Exim, sendmail), and mail for
//!   `Alice@Example.TEST` is meant for `alice@example.test`. Alias keys
//!   therefore match case-insensitively; targets are kept as written.
//!   Regex rules match as compiled: a program that wants case-insensitive
//!   patterns builds them so (the slimta app does, like Postfix's regexp
//!   tables).
//! - **Alias keys are whole addresses** (`alice@example.test`, or a bare
//!   local part such as `postmaster` for a recipient without a domain).
//!   There is no `@domain` catch-all: a regex rule does that.
//! - **A loop at run time refuses the message** with `554 5.4.6 Routing
//!   loop detected` (RFC 3463 X.4.6), as Postfix bounces with 5.4.6. A
//!   tempfail would only retry the same broken table until the message
//!   expired; refusing tells the sender now and puts the error in the
//!   log. A static table's loops are found earlier by [`Forward::check`]
//!   (which the app runs for `--check-config`), by [`Forward::reload`],
//!   which refuses an edit that makes a loop through any of the rules, and
//!   by [`AliasTable::reload`], which refuses a file with a loop in itself.
//! - **Hot reload.** An [`AliasTable`] is shared (`Arc<RwLock<..>>`) between
//!   the policy and whoever reloads it; [`Forward::reload`] (or one table's
//!   [`AliasTable::reload`]) parses the whole file first and swaps it in
//!   only when it is good, so a broken edit keeps the old table. A message
//!   sees one table for its whole expansion.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use regex::Regex;

use crate::envelope::Envelope;
use crate::reply::Reply;

use super::QueuePolicy;

/// The most rewrites one address may go through.
pub const MAX_CHAIN: usize = 10;

/// The most recipients one envelope may expand to.
pub const MAX_RECIPIENTS: usize = 1000;

/// Rewrites recipients; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Forward {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
enum Rule {
    Regex { pattern: Regex, replacement: String },
    Aliases(AliasTable),
}

/// Why recipients could not be rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardError {
    kind: ErrorKind,
    chain: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Loop,
    TooLong,
    TooMany,
}

impl ForwardError {
    /// Whether an address came back in its own chain.
    pub fn is_loop(&self) -> bool {
        self.kind == ErrorKind::Loop
    }

    /// Whether a chain had more than [`MAX_CHAIN`] rewrites.
    pub fn is_too_long(&self) -> bool {
        self.kind == ErrorKind::TooLong
    }

    /// The addresses of the chain that failed, first the recipient.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// The reply that refuses the message: `554 5.4.6` for a loop or a
    /// chain too long, `550 5.5.3` for too many recipients.
    pub fn reply(&self) -> Reply {
        match self.kind {
            ErrorKind::TooMany => Reply::new(550, "5.5.3", self.to_string()),
            _ => Reply::new(554, "5.4.6", self.to_string()),
        }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = self.chain.join(" -> ");
        match self.kind {
            ErrorKind::Loop => write!(f, "Routing loop detected: {chain}"),
            ErrorKind::TooLong => write!(
                f,
                "Routing loop detected: more than {MAX_CHAIN} rewrites: {chain}"
            ),
            ErrorKind::TooMany => write!(
                f,
                "Too many recipients: the expansion of <{}> exceeds {MAX_RECIPIENTS}",
                self.chain.first().map_or("", String::as_str)
            ),
        }
    }
}

impl std::error::Error for ForwardError {}

impl Forward {
    /// A policy with no rules (every recipient passes unchanged).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a regex rule: a recipient that `pattern` matches becomes
    /// `pattern.replace_all(recipient, replacement)`.
    #[must_use]
    pub fn add_mapping(mut self, pattern: Regex, replacement: impl Into<String>) -> Self {
        self.rules.push(Rule::Regex {
            pattern,
            replacement: replacement.into(),
        });
        self
    }

    /// Adds an alias table rule: a recipient that is a key of `table`
    /// becomes the key's targets.
    #[must_use]
    pub fn add_aliases(mut self, table: AliasTable) -> Self {
        self.rules.push(Rule::Aliases(table));
        self
    }

    /// The recipients after rewriting, without duplicates.
    ///
    /// # Errors
    ///
    /// A loop, a chain longer than [`MAX_CHAIN`] or more than
    /// [`MAX_RECIPIENTS`] results (see [`ForwardError`]).
    pub fn expand(&self, recipients: &[String]) -> Result<Vec<String>, ForwardError> {
        // One snapshot of every table for the whole envelope.
        let tables: Vec<Option<Arc<Aliases>>> = self
            .rules
            .iter()
            .map(|rule| match rule {
                Rule::Aliases(t) => Some(t.snapshot()),
                Rule::Regex { .. } => None,
            })
            .collect();
        let mut out = Expansion::default();
        for recipient in recipients {
            let mut chain = vec![recipient.clone()];
            self.expand_one(&tables, &mut chain, &mut out)?;
        }
        Ok(out.recipients)
    }

    /// Checks every alias key of every table, as [`Forward::expand`] would
    /// rewrite it, for loops and chains too long: what a configuration check
    /// runs so that a loop in a static table is found before mail is.
    ///
    /// # Errors
    ///
    /// Every key whose expansion fails, one error each (a loop `a -> b -> a`
    /// is reported once for `a` and once for `b`).
    pub fn check(&self) -> Result<(), Vec<ForwardError>> {
        let mut errors = Vec::new();
        for rule in &self.rules {
            if let Rule::Aliases(table) = rule {
                let snapshot = table.snapshot();
                let mut keys: Vec<&String> = snapshot.keys().collect();
                keys.sort();
                for key in keys {
                    if let Err(e) = self.expand(std::slice::from_ref(key)) {
                        errors.push(e);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Re-reads every alias table loaded from a file, checks the new tables
    /// together with the other rules as [`Forward::check`] does, and only
    /// then swaps them all in: a file that cannot be read or parsed, or an
    /// edit that makes a loop through the rules, keeps every old table, and
    /// no message ever sees a half-applied reload. Returns the number of
    /// alias keys now loaded.
    ///
    /// # Errors
    ///
    /// The first file error, or the first loop or chain too long.
    pub fn reload(&self) -> Result<usize, AliasError> {
        let mut fresh = Vec::new();
        let mut candidate = Forward::new();
        for rule in &self.rules {
            candidate.rules.push(match rule {
                Rule::Aliases(table) => {
                    let aliases = match &table.path {
                        Some(path) => read(path)?,
                        None => table.snapshot(),
                    };
                    fresh.push((table, aliases.clone()));
                    Rule::Aliases(AliasTable {
                        path: table.path.clone(),
                        aliases: Arc::new(RwLock::new(aliases)),
                    })
                }
                regex @ Rule::Regex { .. } => regex.clone(),
            });
        }
        if let Err(errors) = candidate.check() {
            return Err(AliasError(errors[0].to_string()));
        }
        let mut n = 0;
        for (table, aliases) in fresh {
            n += aliases.len();
            *table
                .aliases
                .write()
                .unwrap_or_else(PoisonError::into_inner) = aliases;
        }
        Ok(n)
    }

    /// What the first matching rule makes of `address`, or `None`.
    fn rewrite(&self, tables: &[Option<Arc<Aliases>>], address: &str) -> Option<Vec<String>> {
        self.rules
            .iter()
            .zip(tables)
            .find_map(|(rule, table)| match (rule, table) {
                (
                    Rule::Regex {
                        pattern,
                        replacement,
                    },
                    _,
                ) => pattern
                    .is_match(address)
                    .then(|| vec![pattern.replace_all(address, replacement).into_owned()]),
                (Rule::Aliases(_), Some(table)) => table.get(&address.to_lowercase()).cloned(),
                (Rule::Aliases(_), None) => None,
            })
    }

    /// Expands the last address of `chain` into `out`.
    fn expand_one(
        &self,
        tables: &[Option<Arc<Aliases>>],
        chain: &mut Vec<String>,
        out: &mut Expansion,
    ) -> Result<(), ForwardError> {
        let address = chain.last().cloned().unwrap_or_default();
        let Some(targets) = self.rewrite(tables, &address) else {
            return out.push(address, chain);
        };
        for target in targets {
            if same(&target, &address) {
                out.push(target, chain)?;
                continue;
            }
            let kind = if chain.iter().any(|a| same(a, &target)) {
                Some(ErrorKind::Loop)
            } else if chain.len() > MAX_CHAIN {
                Some(ErrorKind::TooLong)
            } else {
                None
            };
            if let Some(kind) = kind {
                let mut chain = chain.clone();
                chain.push(target);
                return Err(ForwardError { kind, chain });
            }
            chain.push(target);
            self.expand_one(tables, chain, out)?;
            chain.pop();
        }
        Ok(())
    }
}

/// Whether two addresses are the same for rewriting: the case folding of
/// alias keys and duplicate removal.
fn same(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// The final recipients so far, without duplicates.
#[derive(Default)]
struct Expansion {
    recipients: Vec<String>,
    seen: HashSet<String>,
}

impl Expansion {
    fn push(&mut self, address: String, chain: &[String]) -> Result<(), ForwardError> {
        if self.seen.insert(address.to_lowercase()) {
            if self.recipients.len() == MAX_RECIPIENTS {
                return Err(ForwardError {
                    kind: ErrorKind::TooMany,
                    chain: chain.to_vec(),
                });
            }
            self.recipients.push(address);
        }
        Ok(())
    }
}

impl QueuePolicy for Forward {
    async fn apply(&self, mut envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        match self.expand(&envelope.recipients) {
            Ok(recipients) => {
                envelope.recipients = recipients;
                Ok(vec![envelope])
            }
            Err(e) => {
                tracing::warn!(sender = %envelope.sender, error = %e, "message refused: recipient rewriting failed");
                Err(e.reply())
            }
        }
    }
}

/// Alias keys (lower case) and their targets.
type Aliases = HashMap<String, Vec<String>>;

/// An alias table that can be reloaded while it is in use; clones share
/// it. See the module docs for the format and the reload rule.
#[derive(Clone)]
pub struct AliasTable {
    path: Option<PathBuf>,
    aliases: Arc<RwLock<Arc<Aliases>>>,
}

impl fmt::Debug for AliasTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AliasTable")
            .field("path", &self.path)
            .field("entries", &self.snapshot().len())
            .finish()
    }
}

/// Why an alias file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasError(String);

impl fmt::Display for AliasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AliasError {}

impl AliasTable {
    /// The table written in `text`, in the format of the file (it has no
    /// file to reload from).
    ///
    /// The format: one `address: target[, target...]` per line; a line that
    /// starts with white space continues the previous entry's targets
    /// (aliases(5)); blank lines and lines whose first non-blank character
    /// is `#` are ignored. Keys are folded to lower case. The table alone is
    /// then checked for loops and chains longer than [`MAX_CHAIN`].
    ///
    /// # Errors
    ///
    /// With the line number: a line without `:`, an empty key, a key with
    /// white space or `<>`, a key listed twice or without targets; then the
    /// first loop or chain too long.
    pub fn from_text(text: &str) -> Result<Self, AliasError> {
        Ok(Self {
            path: None,
            aliases: Arc::new(RwLock::new(Self::parse(text)?)),
        })
    }

    /// The table in the file at `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or its text is refused as by
    /// [`AliasTable::from_text`] (the message names the file).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AliasError> {
        let path = path.as_ref().to_path_buf();
        let aliases = read(&path)?;
        Ok(Self {
            path: Some(path),
            aliases: Arc::new(RwLock::new(aliases)),
        })
    }

    /// Reads the file again and swaps the new table in; on any error the
    /// old table stays. Returns the number of entries.
    ///
    /// # Errors
    ///
    /// As [`AliasTable::load`]; a table made from text has nothing to
    /// reload and keeps its entries.
    pub fn reload(&self) -> Result<usize, AliasError> {
        let Some(path) = &self.path else {
            return Ok(self.len());
        };
        let aliases = read(path)?;
        let n = aliases.len();
        *self.aliases.write().unwrap_or_else(PoisonError::into_inner) = aliases;
        Ok(n)
    }

    /// The file this table was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The number of alias keys.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether the table has no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<Aliases> {
        self.aliases
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// See [`AliasTable::from_text`].
    fn parse(text: &str) -> Result<Arc<Aliases>, AliasError> {
        let mut aliases = Aliases::new();
        let mut last: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, targets) = if line.starts_with([' ', '\t']) {
                let Some(key) = last.clone() else {
                    return Err(AliasError(format!(
                        "line {n}: a continuation line with no entry before it"
                    )));
                };
                (key, trimmed)
            } else {
                let Some((key, targets)) = trimmed.split_once(':') else {
                    return Err(AliasError(format!(
                        "line {n}: expected \"address: target, target\""
                    )));
                };
                let key = key.trim().to_lowercase();
                if key.is_empty() || !plain(&key) {
                    return Err(AliasError(format!(
                        "line {n}: invalid alias \"{key}\" (an address without <> or spaces)"
                    )));
                }
                if aliases.contains_key(&key) {
                    return Err(AliasError(format!("line {n}: \"{key}\" is listed twice")));
                }
                aliases.insert(key.clone(), Vec::new());
                last = Some(key.clone());
                (key, targets)
            };
            let list = aliases.entry(key.clone()).or_default();
            for target in targets.split(',').map(str::trim) {
                if target.is_empty() {
                    // A trailing comma before a continuation line is fine.
                    continue;
                }
                if !plain(target) {
                    return Err(AliasError(format!(
                        "line {n}: invalid target \"{target}\" of \"{key}\" (an address without <> or spaces)"
                    )));
                }
                list.push(target.to_owned());
            }
        }
        if let Some((key, _)) = aliases.iter().find(|(_, targets)| targets.is_empty()) {
            return Err(AliasError(format!("\"{key}\" has no targets")));
        }
        let aliases = Arc::new(aliases);
        let table = AliasTable {
            path: None,
            aliases: Arc::new(RwLock::new(aliases.clone())),
        };
        if let Err(errors) = Forward::new().add_aliases(table).check() {
            return Err(AliasError(errors[0].to_string()));
        }
        Ok(aliases)
    }
}

/// An address as the table holds it: no white space, no angle brackets.
fn plain(address: &str) -> bool {
    !address
        .chars()
        .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

fn read(path: &Path) -> Result<Arc<Aliases>, AliasError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AliasError(format!("{}: cannot read: {e}", path.display())))?;
    AliasTable::parse(&text).map_err(|e| AliasError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn regex(pattern: &str) -> Regex {
        Regex::new(pattern).unwrap()
    }

    /// The rules of the issue's example plus an alias table.
    fn forward(aliases: &str) -> Forward {
        Forward::new()
            .add_mapping(regex(r"^(.+)@old\.test$"), "$1@new.test")
            .add_mapping(regex(r"^postmaster@.*$"), "admin@example.test")
            .add_aliases(AliasTable::from_text(aliases).unwrap())
    }

    #[test]
    fn table_of_rewrites() {
        let aliases = "# staff\n\
                       team@example.test: a@example.test, b@example.test\n\
                       Sales@Example.test: c@example.test,\n\
                       \td@example.test\n\
                       alice@example.test: alice@example.test, bob@example.test\n\
                       old@example.test: x@old.test\n\
                       postmaster: root@example.test\n";
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("no rule matches", &["z@other.test"], &["z@other.test"]),
            ("$1 captures", &["jo@old.test"], &["jo@new.test"]),
            (
                "rewritten again: postmaster@new.test is a postmaster",
                &["postmaster@old.test"],
                &["admin@example.test"],
            ),
            (
                "one-to-many alias",
                &["team@example.test"],
                &["a@example.test", "b@example.test"],
            ),
            (
                "keys fold case, continuation lines",
                &["SALES@example.TEST"],
                &["c@example.test", "d@example.test"],
            ),
            (
                "an alias naming itself is final",
                &["alice@example.test"],
                &["alice@example.test", "bob@example.test"],
            ),
            (
                "rules apply again to a rewritten address",
                &["old@example.test"],
                &["x@new.test"],
            ),
            (
                "duplicates removed after expansion",
                &["a@example.test", "team@example.test", "A@Example.test"],
                &["a@example.test", "b@example.test"],
            ),
            ("a bare local part", &["postmaster"], &["root@example.test"]),
        ];
        let f = forward(aliases);
        for (what, given, want) in cases {
            assert_eq!(f.expand(&strings(given)).unwrap(), strings(want), "{what}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let f = Forward::new()
            .add_aliases(AliasTable::from_text("a@x.test: alias@y.test\n").unwrap())
            .add_mapping(regex(r"^a@x\.test$"), "first@y.test")
            .add_mapping(regex(r"^(a|b)@.*$"), "second@y.test");
        let cases: &[(&str, &str)] = &[
            ("a@x.test", "alias@y.test"),
            ("b@x.test", "second@y.test"),
            ("c@x.test", "c@x.test"),
        ];
        for (given, want) in cases {
            assert_eq!(f.expand(&strings(&[given])).unwrap(), [*want], "{given}");
        }
        let f = Forward::new()
            .add_mapping(regex(r"^a@x\.test$"), "first@y.test")
            .add_mapping(regex(r"^a@.*$"), "second@y.test");
        assert_eq!(f.expand(&strings(&["a@x.test"])).unwrap(), ["first@y.test"]);
    }

    #[test]
    fn loops_and_long_chains_are_errors() {
        // A loop through a regex rule and the table.
        let f = forward("a@new.test: b@example.test\nb@example.test: a@old.test\n");
        let e = f.expand(&strings(&["a@old.test"])).unwrap_err();
        assert!(e.is_loop(), "{e}");
        assert_eq!(
            e.chain(),
            ["a@old.test", "a@new.test", "b@example.test", "a@old.test"]
        );
        assert_eq!(e.reply().code(), 554);
        assert_eq!(e.reply().enhanced().unwrap().to_string(), "5.4.6");
        assert!(f.check().is_err());

        // a0 -> a1 -> ... -> aN: ten rewrites are fine, eleven are not.
        let chain = |n: usize| {
            (0..n)
                .map(|i| format!("a{i}@x.test: a{}@x.test\n", i + 1))
                .collect::<String>()
        };
        let ten = Forward::new().add_aliases(AliasTable::from_text(&chain(10)).unwrap());
        assert_eq!(
            ten.expand(&strings(&["a0@x.test"])).unwrap(),
            ["a10@x.test"]
        );
        let eleven = AliasTable::from_text(&chain(11)).unwrap_err();
        assert!(eleven.to_string().contains("more than 10"), "{eleven}");
    }

    #[test]
    fn a_table_with_a_loop_of_its_own_is_refused() {
        let e = AliasTable::from_text("a@x.test: b@x.test\nb@x.test: c@x.test, A@x.test\n")
            .unwrap_err();
        assert!(e.to_string().contains("Routing loop"), "{e}");
    }

    #[test]
    fn fan_out_is_bounded() {
        let members = |list: &str, n: usize| {
            let targets: Vec<String> = (0..n).map(|i| format!("{list}{i}@x.test")).collect();
            format!("{list}@x.test: {}\n", targets.join(", "))
        };
        // One key beyond the bound: the table itself is refused.
        let e = AliasTable::from_text(&members("big", MAX_RECIPIENTS + 1)).unwrap_err();
        assert!(e.to_string().contains("Too many recipients"), "{e}");
        // Two lists within it, together beyond: the message is refused.
        let text = members("a", 600) + &members("b", 600);
        let f = Forward::new().add_aliases(AliasTable::from_text(&text).unwrap());
        assert_eq!(f.expand(&strings(&["a@x.test"])).unwrap().len(), 600);
        let e = f.expand(&strings(&["a@x.test", "b@x.test"])).unwrap_err();
        assert_eq!(e.reply().code(), 550, "{e}");
        assert_eq!(e.reply().enhanced().unwrap().to_string(), "5.5.3");
    }

    #[test]
    fn bad_alias_text_says_where() {
        let cases = [
            ("a@x.test b@x.test\n", "line 1: expected"),
            ("# c\n\n<a@x.test>: b@x.test\n", "line 3: invalid alias"),
            (
                "a@x.test: b@x.test\nA@X.test: c@x.test\n",
                "line 2: \"a@x.test\" is listed twice",
            ),
            ("a@x.test:\n", "has no targets"),
            ("  b@x.test\n", "line 1: a continuation line"),
            ("a@x.test: b c@x.test\n", "line 1: invalid target"),
        ];
        for (text, want) in cases {
            let e = AliasTable::from_text(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn reload_swaps_a_good_file_and_keeps_the_old_table_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        std::fs::write(&path, "a@x.test: b@x.test\n").unwrap();
        let table = AliasTable::load(&path).unwrap();
        let f = Forward::new().add_aliases(table.clone());
        assert_eq!(f.expand(&strings(&["a@x.test"])).unwrap(), ["b@x.test"]);

        std::fs::write(&path, "a@x.test: c@x.test, d@x.test\n").unwrap();
        assert_eq!(table.reload().unwrap(), 1);
        assert_eq!(
            f.expand(&strings(&["a@x.test"])).unwrap(),
            ["c@x.test", "d@x.test"]
        );

        std::fs::write(&path, "a@x.test: a2@x.test\na2@x.test: a@x.test\n").unwrap();
        assert!(table.reload().is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(
            table
                .reload()
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
        assert_eq!(
            f.expand(&strings(&["a@x.test"])).unwrap(),
            ["c@x.test", "d@x.test"]
        );
    }

    #[test]
    fn forward_reload_refuses_an_edit_that_loops_through_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        std::fs::write(&path, "a@x.test: b@old.test\n").unwrap();
        let f = forward("").add_aliases(AliasTable::load(&path).unwrap());
        assert_eq!(f.expand(&strings(&["a@x.test"])).unwrap(), ["b@new.test"]);
        // No loop in the file alone, one through the regex rule.
        std::fs::write(&path, "a@x.test: b@old.test\nb@new.test: a@x.test\n").unwrap();
        let e = f.reload().unwrap_err();
        assert!(e.to_string().contains("Routing loop"), "{e}");
        assert_eq!(f.expand(&strings(&["a@x.test"])).unwrap(), ["b@new.test"]);
        std::fs::write(&path, "a@x.test: c@x.test, d@x.test\n").unwrap();
        assert_eq!(f.reload().unwrap(), 1);
        assert_eq!(
            f.expand(&strings(&["a@x.test"])).unwrap(),
            ["c@x.test", "d@x.test"]
        );
    }

    #[tokio::test]
    async fn the_policy_rewrites_recipients_and_never_the_sender() {
        let f = forward("team@example.test: a@old.test, b@example.test\n");
        let env = Envelope::new(
            "s@old.test",
            strings(&["team@example.test", "b@example.test"]),
            b"\r\n".to_vec(),
        );
        let parts = f.apply(env).await.unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].sender, "s@old.test");
        assert_eq!(parts[0].recipients, ["a@new.test", "b@example.test"]);

        let looping = forward("a@new.test: a@old.test\n");
        let env = Envelope::new("s@x.test", strings(&["a@old.test"]), b"\r\n".to_vec());
        let reply = looping.apply(env).await.unwrap_err();
        assert_eq!(reply.code(), 554);
        assert!(reply.text().contains("Routing loop detected"), "{reply:?}");
    }
}
