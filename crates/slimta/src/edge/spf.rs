//! [`EnforceSpf`]: the SPF check (RFC 7208) of the client address against
//! the sender's domain, with an operator-chosen reply per result, as
//! python-slimta's `EnforceSpf().set_enforcement('fail', match_message=
//! '5.7.1 Access denied: {reason}')`.
//!
//! The evaluation itself is mail-auth's (`MessageAuthenticator::verify_spf`)
//! on a hickory resolver that asks the project's configured nameservers
//! ([`crate::dns::Resolver`]), so tests and operators control where the
//! queries go.
//!
//! Decisions:
//! - The identity is MAIL FROM's domain; for the null sender `<>` it is the
//!   HELO name, as `postmaster@HELO` (RFC 7208 2.3 and 2.4). A HELO that is
//!   an address literal or not a domain gives `none`.
//! - The whole evaluation (up to RFC 7208's ten lookups) is bounded by one
//!   timeout (default 10 s); running out of it is `temperror` (RFC 7208
//!   4.4 / 2.6.6).
//! - A result without a rule is accepted unchanged, so the default is only
//!   to look (and add Received-SPF). A rule's reply replaces the server's,
//!   whatever its code: a `250` rule rewords an acceptance.
//! - The check runs at MAIL FROM ([`SpfStage::Mail`], the earliest stage
//!   with the identity) or at each RCPT ([`SpfStage::Rcpt`], for sites that
//!   want to see the recipients in the log, or that let postmaster through
//!   with an earlier link). The result is computed once per transaction and
//!   kept per session (bounded, see `session_cache`).
//! - With [`EnforceSpf::received_spf`], accepted mail gets a
//!   `Received-SPF:` header (RFC 7208 9.1) at the top, added once the
//!   message is in; no other header is touched (an existing Received-SPF
//!   from an earlier hop stays: it is trace information of that hop).
//! - `{reason}` is the domain's explanation (`exp=`, RFC 7208 6.2) when it
//!   gave one for a fail, else a sentence naming the domain and address.
//!   Text from the DNS is cleaned of line breaks and capped by
//!   [`ReplyTemplate`].
//! - Authenticated clients, clients without an address (a unix socket) and
//!   addresses in the trusted ranges ([`EnforceSpf::trust`]) are not
//!   judged and get no header. The library trusts nothing by default; the
//!   app trusts loopback.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use mail_auth::spf::verify::SpfParameters;

use crate::dns::Resolver;
use crate::envelope::Envelope;
use crate::reply::Reply;
use crate::reply_template::ReplyTemplate;
use crate::smtp::{MailParams, RcptParams};

use super::ip_range::IpRange;
use super::session_cache::SessionCache;
use super::validators::{SessionInfo, Validators};

/// The placeholders an SPF reply may use.
pub const PLACEHOLDERS: &[&str] = &["reason"];

/// The default timeout of one evaluation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of an SPF evaluation (RFC 7208 2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpfResult {
    /// The client is authorized.
    Pass,
    /// The client is explicitly not authorized.
    Fail,
    /// The client is probably not authorized.
    SoftFail,
    /// The domain makes no assertion about the client.
    Neutral,
    /// No SPF record, or no domain to check.
    None,
    /// A transient error (DNS failure or timeout).
    TempError,
    /// The domain's record could not be interpreted.
    PermError,
}

impl SpfResult {
    /// Every result, in RFC order.
    pub const ALL: [SpfResult; 7] = [
        SpfResult::Pass,
        SpfResult::Fail,
        SpfResult::SoftFail,
        SpfResult::Neutral,
        SpfResult::None,
        SpfResult::TempError,
        SpfResult::PermError,
    ];

    /// The name used in headers and configuration (`softfail`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }

