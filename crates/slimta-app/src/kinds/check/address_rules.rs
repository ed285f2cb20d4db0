//! `type = "recipients"` and `type = "senders"`: allow lists judged at RCPT
//! or at MAIL (`slimta::edge::address_rules`), the slimta app's `only_`,
//! `regex_` and `lookup_` rules in one section.
//!
//! ```toml
//! [check.rcpt]
//! type = "recipients"                # or "senders"
//! allow = ["a@example.test"]         # exact addresses, any case
//! regex = ['^[a-z.]+@example\.test$']
//! file = "/etc/slimta/recipients"    # one address per line, re-read on SIGHUP
//! reply = { code = 550, message = "5.1.1 <{address}>: Recipient address rejected" }
//! ```
//!
//! Decisions:
//! - At least one of `allow`, `regex`, `file` is required: a check with no
//!   list would refuse every address, which is never what was meant.
//! - Regexes are compiled when the file is checked (a bad one is a
//!   `--check-config` error showing where it broke), case-insensitively as
//!   Postfix's regexp tables are; `(?-i)` in a pattern turns that off.
//! - The file is read when the configuration is checked (a missing or
//!   malformed file is an error then), and again on every SIGHUP; a file
//!   that cannot be read on a reload keeps the old list (logged).
//! - `reply` may use `{address}` only; without it the library's reply is
//!   used (`550 5.1.1 ... Recipient address rejected`, `550 5.7.1 ...
//!   Sender address rejected`).
//! - What is never judged (authenticated clients' recipients,
//!   `<postmaster>`, the null sender) is the library's rule; see its docs.

use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use slimta::edge::DynValidators;
use slimta::edge::address_rules::{AddressCheck, AddressFile, AddressRules, PLACEHOLDERS};
use slimta::reply_template::ReplyTemplate;

use super::{CheckContext, CheckKind, CheckSettings};
use crate::config::fields::{Errors, Section, email_address, non_empty_string, reply_template};

/// Which address the check judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    Recipients,
    Senders,
}

/// What one section read. The file's contents are not part of `Debug`
/// (SIGHUP compares sections by it, and an edited file is a reload, not a
/// change of configuration).
#[derive(Debug)]
struct Settings {
    judged: Judged,
    allow: Vec<String>,
    regexes: Vec<Regex>,
    /// The file and its key path (for the reload log).
    file: Option<(AddressFile, String)>,
    reply: Option<ReplyTemplate>,
}

impl CheckSettings for Settings {
    fn validators(&self, context: &CheckContext<'_>) -> Result<Arc<dyn DynValidators>, String> {
        let mut rules = AddressRules::new();
        for address in &self.allow {
            rules = rules.allow(address);
        }
        for regex in &self.regexes {
            rules = rules.allow_regex(regex.clone());
        }
        if let Some((file, key)) = &self.file {
            rules = rules.allow_file(file.clone());
            let file = file.clone();
            context.files.register(key.clone(), move || {
                file.reload()
                    .map(|n| format!("{n} addresses"))
                    .map_err(|e| e.to_string())
            });
        }
        let mut check = match self.judged {
            Judged::Recipients => AddressCheck::recipients(rules),
            Judged::Senders => AddressCheck::senders(rules),
        };
        if let Some(reply) = &self.reply {
            check = check.reply(reply.clone());
        }
        Ok(Arc::new(check))
    }
}

/// A regex as an address rule compiles it: case-insensitive.
fn address_regex(value: &toml::Value) -> Result<Regex, String> {
    let pattern = non_empty_string(value)?;
    RegexBuilder::new(&pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("invalid regex:\n{e}"))
}

fn read(
    s: &mut Section<'_>,
    errors: &mut Errors,
    judged: Judged,
) -> Option<Arc<dyn CheckSettings>> {
    let before = errors.0.len();
    let allow = s.list(errors, "allow", email_address);
    let regexes = s.list(errors, "regex", address_regex);
    let file_key = s.key_path("file");
    let file = s.opt(errors, "file", |v| {
        let path = non_empty_string(v)?;
        AddressFile::load(&path).map_err(|e| e.to_string())
    });
    let reply = s.opt(errors, "reply", reply_template(PLACEHOLDERS));
    if !["allow", "regex", "file"]
        .iter()
        .any(|key| s.table.contains_key(*key))
    {
        errors.push(
            s.key_path("allow"),
            "missing: list addresses in at least one of allow, regex, file",
        );
    }
    if errors.0.len() > before {
        return None;
    }
    Some(Arc::new(Settings {
        judged,
        allow: allow.unwrap_or_default(),
        regexes: regexes.unwrap_or_default(),
        file: file.map(|f| (f, file_key)),
        reply,
    }))
}

