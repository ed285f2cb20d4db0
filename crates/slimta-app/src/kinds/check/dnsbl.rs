//! `type = "dnsbl"`: weighted DNS lists for the client address, postscreen
//! style (the library's `slimta::edge::dnsbl`):
//!
//! ```toml
//! [check.dnsbl]
//! type = "dnsbl"
//! lists = [ { zone = "zen.test", score = 8, responses = ["127.0.0.2", "127.0.0.10/31"] },
//!           { zone = "list.dnswl.test", score = -5 } ]
//! threshold = 8
//! stage = "rcpt"        # or "banner"
//! reply = { code = 550, message = "5.7.1 Service unavailable; client [{ip}] listed by {lists}" }
//! ```
//!
//! Decisions:
//! - `lists` is required and not empty; each zone is a domain, listed
//!   once; `score` is a non-zero integer (negative for an allow-list);
//!   `responses` are IPv4 addresses or CIDR ranges (list answers are A
//!   records); without it any 127.0.0.0/8 answer counts.
//! - `threshold` (default 1) is at least 1, and reachable: a threshold no
//!   sum of the positive scores reaches would never refuse anybody, which
//!   is a mistake worth reporting.
//! - A list that does not answer counts 0 (fail open, logged), each lookup
//!   bounded by the library's default of 5 s.
//! - The lookups go to `[dns] nameservers` (the system resolver when
//!   empty).
//! - Loopback clients (127.0.0.0/8, ::1) are not judged, like
//!   authenticated ones (see `spf.rs`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use slimta::edge::DynValidators;
use slimta::edge::dnsbl::{self, DnsBlocklists, DnsList, DnsblStage};
use slimta::edge::ip_range::IpRange;
use slimta::reply_template::ReplyTemplate;
use toml::Value;

use super::{CheckContext, CheckKind, CheckSettings};
use crate::config::fields::{Errors, Section, choice, domain, expected, reply_template, string};

/// What `[check.NAME]` of type dnsbl said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DnsblSettings {
    lists: Vec<DnsList>,
    threshold: i64,
    stage: DnsblStage,
    reply: ReplyTemplate,
    trusted: Vec<IpRange>,
}

impl CheckSettings for DnsblSettings {
    fn validators(&self, context: &CheckContext<'_>) -> Result<Arc<dyn DynValidators>, String> {
        let resolver = slimta::dns::Resolver::new(&context.dns.nameservers)
            .map_err(|e| format!("cannot set up the DNS resolver: {}", e.message()))?;
        let mut check = DnsBlocklists::new(resolver)
            .threshold(self.threshold)
            .stage(self.stage)
            .reply(self.reply.clone());
        for list in &self.lists {
            check = check.list(list.zone.clone(), list.score, list.responses.clone());
        }
        for range in &self.trusted {
            check = check.trust(*range);
        }
        Ok(Arc::new(check))
    }
}

/// A signed integer that is not zero.
fn score(value: &Value) -> Result<i64, String> {
    match value.as_integer() {
        Some(0) => Err("must not be 0 (a list that adds nothing does nothing)".to_owned()),
        Some(n) => Ok(n),
        None => Err(expected("an integer (negative for an allow-list)", value)),
    }
}

fn response(value: &Value) -> Result<IpRange, String> {
    let s = string(value)?;
    let range: IpRange = s.parse()?;
    if s.trim().parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) || s.contains(':') {
        return Err(format!(
            "\"{s}\" is IPv6; DNS list answers are IPv4 (A records)"
        ));
    }
    Ok(range)
}

