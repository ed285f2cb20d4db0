//! Sender and recipient rules at the SMTP stage that has the address: the
//! slimta app's `only_`/`regex_`/`lookup_` rules and Postfix's
//! `check_recipient_access` / `check_sender_access` allow lists.
//!
//! [`AddressRules`] says whether an address is listed: by an exact address,
//! a regex, or a line of a file that can be re-read while the edge runs.
//! [`AddressCheck`] is the [`Validators`] link that judges the recipient at
//! RCPT ([`AddressCheck::recipients`]) or the sender at MAIL
//! ([`AddressCheck::senders`]) with it, and refuses an unlisted one with a
//! [`ReplyTemplate`] whose `{address}` is the address refused.
//!
//! Why at RCPT/MAIL and not after DATA: the client is told while it is
//! still connected, for that address alone, and nothing is accepted that
//! would later bounce (backscatter).
//!
//! Decisions:
//! - Exact addresses and file lines match case-insensitively (as Postfix's
//!   lookups and every MTA's local-part folding do); regexes match as
//!   compiled (the slimta app compiles them case-insensitively, like
//!   Postfix's regexp tables).
//! - An authenticated client's recipients are not judged: submission
//!   relays to any address. Its sender is judged like anyone's: the rule
//!   says which senders this edge takes.
//! - `<postmaster>` (without a domain, RFC 5321 4.5.1) is always accepted
//!   as a recipient.
//! - The null sender `<>` is always accepted as a sender: bounces and
//!   delivery reports must get through (RFC 5321 4.5.5), and a sender allow
//!   list that refused them would turn every report into a lost one.
//! - A file is one address per line; blank lines and lines starting with
//!   `#` are ignored. [`AddressFile::reload`] reads the whole file before
//!   swapping it in, so a file that cannot be read keeps the old list.
//! - A reply that is already a refusal (from an earlier link) is left
//!   alone.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use regex::Regex;

use crate::edge::validators::{SessionInfo, Validators};
use crate::reply::Reply;
use crate::reply_template::ReplyTemplate;
use crate::smtp::{MailParams, RcptParams};

/// The placeholders an [`AddressCheck`] reply may use.
pub const PLACEHOLDERS: &[&str] = &["address"];

/// Listed addresses: exact, by regex, or from files.
#[derive(Clone, Debug, Default)]
pub struct AddressRules {
    exact: HashSet<String>,
    regexes: Vec<Regex>,
    files: Vec<AddressFile>,
}

impl AddressRules {
    /// No address listed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `address` (compared case-insensitively).
    #[must_use]
    pub fn allow(mut self, address: &str) -> Self {
        self.exact.insert(address.to_lowercase());
        self
    }

    /// Lists every address `regex` matches.
    #[must_use]
    pub fn allow_regex(mut self, regex: Regex) -> Self {
        self.regexes.push(regex);
        self
    }

    /// Lists the addresses of `file`, as they are after its last reload.
    #[must_use]
    pub fn allow_file(mut self, file: AddressFile) -> Self {
        self.files.push(file);
        self
    }

    /// Whether `address` is listed.
    pub fn matches(&self, address: &str) -> bool {
        let lower = address.to_lowercase();
        self.exact.contains(&lower)
            || self.regexes.iter().any(|r| r.is_match(address))
            || self.files.iter().any(|f| f.contains(&lower))
    }
}

/// Addresses read from a file, re-readable while in use; clones share the
/// list.
#[derive(Clone)]
pub struct AddressFile {
    path: PathBuf,
    addresses: Arc<RwLock<Arc<HashSet<String>>>>,
}

impl fmt::Debug for AddressFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why an address file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressFileError(String);

impl fmt::Display for AddressFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressFileError {}

