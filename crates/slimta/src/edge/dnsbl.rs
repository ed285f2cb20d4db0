//! [`DnsBlocklists`]: weighted DNS lists (DNSBL/DNSWL) checked for the
//! client address, postscreen style: every list that lists the client adds
//! its score (an allow-list has a negative one), and a total at or above
//! the threshold refuses the client.
//!
//! A list is asked by the reversed address under its zone (RFC 5782:
//! `192.0.2.1` in `zen.test` is `1.2.0.192.zen.test`; IPv6 by its 32
//! nibbles), an A answer meaning "listed".
//!
//! Decisions:
//! - Lists are asked concurrently, each bounded by the timeout (default
//!   5 s). A list that times out or fails counts 0 and is logged: a broken
//!   list must not refuse mail for everybody (fail open, as Postfix and
//!   postscreen do).
//! - `responses` says which A answers count (addresses and CIDR ranges).
//!   Without it, any answer in 127.0.0.0/8 counts except 127.255.255.0/24,
//!   which lists such as Spamhaus use for "query refused" errors: that is
//!   logged and counts 0. Answers outside 127.0.0.0/8 never count (a
//!   hijacked or wildcard zone).
//! - The verdict is looked up once per session and cached by session id
//!   (bounded, see `session_cache`), so a session with 50 recipients asks
//!   each list once.
//! - Authenticated clients, clients without an address (a unix socket)
//!   and addresses in the trusted ranges ([`DnsBlocklists::trust`]) are not
//!   judged. The library trusts nothing by default; the app trusts
//!   loopback.
//! - At the banner stage a refusal is the greeting: `554` (or `421` for a
//!   4xx reply), after which the session takes only QUIT (RFC 5321 3.1).
//!   At the RCPT stage each recipient gets the reply, which lets the log
//!   show who the mail was for.
//! - The reply's `{ip}` is the client address, `{lists}` the zones (comma
//!   separated) that listed it with a positive score.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::dns::Resolver;
use crate::reply::Reply;
use crate::reply_template::ReplyTemplate;
use crate::smtp::RcptParams;

use super::ip_range::IpRange;
use super::session_cache::SessionCache;
use super::validators::{SessionInfo, Validators};

/// The placeholders a DNS list reply may use.
pub const PLACEHOLDERS: &[&str] = &["ip", "lists"];

/// The default reply (Postfix's wording).
pub const DEFAULT_REPLY: &str = "5.7.1 Service unavailable; client [{ip}] listed by {lists}";

/// The default timeout of one list's lookup.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The SMTP stage that refuses a listed client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsblStage {
    /// The greeting: `554`, then only QUIT.
    Banner,
    /// Every RCPT TO.
    #[default]
    Rcpt,
}

/// One list: its zone, the score it adds and which answers count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsList {
    /// The zone the reversed address is looked up under (`zen.test`).
    pub zone: String,
    /// Added to the total when the list lists the client; negative for an
    /// allow-list.
    pub score: i64,
    /// Which A answers count (empty: any 127.0.0.0/8 but 127.255.255.0/24).
    pub responses: Vec<IpRange>,
}

impl DnsList {
    /// Whether the list's answer `answer` counts as listed.
    pub fn counts(&self, answer: Ipv4Addr) -> bool {
        counts(answer, &self.responses)
    }
}

/// The result of asking every list about one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsblVerdict {
    /// The sum of the scores of the lists that listed the address.
    pub score: i64,
    /// The zones that listed it with a positive score, in list order.
    pub listed_by: Vec<String>,
    /// Whether the score reached the threshold.
    pub refused: bool,
}

/// What one list said.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Listing {
    Listed,
    NotListed,
    /// A timeout, a failure or an error code: counts 0.
    Failed,
}

/// Weighted DNS lists as an edge check; see the module docs.
///
/// ```no_run
/// use slimta::edge::dnsbl::DnsBlocklists;
/// # fn f(resolver: slimta::dns::Resolver) {
/// let lists = DnsBlocklists::new(resolver)
///     .list("zen.test", 8, ["127.0.0.2".parse().unwrap(), "127.0.0.10/31".parse().unwrap()])
///     .list("list.dnswl.test", -5, [])
///     .threshold(8);
/// # }
/// ```
#[derive(Debug)]
pub struct DnsBlocklists {
    resolver: Resolver,
    lists: Vec<DnsList>,
    threshold: i64,
    stage: DnsblStage,
    reply: ReplyTemplate,
    timeout: Duration,
    trusted: Vec<IpRange>,
    /// The verdict per session, with the address it is about.
    cache: SessionCache<(IpAddr, DnsblVerdict)>,
}