fn read_list(s: &Section<'_>, errors: &mut Errors, i: usize, item: &Value) -> Option<DnsList> {
    let path = format!("{}[{i}]", s.key_path("lists"));
    let Value::Table(table) = item else {
        errors.push(
            path,
            expected("a table like { zone = \"zen.example\", score = 8 }", item),
        );
        return None;
    };
    let mut l = Section::new(path, table);
    let zone = l.required(errors, "zone", domain);
    let score = l.required(errors, "score", score);
    let before = errors.0.len();
    let responses = l.list(errors, "responses", response).unwrap_or_default();
    let responses_ok = errors.0.len() == before;
    l.finish(errors, &[], None);
    Some(DnsList {
        zone: zone?,
        score: score?,
        responses,
    })
    .filter(|_| responses_ok)
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<DnsblSettings> {
    let lists_value = s.required(errors, "lists", |v| match v {
        Value::Array(items) if items.is_empty() => Err("must list at least one zone".to_owned()),
        Value::Array(items) => Ok(items.clone()),
        other => Err(expected(
            "an array of { zone, score, responses } tables",
            other,
        )),
    });
    let mut lists = Vec::new();
    let mut ok = lists_value.is_some();
    let mut zones = BTreeSet::new();
    for (i, item) in lists_value.iter().flatten().enumerate() {
        match read_list(s, errors, i, item) {
            Some(list) if !zones.insert(list.zone.clone()) => {
                errors.push(
                    format!("{}[{i}].zone", s.key_path("lists")),
                    format!("\"{}\" is listed twice", list.zone),
                );
                ok = false;
            }
            Some(list) => lists.push(list),
            None => ok = false,
        }
    }
    let threshold = s.opt(errors, "threshold", |v| match v.as_integer() {
        Some(n) if n >= 1 => Ok(n),
        Some(n) => Err(format!(
            "must be at least 1, found {n} (a threshold of 0 or less refuses every client)"
        )),
        None => Err(expected("an integer", v)),
    });
    ok &= threshold.is_some() || !s.table.contains_key("threshold");
    let threshold = threshold.unwrap_or(1);
    let stage = match s.or(errors, "stage", "rcpt", choice(&["rcpt", "banner"])) {
        "banner" => DnsblStage::Banner,
        _ => DnsblStage::Rcpt,
    };
    let reply = s.opt(errors, "reply", reply_template(dnsbl::PLACEHOLDERS));
    ok &= reply.is_some() || !s.table.contains_key("reply");
    let reachable: i64 = lists.iter().map(|l| l.score.max(0)).sum();
    if ok && reachable < threshold {
        errors.push(
            s.key_path("threshold"),
            format!(
                "{threshold} is more than all positive scores together ({reachable}): the check would never refuse"
            ),
        );
        ok = false;
    }
    let reply = match reply {
        Some(reply) => reply,
        None => ReplyTemplate::new(550, dnsbl::DEFAULT_REPLY).expect("the default reply is valid"),
    };
    let trusted = super::trusted::read(s, errors);
    ok &= trusted.is_some();
    ok.then_some(DnsblSettings {
        lists,
        threshold,
        stage,
        reply,
        trusted: trusted.unwrap_or_default(),
    })
}

pub(super) const DNSBL: CheckKind = CheckKind {
    name: "dnsbl",
    read: Some(|s: &mut Section<'_>, errors: &mut Errors| {
        read(s, errors).map(|settings| Arc::new(settings) as Arc<dyn CheckSettings>)
    }),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<DnsblSettings, Vec<String>> {
        let table: toml::Table = text.parse().unwrap();
        let mut errors = Errors::default();
        let mut s = Section::new("check.dnsbl".into(), &table);
        let got = read(&mut s, &mut errors);
        s.finish(&mut errors, &[], None);
        match got {
            Some(settings) if errors.0.is_empty() => Ok(settings),
            _ => Err(errors.0.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn reads_every_key() {
        let got = read_text(
            r#"
            lists = [ { zone = "Zen.Test.", score = 8, responses = ["127.0.0.2", "127.0.0.10/31"] },
                      { zone = "list.dnswl.test", score = -5 } ]
            threshold = 8
            stage = "banner"
            reply = { code = 550, message = "5.7.1 [{ip}] is listed by {lists}" }
            trusted = []
            "#,
        )
        .unwrap();
        let r = |s: &str| s.parse::<IpRange>().unwrap();
        assert_eq!(
            got,
            DnsblSettings {
                lists: vec![
                    DnsList {
                        zone: "zen.test".into(),
                        score: 8,
                        responses: vec![r("127.0.0.2"), r("127.0.0.10/31")],
                    },
                    DnsList {
                        zone: "list.dnswl.test".into(),
                        score: -5,
                        responses: vec![],
                    },
                ],
                threshold: 8,
                stage: DnsblStage::Banner,
                reply: ReplyTemplate::new(550, "5.7.1 [{ip}] is listed by {lists}").unwrap(),
                trusted: vec![],
            }
        );
        let defaults = read_text(r#"lists = [{ zone = "zen.test", score = 1 }]"#).unwrap();
        assert_eq!(defaults.threshold, 1);
        assert_eq!(defaults.stage, DnsblStage::Rcpt);
        assert_eq!(
            defaults.reply,
            ReplyTemplate::new(550, dnsbl::DEFAULT_REPLY).unwrap()
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_key() {
        let one = r#"lists = [{ zone = "zen.test", score = 8 }]"#;
        let cases: Vec<(String, Vec<&str>)> = vec![
            ("".into(), vec!["check.dnsbl.lists: missing required key"]),
            ("lists = []".into(), vec!["check.dnsbl.lists: must list at least one zone"]),
            (
                r#"lists = ["zen.test"]"#.into(),
                vec!["check.dnsbl.lists[0]: expected a table like { zone = \"zen.example\", score = 8 }, found string"],
            ),
            (
                r#"lists = [{ zone = "zen..test", score = 8.5, color = 1 }]"#.into(),
                vec![
                    "check.dnsbl.lists[0].zone: invalid domain \"zen..test\": empty label",
                    "check.dnsbl.lists[0].score: expected an integer (negative for an allow-list), found float",
                    "check.dnsbl.lists[0].color: unknown key (expected one of: responses, score, zone)",
                ],
            ),
            (
                r#"lists = [{ zone = "zen.test", score = 0 }]"#.into(),
                vec!["check.dnsbl.lists[0].score: must not be 0 (a list that adds nothing does nothing)"],
            ),
            (
                r#"lists = [{ zone = "zen.test", score = 8, responses = ["127.0.0.1/33", "::1", "x"] }]"#.into(),
                vec![
                    "check.dnsbl.lists[0].responses[0]: invalid address or CIDR range \"127.0.0.1/33\": prefix /33 is longer than 32 bits",
                    "check.dnsbl.lists[0].responses[1]: \"::1\" is IPv6; DNS list answers are IPv4 (A records)",
                    "check.dnsbl.lists[0].responses[2]: invalid address or CIDR range \"x\": expected e.g. 127.0.0.2 or 127.0.0.0/24",
                ],
            ),
            (
                r#"lists = [{ zone = "zen.test", score = 8 }, { zone = "ZEN.test", score = 1 }]"#.into(),
                vec!["check.dnsbl.lists[1].zone: \"zen.test\" is listed twice"],
            ),
            (
                format!("{one}\nthreshold = 0"),
                vec!["check.dnsbl.threshold: must be at least 1, found 0 (a threshold of 0 or less refuses every client)"],
            ),
            (
                r#"lists = [{ zone = "a.test", score = 4 }, { zone = "w.test", score = -5 }]
                threshold = 5"#.into(),
                vec!["check.dnsbl.threshold: 5 is more than all positive scores together (4): the check would never refuse"],
            ),
            (
                format!("{one}\nstage = \"mail\""),
                vec!["check.dnsbl.stage: unknown value \"mail\" (expected one of: \"rcpt\", \"banner\")"],
            ),
            (
                format!("{one}\nreply = {{ code = 550, message = \"5.7.1 {{ip}} {{reason}}\" }}"),
                vec!["check.dnsbl.reply: unknown placeholder {reason} (this reply can use: {ip}, {lists})"],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(read_text(&text).unwrap_err(), want, "{text}");
        }
    }

    #[tokio::test]
    async fn the_built_check_asks_the_configured_nameservers_and_skips_loopback() {
        use super::super::test_build::{edge_checks, session};
        let dns = test_peers::Dnsmasq::start(&[
            "--host-record=1.2.0.192.zen.test,127.0.0.2",
            "--host-record=2.0.0.127.zen.test,127.0.0.2",
        ]);
        let links = edge_checks(
            "[check.dnsbl]\ntype = \"dnsbl\"\nlists = [{ zone = \"zen.test\", score = 8 }]\nthreshold = 8",
            "[\"dnsbl\"]",
            dns.addr(),
        );
        for (ip, want) in [
            (
                "192.0.2.1",
                "550 5.7.1 Service unavailable; client [192.0.2.1] listed by zen.test",
            ),
            ("192.0.2.2", "250 2.1.5 ok"),
            // Listed, but loopback is trusted.
            ("127.0.0.2", "250 2.1.5 ok"),
        ] {
            let mut reply = slimta::Reply::new(250, "2.1.5", "ok");
            links[0]
                .rcpt_boxed(
                    &mut reply,
                    &session(ip),
                    "b@example.test",
                    &slimta::smtp::RcptParams::default(),
                )
                .await;
            assert_eq!(
                String::from_utf8(reply.to_bytes()).unwrap().trim_end(),
                want,
                "{ip}"
            );
        }
    }
}
