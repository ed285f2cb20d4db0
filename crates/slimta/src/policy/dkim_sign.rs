//! [`DkimSign`]: adds a DKIM signature (RFC 6376; Ed25519 per RFC 8463) to
//! mail from the domains it holds keys for.
//!
//! It is both a [`QueuePolicy`] and a [`RelayPolicy`]. As a queue policy the
//! stored copy is the signed one and the signature is computed once; as a
//! relay policy every attempt is signed afresh (`t=` is the attempt's time)
//! and the stored copy stays unsigned. Either way it must run after every
//! policy that changes the header or body (`Received:` excepted, which is
//! not signed), or the change breaks the signature.
//!
//! Decisions:
//! - **Which key.** The domain of the first address in the message's first
//!   `From:` field picks the key: the domain itself, else its nearest parent
//!   with a key (`From: a@mail.example.test` is signed `d=example.test` when
//!   only `example.test` has one; DMARC's relaxed alignment accepts that).
//!   Mail from a domain without a key, or without a usable `From:`, passes
//!   unchanged: a relay signs what it is entitled to sign and nothing else.
//! - **Whose mail.** With [`DkimSign::only_authenticated`] (the app's
//!   default) only mail from a client that authenticated (SMTP AUTH) is
//!   signed: submitted mail, not inbound mail that happens to claim a local
//!   domain.
//! - **Which headers.** [`DEFAULT_HEADERS`] unless told otherwise; `From` is
//!   always signed and *oversigned* (listed once more than it occurs), so a
//!   second `From:` cannot be added without breaking the signature. Listed
//!   headers that are absent are also named in `h=` (mail-auth's behaviour,
//!   and the same protection against their later addition).
//! - **A failure never loses mail.** Keys are parsed and test-signed when
//!   loaded ([`DkimKey`]), so signing can fail at run time only if the
//!   crypto library does; then the message goes on unsigned and the error
//!   is logged at `error`. Refusing (a tempfail) would hold every message
//!   of the domain for a fault the sender cannot fix; unsigned mail is
//!   still delivered, or refused visibly by a strict DMARC receiver.
//!   The signing runs on tokio's blocking pool (milliseconds of CPU per
//!   RSA signature); should that task itself fail, the queue policy answers
//!   `451 4.3.0` (the client keeps the message) and the relay policy fails
//!   the attempt as transient (the stored copy is retried).
//! - Existing `DKIM-Signature:` fields are kept; ours goes on top.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization as MailAuthCanon, DkimSigner};

use crate::envelope::Envelope;
use crate::relay::RelayError;
use crate::reply::Reply;

use super::dkim_key::DkimKey;
use super::{QueuePolicy, RelayPolicy};

/// The headers signed by default: the ones a reader sees and a replayer
/// would like to change.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// A DKIM canonicalization algorithm (RFC 6376 3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canonicalization {
    /// `simple`: almost byte for byte.
    Simple,
    /// `relaxed`: tolerant of whitespace and header-name case changes.
    Relaxed,
}

impl Canonicalization {
    /// Parses `"relaxed/simple"` (header/body) or a single name, which
    /// means `NAME/simple` as RFC 6376's `c=` tag does.
    pub fn parse_pair(s: &str) -> Option<(Self, Self)> {
        let one = |s: &str| match s {
            "simple" => Some(Self::Simple),
            "relaxed" => Some(Self::Relaxed),
            _ => None,
        };
        match s.split_once('/') {
            Some((h, b)) => Some((one(h)?, one(b)?)),
            None => Some((one(s)?, Self::Simple)),
        }
    }

    fn mail_auth(self) -> MailAuthCanon {
        match self {
            Self::Simple => MailAuthCanon::Simple,
            Self::Relaxed => MailAuthCanon::Relaxed,
        }
    }
}