pub(super) const RECIPIENTS: CheckKind = CheckKind {
    name: "recipients",
    read: Some(|s: &mut Section<'_>, errors: &mut Errors| read(s, errors, Judged::Recipients)),
};

pub(super) const SENDERS: CheckKind = CheckKind {
    name: "senders",
    read: Some(|s: &mut Section<'_>, errors: &mut Errors| read(s, errors, Judged::Senders)),
};

#[cfg(test)]
mod tests {
    use slimta::Reply;
    use slimta::edge::SessionInfo;
    use slimta::smtp::{MailParams, RcptParams};

    use super::*;
    use crate::config::{Config, DnsConfig, parse};
    use crate::file_reloads::FileReloads;

    const BASE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
                        checks = [\"rules\"]\n[queue.main]\ntype = \"memory\"\nrelay = \"out\"\n\
                        [relay.out]\ntype = \"blackhole\"\n[check.rules]\n";

    fn config(keys: &str) -> Result<Config, Vec<String>> {
        parse(&format!("{BASE}{keys}\n"))
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn check(config: &Config, files: &FileReloads) -> Arc<dyn DynValidators> {
        let context = CheckContext {
            hostname: "mx.test",
            dns: &DnsConfig::default(),
            files,
        };
        config.edges["in"].checks[0].validators(&context).unwrap()
    }

    async fn rcpt(check: &Arc<dyn DynValidators>, address: &str) -> Reply {
        let mut reply = Reply::new(250, "2.1.5", "Ok");
        check
            .rcpt_boxed(
                &mut reply,
                &SessionInfo::default(),
                address,
                &RcptParams::default(),
            )
            .await;
        reply
    }

    #[tokio::test]
    async fn recipients_from_every_source_and_a_reloaded_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recipients");
        std::fs::write(&file, "# users\nfile@example.test\n").unwrap();
        let config = config(&format!(
            "type = \"recipients\"\nallow = [\"a@example.test\"]\n\
             regex = ['^[a-z.]+@lists\\.example\\.test$']\nfile = \"{}\"\n\
             reply = {{ code = 550, message = \"5.1.1 <{{address}}>: nobody here\" }}",
            file.display()
        ))
        .unwrap();
        let files = FileReloads::default();
        let check = check(&config, &files);
        for ok in [
            "A@example.test",
            "Dev.Team@LISTS.example.test",
            "file@example.test",
        ] {
            assert!(rcpt(&check, ok).await.is_positive(), "{ok}");
        }
        let refused = rcpt(&check, "new@example.test").await;
        assert_eq!(
            (refused.code(), refused.text()),
            (550, "<new@example.test>: nobody here")
        );
        std::fs::write(&file, "new@example.test\n").unwrap();
        assert_eq!(files.reload_all(), 0);
        assert!(rcpt(&check, "new@example.test").await.is_positive());
        assert!(!rcpt(&check, "file@example.test").await.is_positive());
    }

    #[tokio::test]
    async fn senders_are_judged_at_mail() {
        let config = config("type = \"senders\"\nallow = [\"a@example.test\"]").unwrap();
        let check = check(&config, &FileReloads::default());
        let mut reply = Reply::new(250, "2.1.0", "Ok");
        check
            .mail_boxed(
                &mut reply,
                &SessionInfo::default(),
                "b@example.test",
                &MailParams::default(),
            )
            .await;
        assert_eq!(reply.code(), 550);
        assert!(rcpt(&check, "b@example.test").await.is_positive());
    }

    #[test]
    fn bad_sections_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let cases: Vec<(String, Vec<String>)> = vec![
            (
                "type = \"recipients\"".into(),
                vec!["check.rules.allow: missing: list addresses in at least one of allow, regex, file".into()],
            ),
            (
                "type = \"senders\"\nregex = ['a(b']\nallow = [\"nobody\"]".into(),
                vec![
                    "check.rules.allow[0]: invalid address \"nobody\" (expected local@domain, without <>)".into(),
                    "check.rules.regex[0]: invalid regex:\nregex parse error:\n    a(b\n     ^\nerror: unclosed group".into(),
                ],
            ),
            (
                format!(
                    "type = \"recipients\"\nfile = \"{}\"\nreply = {{ code = 550, message = \"5.1.1 {{user}}\" }}",
                    missing.display()
                ),
                vec![
                    format!("check.rules.file: {}: cannot read: No such file or directory (os error 2)", missing.display()),
                    "check.rules.reply: unknown placeholder {user} (this reply can use: {address})".into(),
                ],
            ),
        ];
        for (keys, want) in cases {
            assert_eq!(config(&keys).unwrap_err(), want, "{keys}");
        }
    }
}