impl DnsBlocklists {
    /// No lists yet, threshold 1, refusing at RCPT with [`DEFAULT_REPLY`].
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            lists: Vec::new(),
            threshold: 1,
            stage: DnsblStage::Rcpt,
            reply: ReplyTemplate::new(550, DEFAULT_REPLY).expect("the default reply is valid"),
            timeout: DEFAULT_TIMEOUT,
            trusted: Vec::new(),
            cache: SessionCache::default(),
        }
    }

    /// Adds a list under `zone` adding `score` when it lists the client
    /// with an answer in `responses` (empty: see the module docs).
    #[must_use]
    pub fn list(
        mut self,
        zone: impl Into<String>,
        score: i64,
        responses: impl IntoIterator<Item = IpRange>,
    ) -> Self {
        let zone = zone.into();
        self.lists.push(DnsList {
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
            score,
            responses: responses.into_iter().collect(),
        });
        self
    }

    /// The total score that refuses (default 1).
    #[must_use]
    pub fn threshold(mut self, threshold: i64) -> Self {
        self.threshold = threshold;
        self
    }

    /// Where a listed client is refused (default RCPT).
    #[must_use]
    pub fn stage(mut self, stage: DnsblStage) -> Self {
        self.stage = stage;
        self
    }

    /// The refusal; may use [`PLACEHOLDERS`] (others are left empty:
    /// check them with [`ReplyTemplate::check_names`]).
    #[must_use]
    pub fn reply(mut self, reply: ReplyTemplate) -> Self {
        self.reply = reply;
        self
    }

    /// The deadline of each list's lookup (default 5 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Clients in `range` are not judged.
    #[must_use]
    pub fn trust(mut self, range: IpRange) -> Self {
        self.trusted.push(range);
        self
    }

    /// Asks every list about `ip`, concurrently.
    pub async fn check(&self, ip: IpAddr) -> DnsblVerdict {
        let ip = ip.to_canonical();
        let mut lookups = tokio::task::JoinSet::new();
        for (i, list) in self.lists.iter().enumerate() {
            let resolver = self.resolver.clone();
            let list = list.clone();
            let timeout = self.timeout;
            lookups.spawn(async move { (i, ask(&resolver, &list, ip, timeout).await) });
        }
        let mut listings = vec![Listing::Failed; self.lists.len()];
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok((i, listing)) => listings[i] = listing,
                Err(e) => tracing::warn!(client = %ip, error = %e, "DNS list lookup task failed"),
            }
        }
        verdict(&self.lists, &listings, self.threshold)
    }

    /// The session's verdict, from the cache or asked now; `None` for a
    /// client that is not judged.
    async fn session_verdict(&self, session: &SessionInfo) -> Option<DnsblVerdict> {
        let ip = session.client.ip?.to_canonical();
        if session.authenticated() || self.trusted.iter().any(|r| r.contains(ip)) {
            return None;
        }
        if let Some((cached_ip, v)) = self.cache.get(session.id)
            && cached_ip == ip
        {
            return Some(v);
        }
        let v = self.check(ip).await;
        if v.refused {
            tracing::info!(session = session.id, client = %ip, score = v.score,
                lists = %v.listed_by.join(","), "client refused by DNS lists");
        }
        self.cache.insert(session.id, (ip, v.clone()));
        Some(v)
    }

    fn refusal(&self, ip: IpAddr, verdict: &DnsblVerdict) -> Reply {
        self.reply.render(|name| match name {
            "ip" => Some(ip.to_canonical().to_string()),
            "lists" => Some(verdict.listed_by.join(", ")),
            _ => None,
        })
    }
}

impl Validators for DnsBlocklists {
    async fn banner(&self, reply: &mut Reply, session: &SessionInfo) {
        if self.stage != DnsblStage::Banner {
            return;
        }
        let (Some(v), Some(ip)) = (self.session_verdict(session).await, session.client.ip) else {
            return;
        };
        if v.refused {
            let mut refusal = self.refusal(ip, &v);
            refusal.set_code(if refusal.is_transient() { 421 } else { 554 });
            *reply = refusal;
        }
        // The banner refuses the whole session: nothing to remember.
        self.cache.remove(session.id);
    }

    async fn rcpt(&self, reply: &mut Reply, session: &SessionInfo, _: &str, _: &RcptParams) {
        if self.stage != DnsblStage::Rcpt {
            return;
        }
        let (Some(v), Some(ip)) = (self.session_verdict(session).await, session.client.ip) else {
            return;
        };
        if v.refused {
            *reply = self.refusal(ip, &v);
        }
    }
}