    fn from_mail_auth(r: mail_auth::SpfResult) -> Self {
        match r {
            mail_auth::SpfResult::Pass => SpfResult::Pass,
            mail_auth::SpfResult::Fail => SpfResult::Fail,
            mail_auth::SpfResult::SoftFail => SpfResult::SoftFail,
            mail_auth::SpfResult::Neutral => SpfResult::Neutral,
            mail_auth::SpfResult::None => SpfResult::None,
            mail_auth::SpfResult::TempError => SpfResult::TempError,
            mail_auth::SpfResult::PermError => SpfResult::PermError,
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SpfResult {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
                format!(
                    "unknown SPF result \"{s}\" (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// Which identity was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfIdentity {
    /// The MAIL FROM address.
    MailFrom,
    /// The HELO name (for the null sender).
    Helo,
}

/// What one evaluation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfOutcome {
    /// The result.
    pub result: SpfResult,
    /// The identity checked.
    pub identity: SpfIdentity,
    /// The address checked: the sender, or `postmaster@HELO` for `<>`.
    pub envelope_from: String,
    /// The HELO name the client gave.
    pub helo: String,
    /// The client address.
    pub client_ip: IpAddr,
    /// The domain whose policy was evaluated.
    pub domain: String,
    /// Why, for the reply's `{reason}` and the header's comment.
    pub reason: String,
}

/// Where the check answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpfStage {
    /// MAIL FROM.
    #[default]
    Mail,
    /// Every RCPT TO.
    Rcpt,
}

/// The SPF check as an edge link; see the module docs.
///
/// ```no_run
/// use slimta::edge::spf::{EnforceSpf, SpfResult};
/// use slimta::reply_template::ReplyTemplate;
/// # fn f(resolver: slimta::dns::Resolver) {
/// let spf = EnforceSpf::new(&resolver)
///     .set_enforcement(
///         SpfResult::Fail,
///         ReplyTemplate::new(550, "5.7.1 Access denied: {reason}").unwrap(),
///     )
///     .received_spf(true);
/// # }
/// ```
pub struct EnforceSpf {
    authenticator: MessageAuthenticator,
    rules: HashMap<SpfResult, ReplyTemplate>,
    stage: SpfStage,
    timeout: Duration,
    received_spf: bool,
    receiver: String,
    trusted: Vec<IpRange>,
    cache: SessionCache<SpfOutcome>,
}

impl fmt::Debug for EnforceSpf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforceSpf")
            .field("rules", &self.rules)
            .field("stage", &self.stage)
            .field("timeout", &self.timeout)
            .field("received_spf", &self.received_spf)
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

impl EnforceSpf {
    /// A check asking `resolver`'s nameservers, with no rules (every result
    /// accepted), at MAIL FROM, no header, the local host name as the
    /// receiver.
    pub fn new(resolver: &Resolver) -> Self {
        Self {
            authenticator: MessageAuthenticator(resolver.hickory().clone()),
            rules: HashMap::new(),
            stage: SpfStage::Mail,
            timeout: DEFAULT_TIMEOUT,
            received_spf: false,
            receiver: gethostname::gethostname().to_string_lossy().into_owned(),
            trusted: Vec::new(),
            cache: SessionCache::default(),
        }
    }

    /// Answers `result` with `reply` (which may use [`PLACEHOLDERS`];
    /// check them with [`ReplyTemplate::check_names`]).
    #[must_use]
    pub fn set_enforcement(mut self, result: SpfResult, reply: ReplyTemplate) -> Self {
        self.rules.insert(result, reply);
        self
    }

    /// Where the check answers (default MAIL FROM).
    #[must_use]
    pub fn stage(mut self, stage: SpfStage) -> Self {
        self.stage = stage;
        self
    }

    /// The deadline of one evaluation; past it the result is `temperror`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether accepted mail gets a `Received-SPF:` header (default no).
    #[must_use]
    pub fn received_spf(mut self, on: bool) -> Self {
        self.received_spf = on;
        self
    }

    /// This host's name, for the header (`receiver=`) and `%{r}` macros.
    #[must_use]
    pub fn receiver(mut self, name: impl Into<String>) -> Self {
        self.receiver = name.into();
        self
    }

    /// Clients in `range` are not judged.
    #[must_use]
    pub fn trust(mut self, range: IpRange) -> Self {
        self.trusted.push(range);
        self
    }

    /// Evaluates SPF for a client at `ip` that said HELO `helo` and MAIL
    /// FROM `sender` (empty for `<>`).
    pub async fn check(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfOutcome {
        let ip = ip.to_canonical();
        let helo = helo.trim_end_matches('.');
        let (identity, envelope_from) = if sender.is_empty() {
            (SpfIdentity::Helo, format!("postmaster@{helo}"))
        } else {
            (SpfIdentity::MailFrom, sender.to_owned())
        };
        let params = match identity {
            SpfIdentity::Helo => SpfParameters::verify_ehlo(ip, helo, &self.receiver),
            SpfIdentity::MailFrom => {
                SpfParameters::verify_mail_from(ip, helo, &self.receiver, sender)
            }
        };
        let domain = match identity {
            SpfIdentity::Helo => helo.to_ascii_lowercase(),
            SpfIdentity::MailFrom => crate::envelope::domain_of(sender)
                .unwrap_or(helo)
                .to_ascii_lowercase(),
        };
        if identity == SpfIdentity::Helo && !is_domain(helo) {
            // An address literal or garbage: no identity to check (RFC 7208 2.3).
            let reason = format!("HELO {helo} is not a domain name");
            return SpfOutcome {
                result: SpfResult::None,
                identity,
                envelope_from,
                helo: helo.to_owned(),
                client_ip: ip,
                domain,
                reason,
            };
        }
        let (result, explanation) =
            match tokio::time::timeout(self.timeout, self.authenticator.verify_spf(params)).await {
                Ok(output) => (
                    SpfResult::from_mail_auth(output.result()),
                    output.explanation().map(str::to_owned),
                ),
                Err(_) => (
                    SpfResult::TempError,
                    Some(format!(
                        "SPF evaluation for {domain} timed out after {}",
                        humane(self.timeout)
                    )),
                ),
            };
        let reason = match (result, explanation) {
            (SpfResult::Fail | SpfResult::TempError, Some(exp)) if !exp.trim().is_empty() => {
                exp.trim().to_owned()
            }
            (result, _) => default_reason(result, &domain, &envelope_from, ip),
        };
        SpfOutcome {
            result,
            identity,
            envelope_from,
            helo: helo.to_owned(),
            client_ip: ip,
            domain,
            reason,
        }
    }

    /// Whether the session's client is judged at all.
    fn judged(&self, session: &SessionInfo) -> Option<IpAddr> {
        let ip = session.client.ip?.to_canonical();
        (!session.authenticated() && !self.trusted.iter().any(|r| r.contains(ip))).then_some(ip)
    }

    /// The outcome of the session's current transaction, from the cache
    /// when it is for `sender`, else evaluated now (and cached).
    async fn outcome(&self, session: &SessionInfo, ip: IpAddr, sender: &str) -> SpfOutcome {
        let helo = session.client.helo.as_deref().unwrap_or_default();
        if let Some(cached) = self.cache.get(session.id)
            && same_sender(&cached, sender, helo, ip)
        {
            return cached;
        }
        let outcome = self.check(ip, helo, sender).await;
        tracing::debug!(session = session.id, client = %ip, result = %outcome.result,
            domain = %outcome.domain, "SPF evaluated");
        self.cache.insert(session.id, outcome.clone());
        outcome
    }

    fn enforce(&self, reply: &mut Reply, session: &SessionInfo, outcome: &SpfOutcome) {
        if let Some(rule) = self.rules.get(&outcome.result) {
            let answer = rule.render(|name| (name == "reason").then(|| outcome.reason.clone()));
            if !answer.is_positive() {
                tracing::info!(session = session.id, client = %outcome.client_ip,
                    result = %outcome.result, domain = %outcome.domain, "refused by SPF");
            }
            *reply = answer;
        }
    }
}

fn same_sender(cached: &SpfOutcome, sender: &str, helo: &str, ip: IpAddr) -> bool {
    cached.client_ip == ip
        && cached.helo == helo.trim_end_matches('.')
        && match cached.identity {
            SpfIdentity::MailFrom => cached.envelope_from == sender,
            SpfIdentity::Helo => sender.is_empty(),
        }
}

impl Validators for EnforceSpf {
    async fn mail(&self, reply: &mut Reply, session: &SessionInfo, sender: &str, _: &MailParams) {
        if self.stage != SpfStage::Mail && !self.received_spf {
            return;
        }
        let Some(ip) = self.judged(session) else {
            return;
        };
        // A new transaction: forget the last one's result.
        self.cache.remove(session.id);
        let outcome = self.outcome(session, ip, sender).await;
        if self.stage == SpfStage::Mail {
            self.enforce(reply, session, &outcome);
        }
    }

    async fn rcpt(&self, reply: &mut Reply, session: &SessionInfo, _: &str, _: &RcptParams) {
        if self.stage != SpfStage::Rcpt {
            return;
        }
        let Some(ip) = self.judged(session) else {
            return;
        };
        let sender = session.sender.as_deref().unwrap_or_default();
        let outcome = self.outcome(session, ip, sender).await;
        self.enforce(reply, session, &outcome);
    }

    async fn have_data(&self, _: &mut Reply, session: &SessionInfo, envelope: &mut Envelope) {
        if !self.received_spf {
            return;
        }
        let Some(ip) = self.judged(session) else {
            return;
        };
        let outcome = self.outcome(session, ip, &envelope.sender).await;
        self.cache.remove(session.id);
        envelope.prepend_header("Received-SPF", &received_spf(&outcome, &self.receiver));
    }
}

/// Whether a HELO name can be an SPF identity: labels of letters, digits,
/// `-` and `_` (not an address literal such as `[192.0.2.1]`).
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.parse::<IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

fn default_reason(result: SpfResult, domain: &str, from: &str, ip: IpAddr) -> String {
    match result {
        SpfResult::Pass => format!("domain of {from} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("domain of {from} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => {
            format!("domain of transitioning {from} does not designate {ip} as permitted sender")
        }
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {from}"),
        SpfResult::None => format!("domain of {from} does not publish an SPF record"),
        SpfResult::TempError => {
            format!("temporary DNS error evaluating the SPF record of {domain}")
        }
        SpfResult::PermError => format!("the SPF record of {domain} is invalid"),
    }
}

fn humane(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The value of a `Received-SPF:` header (RFC 7208 9.1): the result, a
/// comment, and the key-value pairs, folded onto continuation lines.
pub fn received_spf(outcome: &SpfOutcome, receiver: &str) -> String {
    let identity = match outcome.identity {
        SpfIdentity::MailFrom => "mailfrom",
        SpfIdentity::Helo => "helo",
    };
    format!(
        "{} ({}: {})\r\n\treceiver={}; client-ip={}; envelope-from={};\r\n\thelo={}; identity={};",
        outcome.result,
        comment(receiver),
        comment(&outcome.reason),
        value(receiver),
        outcome.client_ip,
        quoted(&outcome.envelope_from),
        value(&outcome.helo),
        identity,
    )
}

/// Text inside a comment: `(`, `)` and `\` escaped (RFC 5322 3.2.2),
/// control characters dropped.
fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A dot-atom as it is, anything else as a quoted string.
fn value(s: &str) -> String {
    let atom = !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars().all(|c| {
            c.is_alphanumeric()
                || c == '.'
                || (c.is_ascii_punctuation() && "!#$%&'*+-/=?^_`{|}~".contains(c))
        });
    if atom { s.to_owned() } else { quoted(s) }
}

/// A quoted string (RFC 5322 3.2.4), control characters dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: SpfResult, identity: SpfIdentity, from: &str, helo: &str) -> SpfOutcome {
        SpfOutcome {
            result,
            identity,
            envelope_from: from.into(),
            helo: helo.into(),
            client_ip: "192.0.2.1".parse().unwrap(),
            domain: "example.test".into(),
            reason: default_reason(result, "example.test", from, "192.0.2.1".parse().unwrap()),
        }
    }

    #[test]
    fn received_spf_headers() {
        let cases = [
            (
                outcome(
                    SpfResult::Pass,
                    SpfIdentity::MailFrom,
                    "a@example.test",
                    "mx.example.test",
                ),
                "mx.test",
                "pass (mx.test: domain of a@example.test designates 192.0.2.1 as permitted sender)\r\n\treceiver=mx.test; client-ip=192.0.2.1; envelope-from=\"a@example.test\";\r\n\thelo=mx.example.test; identity=mailfrom;",
            ),
            (
                outcome(
                    SpfResult::None,
                    SpfIdentity::Helo,
                    "postmaster@c.test",
                    "c.test",
                ),
                "mx.test",
                "none (mx.test: domain of postmaster@c.test does not publish an SPF record)\r\n\treceiver=mx.test; client-ip=192.0.2.1; envelope-from=\"postmaster@c.test\";\r\n\thelo=c.test; identity=helo;",
            ),
            (
                // Client-supplied text cannot break out of its token.
                outcome(
                    SpfResult::Fail,
                    SpfIdentity::MailFrom,
                    "\"a\\\"b\"@x(y).test",
                    "[192.0.2.1]",
                ),
                "mx.test",
                "fail (mx.test: domain of \"a\\\\\"b\"@x\\(y\\).test does not designate 192.0.2.1 as permitted sender)\r\n\treceiver=mx.test; client-ip=192.0.2.1; envelope-from=\"\\\"a\\\\\\\"b\\\"@x(y).test\";\r\n\thelo=\"[192.0.2.1]\"; identity=mailfrom;",
            ),
        ];
        for (o, receiver, want) in cases {
            assert_eq!(received_spf(&o, receiver), want);
        }
    }

    #[test]
    fn helo_names_that_can_be_checked() {
        for (name, want) in [
            ("mx.example.test", true),
            ("localhost", true),
            ("[192.0.2.1]", false),
            ("192.0.2.1", false),
            ("[IPv6:2001:db8::1]", false),
            ("a..b", false),
            ("", false),
            ("bad name", false),
        ] {
            assert_eq!(is_domain(name), want, "{name}");
        }
    }

    #[test]
    fn result_names_round_trip() {
        for r in SpfResult::ALL {
            assert_eq!(r.name().parse::<SpfResult>(), Ok(r));
        }
        assert!(
            "hardfail"
                .parse::<SpfResult>()
                .unwrap_err()
                .contains("softfail")
        );
    }

    #[test]
    fn cached_outcomes_are_reused_only_for_the_same_transaction() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let o = outcome(
            SpfResult::Pass,
            SpfIdentity::MailFrom,
            "a@example.test",
            "h.test",
        );
        assert!(same_sender(&o, "a@example.test", "h.test", ip));
        assert!(!same_sender(&o, "b@example.test", "h.test", ip));
        assert!(!same_sender(&o, "a@example.test", "other.test", ip));
        let o = outcome(
            SpfResult::None,
            SpfIdentity::Helo,
            "postmaster@h.test",
            "h.test",
        );
        assert!(same_sender(&o, "", "h.test", ip));
        assert!(!same_sender(&o, "postmaster@h.test", "h.test", ip));
    }
}