/// Whether `selector` can be a DKIM selector: dot-separated DNS labels of
/// letters, digits and `-` (RFC 6376 3.1), 63 characters at most here.
pub fn is_valid_selector(selector: &str) -> bool {
    selector.len() <= 63
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[derive(Clone, Debug)]
struct DomainKey {
    selector: String,
    key: DkimKey,
}

/// Signs mail from its domains; see the module docs.
#[derive(Clone)]
pub struct DkimSign {
    domains: Arc<BTreeMap<String, DomainKey>>,
    headers: Vec<String>,
    header_canon: Canonicalization,
    body_canon: Canonicalization,
    only_authenticated: bool,
}

impl fmt::Debug for DkimSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains: Vec<String> = self
            .domains
            .iter()
            .map(|(d, k)| format!("{}._domainkey.{d} {:?}", k.selector, k.key))
            .collect();
        f.debug_struct("DkimSign")
            .field("domains", &domains)
            .field("headers", &self.headers)
            .field("canonicalization", &(self.header_canon, self.body_canon))
            .field("only_authenticated", &self.only_authenticated)
            .finish()
    }
}

impl Default for DkimSign {
    fn default() -> Self {
        Self::new()
    }
}

impl DkimSign {
    /// A policy with no domain yet (it signs nothing until one is added),
    /// [`DEFAULT_HEADERS`], `relaxed/relaxed`, signing mail from any client.
    pub fn new() -> Self {
        Self {
            domains: Arc::new(BTreeMap::new()),
            headers: DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
            header_canon: Canonicalization::Relaxed,
            body_canon: Canonicalization::Relaxed,
            only_authenticated: false,
        }
    }

    /// Signs mail from `domain` (and its subdomains without a key of their
    /// own) as `d=domain; s=selector` with `key`.
    pub fn domain(mut self, domain: &str, selector: &str, key: DkimKey) -> Self {
        Arc::make_mut(&mut self.domains).insert(
            normalize_domain(domain),
            DomainKey {
                selector: selector.to_owned(),
                key,
            },
        );
        self
    }

