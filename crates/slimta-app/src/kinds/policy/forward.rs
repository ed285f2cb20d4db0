//! `type = "forward"`: recipient rewriting before the message is stored
//! (`slimta::policy::forward`, python-slimta's `Forward` plus alias files).
//!
//! ```toml
//! [policy.fwd]
//! type = "forward"
//! rules = [ { match = '^(.+)@old\.test$', replace = '$1@new.test' },
//!           { file = "/etc/slimta/aliases" },
//!           { match = '^postmaster@.*$', replace = 'admin@example.test' } ]
//! ```
//!
//! Decisions:
//! - `rules` is one ordered list so that "first match wins" reads top to
//!   bottom; an entry is either `{ match, replace }` or `{ file }`.
//! - `match` is compiled case-insensitively (domains are, and every MTA
//!   folds local parts; `(?-i)` turns it off). A `replace` naming a group
//!   the pattern does not have (`$2` of a one-group pattern, a misspelt
//!   `${name}`) is an error, not an address with a silent hole in it.
//! - Alias files are read when the configuration is checked (a missing or
//!   malformed file, or a loop in it, is an error then) and again on every
//!   SIGHUP (`Forward::reload`: all of a policy's files at once, checked
//!   with its regex rules), where a file that fails, or an edit that makes
//!   a loop, keeps every old table.
//! - The whole rule list is checked for loops and chains too long from
//!   every alias key (`a@x -> b@old.test -> b@new.test -> a@x` through a
//!   regex rule is found too); loops only regexes make among themselves
//!   cannot be listed ahead and refuse the message at run time
//!   (`554 5.4.6`).
//! - A queue policy only: an attempt must not change its recipients.

use std::fmt;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use slimta::policy::DynQueuePolicy;
use slimta::policy::forward::{AliasTable, Forward};
use toml::Value;

use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{Errors, Section, expected, non_empty_string, string};

enum Rule {
    Map { pattern: Regex, replace: String },
    File(AliasTable),
}

/// The file's contents are left out: SIGHUP compares sections by their
/// `Debug`, and an edited alias file is a reload, not a new configuration.
impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Map { pattern, replace } => f
                .debug_struct("Map")
                .field("match", &pattern.as_str())
                .field("replace", replace)
                .finish(),
            Self::File(table) => f.debug_struct("File").field("path", &table.path()).finish(),
        }
    }
}

#[derive(Debug)]
struct Settings {
    rules: Vec<Rule>,
    /// `policy.NAME.rules`, for the reload log.
    key: String,
}

impl Settings {
    fn forward(&self) -> Forward {
        self.rules
            .iter()
            .fold(Forward::new(), |forward, rule| match rule {
                Rule::Map { pattern, replace } => forward.add_mapping(pattern.clone(), replace),
                Rule::File(table) => forward.add_aliases(table.clone()),
            })
    }
}

impl PolicySettings for Settings {
    fn queue_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        let forward = self.forward();
        if self.rules.iter().any(|r| matches!(r, Rule::File(_))) {
            // One reload for the whole rule list: the new files are checked
            // for loops together with the regex rules before any is used.
            let reloading = forward.clone();
            context.files.register(self.key.clone(), move || {
                reloading
                    .reload()
                    .map(|n| format!("{n} aliases"))
                    .map_err(|e| e.to_string())
            });
        }
        Some(Arc::new(forward))
    }
}