impl AddressFile {
    /// The addresses in the file at `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or a line holds more than one word or an
    /// address in `<>` (the message names the file and the line).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AddressFileError> {
        let path = path.as_ref().to_path_buf();
        let addresses = read(&path)?;
        Ok(Self {
            path,
            addresses: Arc::new(RwLock::new(Arc::new(addresses))),
        })
    }

    /// Reads the file again and swaps the new list in; on any error the
    /// old list stays. Returns the number of addresses.
    ///
    /// # Errors
    ///
    /// As [`AddressFile::load`].
    pub fn reload(&self) -> Result<usize, AddressFileError> {
        let addresses = read(&self.path)?;
        let n = addresses.len();
        *self
            .addresses
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(addresses);
        Ok(n)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of addresses listed.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether the file listed no address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<HashSet<String>> {
        self.addresses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn contains(&self, lower: &str) -> bool {
        self.snapshot().contains(lower)
    }
}

fn read(path: &Path) -> Result<HashSet<String>, AddressFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AddressFileError(format!("{}: cannot read: {e}", path.display())))?;
    parse(&text).map_err(|e| AddressFileError(format!("{}: {e}", path.display())))
}

fn parse(text: &str) -> Result<HashSet<String>, String> {
    let mut addresses = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains(char::is_whitespace) || line.contains(['<', '>']) {
            return Err(format!(
                "line {}: expected one address without <> (found \"{line}\")",
                i + 1
            ));
        }
        addresses.insert(line.to_lowercase());
    }
    Ok(addresses)
}

/// Which address an [`AddressCheck`] judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    Recipients,
    Senders,
}

/// The [`Validators`] link that refuses unlisted recipients or senders;
/// see the module docs.
#[derive(Clone, Debug)]
pub struct AddressCheck {
    rules: AddressRules,
    judged: Judged,
    reply: ReplyTemplate,
}

impl AddressCheck {
    /// Refuses, at RCPT, recipients that `rules` does not list, with
    /// `550 5.1.1 <{address}>: Recipient address rejected` unless
    /// [`AddressCheck::reply`] says otherwise.
    pub fn recipients(rules: AddressRules) -> Self {
        Self {
            rules,
            judged: Judged::Recipients,
            reply: default_reply("5.1.1 <{address}>: Recipient address rejected"),
        }
    }

    /// Refuses, at MAIL, senders that `rules` does not list, with `550
    /// 5.7.1 <{address}>: Sender address rejected` unless
    /// [`AddressCheck::reply`] says otherwise.
    pub fn senders(rules: AddressRules) -> Self {
        Self {
            rules,
            judged: Judged::Senders,
            reply: default_reply("5.7.1 <{address}>: Sender address rejected"),
        }
    }

    /// The refusal; `{address}` is the address refused (see
    /// [`PLACEHOLDERS`]).
    #[must_use]
    pub fn reply(mut self, reply: ReplyTemplate) -> Self {
        self.reply = reply;
        self
    }

    fn refuse(&self, reply: &mut Reply, address: &str) {
        *reply = self
            .reply
            .render(|name| (name == "address").then(|| address.to_owned()));
    }
}

fn default_reply(message: &str) -> ReplyTemplate {
    ReplyTemplate::new(550, message).unwrap_or_else(|e| unreachable!("{message}: {e}"))
}

impl Validators for AddressCheck {
    async fn mail(&self, reply: &mut Reply, _: &SessionInfo, sender: &str, _: &MailParams) {
        if self.judged != Judged::Senders || !reply.is_positive() || sender.is_empty() {
            return;
        }
        if !self.rules.matches(sender) {
            self.refuse(reply, sender);
        }
    }