    /// The header fields to sign, in any case; `From` is added when missing
    /// and is always oversigned.
    pub fn headers<I, S>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.headers = headers.into_iter().map(Into::into).collect();
        self
    }

    /// Header and body canonicalization.
    pub fn canonicalization(mut self, header: Canonicalization, body: Canonicalization) -> Self {
        self.header_canon = header;
        self.body_canon = body;
        self
    }

    /// `true`: sign only mail whose client authenticated.
    pub fn only_authenticated(mut self, only: bool) -> Self {
        self.only_authenticated = only;
        self
    }

    /// The `h=` list asked of mail-auth: the headers, `From` included, with
    /// one more `From` for the oversigning.
    fn signed_headers(&self) -> Vec<String> {
        let mut headers: Vec<String> = self
            .headers
            .iter()
            .filter(|h| !h.eq_ignore_ascii_case("from"))
            .cloned()
            .collect();
        // mail-auth names a listed header once per occurrence and a listed
        // header it did not find once more: the second `From` is that extra.
        headers.insert(0, "From".to_owned());
        headers.push("From".to_owned());
        headers
    }

    /// The `DKIM-Signature:` field (with its CRLF) for `envelope`, or `None`
    /// when it is not ours to sign.
    ///
    /// # Errors
    ///
    /// mail-auth's error text when the signature cannot be made.
    pub fn signature(&self, envelope: &Envelope) -> Result<Option<String>, String> {
        self.signature_of(&envelope.message, envelope.client.auth.is_some())
    }

    fn signature_of(&self, message: &[u8], authenticated: bool) -> Result<Option<String>, String> {
        if self.only_authenticated && !authenticated {
            tracing::debug!("dkim: not signing mail from an unauthenticated client");
            return Ok(None);
        }
        // As `Envelope::header_len`: a message opening with a blank line has
        // no header section (and no From: to find in its body).
        let header_end = if message.starts_with(b"\r\n") {
            0
        } else {
            memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4)
        };
        let Some(from) = from_domain(&message[..header_end]) else {
            tracing::debug!("dkim: no From: domain, not signing");
            return Ok(None);
        };
        let Some((domain, key)) = self.key_for(&from) else {
            tracing::debug!(from = %from, "dkim: no key for the From: domain, not signing");
            return Ok(None);
        };
        let signer = DkimSigner::from_key(key.key.signing_key())
            .domain(domain)
            .selector(&key.selector)
            .headers(self.signed_headers())
            .header_canonicalization(self.header_canon.mail_auth())
            .body_canonicalization(self.body_canon.mail_auth());
        let signature = signer.sign(message).map_err(|e| e.to_string())?;
        tracing::debug!(domain = %domain, selector = %key.selector, "dkim: signed");
        Ok(Some(signature.to_header()))
    }

    fn key_for<'a>(&'a self, from: &'a str) -> Option<(&'a str, &'a DomainKey)> {
        let mut domain = from;
        loop {
            if let Some(key) = self.domains.get(domain) {
                return Some((domain, key));
            }
            domain = domain.split_once('.')?.1;
        }
    }

    /// `message` with our signature on top, when it is ours to sign and
    /// signing works; unchanged otherwise (see the module docs).
    fn signed(&self, message: Vec<u8>, authenticated: bool) -> Vec<u8> {
        match self.signature_of(&message, authenticated) {
            Ok(Some(field)) => {
                let mut signed = Vec::with_capacity(field.len() + message.len());
                signed.extend_from_slice(field.as_bytes());
                signed.extend_from_slice(&message);
                signed
            }
            Ok(None) => message,
            Err(why) => {
                tracing::error!(error = %why, "dkim: signing failed, sending the message unsigned");
                message
            }
        }
    }

    /// [`DkimSign::signed`] on tokio's blocking pool: an RSA signature and
    /// the body hash of a large message take milliseconds of CPU, which must
    /// not stall the sessions sharing a runtime worker. `None` only if the
    /// signing task panicked, and with it the message it was given.
    async fn signed_off_runtime(&self, message: Vec<u8>, authenticated: bool) -> Option<Vec<u8>> {
        let policy = self.clone();
        match tokio::task::spawn_blocking(move || policy.signed(message, authenticated)).await {
            Ok(message) => Some(message),
            Err(e) => {
                tracing::error!(error = %e, "dkim: the signing task failed");
                None
            }
        }
    }
}

/// The queue policy runs before the message is stored: if the signing task
/// fails the client is told to try again (451), so the message stays with it.
impl QueuePolicy for DkimSign {
    async fn apply(&self, mut envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        let authenticated = envelope.client.auth.is_some();
        let message = std::mem::take(&mut envelope.message);
        envelope.message = self
            .signed_off_runtime(message, authenticated)
            .await
            .ok_or_else(|| {
                Reply::new(451, "4.3.0", "Message could not be signed, try again later")
            })?;
        Ok(vec![envelope])
    }
}

/// The relay policy works on the attempt's copy: if the signing task fails,
/// the attempt fails as transient and the stored message is retried later.
impl RelayPolicy for DkimSign {
    async fn apply(&self, envelope: &mut Envelope) -> Result<(), RelayError> {
        let authenticated = envelope.client.auth.is_some();
        let message = std::mem::take(&mut envelope.message);
        envelope.message = self
            .signed_off_runtime(message, authenticated)
            .await
            .ok_or_else(|| {
                RelayError::transient(Reply::new(451, "4.3.0", "DKIM signing failed"))
            })?;
        Ok(())
    }
}

fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The domain of the first address in the first `From:` field of the
/// header section `header`, lowercased.
fn from_domain(header: &[u8]) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = value.as_mut() {
            if line.starts_with(b" ") || line.starts_with(b"\t") {
                v.extend_from_slice(line);
                continue;
            }
            break;
        }
        if line.len() > 5 && line[..4].eq_ignore_ascii_case(b"from") {
            let rest = line[4..].trim_ascii_start();
            if let Some(v) = rest.strip_prefix(b":") {
                value = Some(v.to_vec());
            }
        }
    }
    let value = String::from_utf8_lossy(&value?).into_owned();
    let address = match value.find('<') {
        Some(open) => {
            let rest = &value[open + 1..];
            &rest[..rest.find('>')?]
        }
        None => value.split(',').next()?.split('(').next()?,
    };
    let domain = normalize_domain(address.trim().rsplit_once('@')?.1);
    let plausible = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b >= 0x80);
    plausible.then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_from_domain_is_found_in_the_usual_shapes() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"From: a@Example.TEST\r\n\r\n", Some("example.test")),
            (
                b"Subject: x\r\nfrom :  \"A, B\" <a@x.test>\r\n\r\n",
                Some("x.test"),
            ),
            (
                b"From: A\r\n <a@folded.test>\r\nTo: b@y\r\n",
                Some("folded.test"),
            ),
            (b"From: a@one.test, b@two.test\r\n", Some("one.test")),
            (b"From: a@c.test (Comment)\r\n", Some("c.test")),
            (b"From: undisclosed\r\n", None),
            (b"Fromage: a@x.test\r\n", None),
            (b"To: a@x.test\r\n", None),
            (b"From: <a@bad domain>\r\n", None),
        ];
        for (header, want) in cases {
            assert_eq!(
                from_domain(header).as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn canonicalization_pairs_parse() {
        use Canonicalization::{Relaxed, Simple};
        assert_eq!(
            Canonicalization::parse_pair("relaxed/simple"),
            Some((Relaxed, Simple))
        );
        assert_eq!(
            Canonicalization::parse_pair("relaxed"),
            Some((Relaxed, Simple))
        );
        assert_eq!(Canonicalization::parse_pair("simple/loose"), None);
        assert_eq!(Canonicalization::parse_pair(""), None);
    }

    #[test]
    fn parents_sign_for_subdomains_and_strangers_pass() {
        let (key, _) = DkimKey::generate_ed25519().unwrap();
        let policy = DkimSign::new().domain("Example.Test.", "s1", key);
        assert_eq!(
            policy.key_for("mail.example.test").map(|(d, _)| d),
            Some("example.test")
        );
        assert!(policy.key_for("example.org").is_none());
        assert!(policy.key_for("notexample.test").is_none());
        assert_eq!(
            policy.signature_of(b"\r\nFrom: a@example.test\r\n\r\n", true),
            Ok(None),
            "a From: line in the body is not the From: field"
        );

        let mut env = Envelope::new(
            "a@example.org",
            vec!["b@y.test".into()],
            b"From: a@example.org\r\n\r\nhi\r\n".to_vec(),
        );
        let before = env.message.clone();
        env.message = policy.signed(std::mem::take(&mut env.message), false);
        assert_eq!(env.message, before);

        env.message = b"From: a@mail.example.test\r\nSubject: s\r\n\r\nhi\r\n".to_vec();
        env.message = policy.signed(std::mem::take(&mut env.message), false);
        let text = String::from_utf8(env.message).unwrap();
        assert!(
            text.starts_with(
                "DKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=example.test; c=relaxed/relaxed;"
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\nFrom: a@mail.example.test\r\nSubject: s\r\n\r\nhi\r\n"));
    }

    #[test]
    fn only_authenticated_skips_other_clients() {
        let (key, _) = DkimKey::generate_ed25519().unwrap();
        let policy = DkimSign::new()
            .domain("example.test", "s1", key)
            .only_authenticated(true);
        let mut env = Envelope::new(
            "a@example.test",
            vec!["b@y.test".into()],
            b"From: a@example.test\r\n\r\nhi\r\n".to_vec(),
        );
        assert_eq!(policy.signature(&env).unwrap(), None);
        env.client.auth = Some("a".into());
        assert!(policy.signature(&env).unwrap().is_some());
    }
}