/// The group names and numbers `replacement` refers to (`$1`, `$name`,
/// `${name}`; `$$` is a literal `$`), as the regex crate reads them.
fn groups_named(replacement: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                names.push(&braced[..end]);
                rest = &braced[end + 1..];
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                names.push(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    names
}

fn map_rule(table: &toml::Table) -> Result<Rule, String> {
    let get = |key: &str| {
        table
            .get(key)
            .ok_or_else(|| format!("missing {key}"))
            .and_then(string)
    };
    let pattern = table
        .get("match")
        .ok_or_else(|| "missing match".to_owned())
        .and_then(non_empty_string)?;
    let replace = get("replace")?;
    let regex = RegexBuilder::new(&pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("invalid regex in match:\n{e}"))?;
    for name in groups_named(&replace) {
        let known = match name.parse::<usize>() {
            Ok(n) => n < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Err(format!(
                "replace names group \"{name}\", which match does not have (write $$ for a literal $)"
            ));
        }
    }
    Ok(Rule::Map {
        pattern: regex,
        replace,
    })
}

fn rule(value: &Value) -> Result<Rule, String> {
    let Value::Table(table) = value else {
        return Err(expected(
            "a table like { match = '...', replace = '...' } or { file = \"...\" }",
            value,
        ));
    };
    let keys: Vec<&str> = table.keys().map(String::as_str).collect();
    match keys.as_slice() {
        ["file"] => {
            let path = non_empty_string(&table["file"])?;
            AliasTable::load(&path)
                .map(Rule::File)
                .map_err(|e| e.to_string())
        }
        ["match", "replace"] | ["replace", "match"] => map_rule(table),
        _ => Err(format!(
            "expected the keys match and replace, or file alone (found: {})",
            keys.join(", ")
        )),
    }
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Arc<dyn PolicySettings>> {
    let path = s.key_path("rules");
    let value = s.required(errors, "rules", |v| match v {
        Value::Array(items) if items.is_empty() => Err("must list at least one rule".to_owned()),
        Value::Array(items) => Ok(items.clone()),
        other => Err(expected("an array of rules", other)),
    })?;
    let before = errors.0.len();
    let mut rules = Vec::new();
    for (i, item) in value.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match rule(item) {
            Ok(rule) => rules.push(rule),
            Err(message) => errors.push(at, message),
        }
    }
    if errors.0.len() > before {
        return None;
    }
    let settings = Settings {
        rules,
        key: path.clone(),
    };
    if let Err(loops) = settings.forward().check() {
        for e in loops {
            errors.push(path.clone(), e.to_string());
        }
        return None;
    }
    Some(Arc::new(settings))
}

pub(super) const FORWARD: PolicyKind = PolicyKind {
    name: "forward",
    stages: &[Stage::Queue],
    bare: false,
    read: Some(read),
};

#[cfg(test)]
mod tests {
    use slimta::Envelope;

    use super::*;
    use crate::config::{Config, DnsConfig, parse};
    use crate::file_reloads::FileReloads;

    const BASE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
                        [queue.main]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"fwd\"]\n\
                        [relay.out]\ntype = \"blackhole\"\n[policy.fwd]\ntype = \"forward\"\n";

    fn config(rules: &str) -> Result<Config, Vec<String>> {
        parse(&format!("{BASE}rules = {rules}\n"))
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[tokio::test]
    async fn rules_and_a_file_build_a_policy_whose_file_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let aliases = dir.path().join("aliases");
        std::fs::write(&aliases, "team@example.test: a@old.test, b@example.test\n").unwrap();
        let config = config(&format!(
            "[ {{ match = '^(?P<user>.+)@old\\.test$', replace = '${{user}}@new.test' }},\n\
             {{ file = \"{}\" }} ]",
            aliases.display()
        ))
        .unwrap();
        let files = FileReloads::default();
        let context = BuildContext {
            hostname: "mx.test",
            dns: &DnsConfig::default(),
            files: &files,
        };
        let policy = config.queues["main"].policies[0].queue_policy(&context);
        let run = |recipients: &[&str]| {
            let env = Envelope::new(
                "s@x.test",
                recipients.iter().map(|r| (*r).to_owned()).collect(),
                b"\r\n".to_vec(),
            );
            policy.apply_boxed(env)
        };
        let parts = run(&["team@example.test", "C@OLD.test"]).await.unwrap();
        assert_eq!(
            parts[0].recipients,
            ["a@new.test", "b@example.test", "C@new.test"]
        );

        std::fs::write(&aliases, "team@example.test: d@example.test\n").unwrap();
        assert_eq!(files.reload_all(), 0);
        let parts = run(&["team@example.test"]).await.unwrap();
        assert_eq!(parts[0].recipients, ["d@example.test"]);
        // A broken edit keeps the table; so does one that loops through
        // the regex rule.
        std::fs::write(&aliases, "team@example.test\n").unwrap();
        assert_eq!(files.reload_all(), 1);
        std::fs::write(
            &aliases,
            "team@example.test: x@old.test\nx@new.test: team@example.test\n",
        )
        .unwrap();
        assert_eq!(files.reload_all(), 1);
        let parts = run(&["team@example.test"]).await.unwrap();
        assert_eq!(parts[0].recipients, ["d@example.test"]);
    }

    #[test]
    fn bad_rules_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let looping = dir.path().join("looping");
        std::fs::write(&looping, "a@x.test: b@old.test\nb@new.test: a@x.test\n").unwrap();
        let missing = dir.path().join("missing");
        let cases: Vec<(String, Vec<String>)> = vec![
            ("[]".into(), vec!["policy.fwd.rules: must list at least one rule".into()]),
            (
                "[ { match = '(unclosed', replace = 'x' } ]".into(),
                vec!["policy.fwd.rules[0]: invalid regex in match:\nregex parse error:\n    (unclosed\n    ^\nerror: unclosed group".into()],
            ),
            (
                "[ { match = '^(.+)@old$', replace = '$2@new' }, { match = 'x' } ]".into(),
                vec![
                    "policy.fwd.rules[0]: replace names group \"2\", which match does not have (write $$ for a literal $)".into(),
                    "policy.fwd.rules[1]: expected the keys match and replace, or file alone (found: match)".into(),
                ],
            ),
            (
                format!("[ {{ file = \"{}\" }}, 7 ]", missing.display()),
                vec![
                    format!("policy.fwd.rules[0]: {}: cannot read: No such file or directory (os error 2)", missing.display()),
                    "policy.fwd.rules[1]: expected a table like { match = '...', replace = '...' } or { file = \"...\" }, found integer".into(),
                ],
            ),
            (
                format!(
                    "[ {{ match = '^(.+)@old\\.test$', replace = '$1@new.test' }}, {{ file = \"{}\" }} ]",
                    looping.display()
                ),
                vec![
                    "policy.fwd.rules: Routing loop detected: a@x.test -> b@old.test -> b@new.test -> a@x.test".into(),
                    "policy.fwd.rules: Routing loop detected: b@new.test -> a@x.test -> b@old.test -> b@new.test".into(),
                ],
            ),
        ];
        for (rules, want) in cases {
            assert_eq!(config(&rules).unwrap_err(), want, "{rules}");
        }
    }

    #[test]
    fn replacement_groups_are_read_as_the_regex_crate_reads_them() {
        assert_eq!(groups_named("$1@x"), ["1"]);
        assert_eq!(groups_named("${1}a $user$$ $"), ["1", "user"]);
        assert!(groups_named("a$$b").is_empty());
    }
}