    async fn rcpt(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        recipient: &str,
        _: &RcptParams,
    ) {
        if self.judged != Judged::Recipients
            || !reply.is_positive()
            || session.authenticated()
            || recipient.eq_ignore_ascii_case("postmaster")
        {
            return;
        }
        if !self.rules.matches(recipient) {
            self.refuse(reply, recipient);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ClientInfo;

    fn ok() -> Reply {
        Reply::new(250, "2.1.5", "Ok")
    }

    fn rules(file: &AddressFile) -> AddressRules {
        AddressRules::new()
            .allow("A@example.test")
            .allow_regex(Regex::new(r"^[a-z.]+@lists\.example\.test$").unwrap())
            .allow_file(file.clone())
    }

    fn file(text: &str) -> (tempfile::TempDir, AddressFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addresses");
        std::fs::write(&path, text).unwrap();
        let file = AddressFile::load(&path).unwrap();
        (dir, file)
    }

    #[test]
    fn table_of_matches() {
        let (_dir, f) = file("# users\n\nFile@Example.test\n  other@example.test  \n");
        let rules = rules(&f);
        let cases = [
            ("a@example.test", true),
            ("A@EXAMPLE.TEST", true),
            ("dev.team@lists.example.test", true),
            ("Dev@lists.example.test", false),
            ("file@example.test", true),
            ("other@example.test", true),
            ("b@example.test", false),
            ("a@example.test.evil", false),
        ];
        for (address, want) in cases {
            assert_eq!(rules.matches(address), want, "{address}");
        }
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn bad_files_say_where_and_a_failed_reload_keeps_the_list() {
        let (dir, f) = file("a@x.test\n");
        let path = dir.path().join("addresses");
        std::fs::write(&path, "a@x.test\nb@x.test c@x.test\n").unwrap();
        let e = f.reload().unwrap_err().to_string();
        assert!(e.contains("line 2: expected one address"), "{e}");
        std::fs::write(&path, "<a@x.test>\n").unwrap();
        assert!(f.reload().is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(f.reload().unwrap_err().to_string().contains("cannot read"));
        assert!(AddressFile::load(&path).is_err());
        assert!(f.contains("a@x.test"));
        std::fs::write(&path, "b@x.test\n").unwrap();
        assert_eq!(f.reload().unwrap(), 1);
        assert!(!f.contains("a@x.test") && f.contains("b@x.test"));
    }

    async fn rcpt(check: &AddressCheck, session: &SessionInfo, address: &str) -> Reply {
        let mut reply = ok();
        check
            .rcpt(&mut reply, session, address, &RcptParams::default())
            .await;
        reply
    }

    async fn mail(check: &AddressCheck, address: &str) -> Reply {
        let mut reply = ok();
        check
            .mail(
                &mut reply,
                &SessionInfo::default(),
                address,
                &MailParams::default(),
            )
            .await;
        reply
    }

    #[tokio::test]
    async fn recipients_are_judged_at_rcpt_with_the_configured_reply() {
        let (_dir, f) = file("");
        let check = AddressCheck::recipients(rules(&f)).reply(
            ReplyTemplate::new(550, "5.1.1 <{address}>: Recipient address rejected here").unwrap(),
        );
        let anyone = SessionInfo::default();
        let refused = rcpt(&check, &anyone, "b@example.test").await;
        assert_eq!(refused.code(), 550);
        assert_eq!(refused.enhanced().unwrap().to_string(), "5.1.1");
        assert_eq!(
            refused.text(),
            "<b@example.test>: Recipient address rejected here"
        );
        assert!(rcpt(&check, &anyone, "a@example.test").await.is_positive());
        assert!(rcpt(&check, &anyone, "Postmaster").await.is_positive());
        let authenticated = SessionInfo {
            client: ClientInfo {
                auth: Some("alice".into()),
                ..ClientInfo::default()
            },
            ..SessionInfo::default()
        };
        assert!(
            rcpt(&check, &authenticated, "b@example.test")
                .await
                .is_positive()
        );
        // The recipient check leaves MAIL alone.
        assert!(mail(&check, "b@example.test").await.is_positive());
        // An earlier refusal stays as it was.
        let mut reply = Reply::new(554, "5.7.1", "Relay access denied");
        check
            .rcpt(
                &mut reply,
                &anyone,
                "b@example.test",
                &RcptParams::default(),
            )
            .await;
        assert_eq!(reply.text(), "Relay access denied");
    }

    #[tokio::test]
    async fn senders_are_judged_at_mail_and_the_null_sender_passes() {
        let (_dir, f) = file("");
        let check = AddressCheck::senders(rules(&f));
        let refused = mail(&check, "b@example.test").await;
        assert_eq!(refused.code(), 550);
        assert_eq!(refused.enhanced().unwrap().to_string(), "5.7.1");
        assert_eq!(refused.text(), "<b@example.test>: Sender address rejected");
        assert!(mail(&check, "a@example.test").await.is_positive());
        assert!(mail(&check, "").await.is_positive());
        assert!(
            rcpt(&check, &SessionInfo::default(), "b@example.test")
                .await
                .is_positive()
        );
    }
}