async fn ask(resolver: &Resolver, list: &DnsList, ip: IpAddr, timeout: Duration) -> Listing {
    let name = reverse_name(ip, &list.zone);
    let answers = match tokio::time::timeout(timeout, resolver.ipv4s(&name)).await {
        Ok(Ok(answers)) => answers,
        Ok(Err(e)) if e.is_not_found() => return Listing::NotListed,
        Ok(Err(e)) => {
            tracing::warn!(zone = %list.zone, error = %e, "DNS list lookup failed; counted as not listed");
            return Listing::Failed;
        }
        Err(_) => {
            tracing::warn!(zone = %list.zone, %name, "DNS list lookup timed out; counted as not listed");
            return Listing::Failed;
        }
    };
    if answers.iter().any(|a| list.counts(*a)) {
        return Listing::Listed;
    }
    if list.responses.is_empty() && answers.iter().any(|a| is_error_code(*a)) {
        tracing::warn!(zone = %list.zone, answers = ?answers, "DNS list answered with an error code; counted as not listed");
        return Listing::Failed;
    }
    Listing::NotListed
}

/// `ip` reversed under `zone` (RFC 5782 2.1 and 2.4).
pub fn reverse_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
                name.push('.');
                name.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                name.push('.');
            }
            name.push_str(zone);
            name
        }
    }
}

fn is_error_code(answer: Ipv4Addr) -> bool {
    let [a, b, c, _] = answer.octets();
    (a, b, c) == (127, 255, 255)
}

fn counts(answer: Ipv4Addr, responses: &[IpRange]) -> bool {
    if responses.is_empty() {
        answer.octets()[0] == 127 && !is_error_code(answer)
    } else {
        responses.iter().any(|r| r.contains(IpAddr::V4(answer)))
    }
}

fn verdict(lists: &[DnsList], listings: &[Listing], threshold: i64) -> DnsblVerdict {
    let mut v = DnsblVerdict::default();
    for (list, listing) in lists.iter().zip(listings) {
        if *listing == Listing::Listed {
            v.score = v.score.saturating_add(list.score);
            if list.score > 0 {
                v.listed_by.push(list.zone.clone());
            }
        }
    }
    v.refused = v.score >= threshold;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        let cases = [
            ("192.0.2.1", "zen.test", "1.2.0.192.zen.test"),
            ("127.0.0.2", "zen.test.", "2.0.0.127.zen.test"),
            ("::ffff:127.0.0.2", "zen.test", "2.0.0.127.zen.test"),
            (
                "2001:db8::1",
                "v6.test",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.v6.test",
            ),
        ];
        for (ip, zone, want) in cases {
            assert_eq!(reverse_name(ip.parse().unwrap(), zone), want, "{ip}");
        }
    }

    #[test]
    fn which_answers_count() {
        let ranges: Vec<IpRange> = ["127.0.0.2", "127.0.0.10/31"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let cases: &[(&str, bool, bool)] = &[
            // answer, counts with the ranges, counts with none
            ("127.0.0.2", true, true),
            ("127.0.0.3", false, true),
            ("127.0.0.10", true, true),
            ("127.0.0.11", true, true),
            ("127.0.0.12", false, true),
            ("127.255.255.254", false, false),
            ("192.0.2.1", false, false),
        ];
        for (answer, with, without) in cases {
            let a: Ipv4Addr = answer.parse().unwrap();
            assert_eq!(counts(a, &ranges), *with, "{answer} with ranges");
            assert_eq!(counts(a, &[]), *without, "{answer} without ranges");
        }
    }

    #[test]
    fn scores_add_up_and_allow_lists_cancel() {
        let list = |zone: &str, score| DnsList {
            zone: zone.into(),
            score,
            responses: vec![],
        };
        let lists = [list("a.test", 8), list("b.test", 3), list("w.test", -5)];
        use Listing::{Failed as F, Listed as L, NotListed as N};
        let cases: &[([Listing; 3], i64, &[&str], bool)] = &[
            ([L, N, N], 8, &["a.test"], true),
            ([L, N, L], 3, &["a.test"], false),
            ([N, L, N], 3, &["b.test"], false),
            ([L, L, N], 11, &["a.test", "b.test"], true),
            ([L, L, L], 6, &["a.test", "b.test"], false),
            ([N, N, L], -5, &[], false),
            ([F, F, F], 0, &[], false),
            ([F, L, N], 3, &["b.test"], false),
        ];
        for (listings, score, by, refused) in cases {
            let v = verdict(&lists, listings, 8);
            assert_eq!(v.score, *score, "{listings:?}");
            assert_eq!(v.listed_by, *by, "{listings:?}");
            assert_eq!(v.refused, *refused, "{listings:?}");
        }
    }
}
