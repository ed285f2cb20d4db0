//! `type = "spf"`: the SPF check of the library (`slimta::edge::spf`),
//! with one reply per result:
//!
//! ```toml
//! [check.spf]
//! type = "spf"
//! fail = { code = 550, message = "5.7.1 Access denied: {reason}" }
//! softfail = { code = 250, message = "2.0.0 Ok; {reason}" }
//! temperror = { code = 451, message = "4.7.1 SPF temporary error: {reason}" }
//! timeout = "10s"
//! received_spf = true
//! stage = "mail"        # or "rcpt"
//! ```
//!
//! Decisions:
//! - Every result (`pass fail softfail neutral none temperror permerror`)
//!   may have a rule; a result without one is accepted. No rule at all is
//!   allowed: the check then only records Received-SPF.
//! - `received_spf` defaults to true (RFC 7208 9.1 recommends recording
//!   the result), `timeout` to 10 s, `stage` to `"mail"`.
//! - The lookups go to `[dns] nameservers` (the system resolver when
//!   empty), the same as the MX relay's; the receiver named in the header
//!   is `process.hostname`.
//! - Clients in `trusted` (default loopback: 127.0.0.0/8, ::1) are not
//!   judged, like authenticated ones: local programs submitting through
//!   loopback would otherwise fail their own domain's SPF (Postfix's
//!   `permit_mynetworks` before the policy service); see `trusted.rs`.

use std::sync::Arc;
use std::time::Duration;

use slimta::edge::DynValidators;
use slimta::edge::ip_range::IpRange;
use slimta::edge::spf::{self, EnforceSpf, SpfResult, SpfStage};
use slimta::reply_template::ReplyTemplate;

use super::{CheckContext, CheckKind, CheckSettings};
use crate::config::fields::{Errors, Section, boolean, choice, positive_duration, reply_template};

/// What `[check.NAME]` of type spf said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpfSettings {
    rules: Vec<(SpfResult, ReplyTemplate)>,
    stage: SpfStage,
    timeout: Duration,
    received_spf: bool,
    trusted: Vec<IpRange>,
}

impl CheckSettings for SpfSettings {
    fn validators(&self, context: &CheckContext<'_>) -> Result<Arc<dyn DynValidators>, String> {
        let resolver = slimta::dns::Resolver::new(&context.dns.nameservers)
            .map_err(|e| format!("cannot set up the DNS resolver: {}", e.message()))?;
        let mut check = EnforceSpf::new(&resolver)
            .stage(self.stage)
            .timeout(self.timeout)
            .received_spf(self.received_spf)
            .receiver(context.hostname);
        for (result, reply) in &self.rules {
            check = check.set_enforcement(*result, reply.clone());
        }
        for range in &self.trusted {
            check = check.trust(*range);
        }
        Ok(Arc::new(check))
    }
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<SpfSettings> {
    let mut rules = Vec::new();
    let mut ok = true;
    for result in SpfResult::ALL {
        // The result names are 'static; the keys of a Section must be.
        match s.opt(errors, result.name(), reply_template(spf::PLACEHOLDERS)) {
            Some(reply) => rules.push((result, reply)),
            None => ok &= !s.table.contains_key(result.name()),
        }
    }
    let stage = match s.or(errors, "stage", "mail", choice(&["mail", "rcpt"])) {
        "rcpt" => SpfStage::Rcpt,
        _ => SpfStage::Mail,
    };
    let timeout = s.opt(errors, "timeout", positive_duration);
    ok &= timeout.is_some() || !s.table.contains_key("timeout");
    let received_spf = s.opt(errors, "received_spf", boolean);
    ok &= received_spf.is_some() || !s.table.contains_key("received_spf");
    let trusted = super::trusted::read(s, errors);
    ok &= trusted.is_some();
    ok.then_some(SpfSettings {
        trusted: trusted.unwrap_or_default(),
        rules,
        stage,
        timeout: timeout.unwrap_or(spf::DEFAULT_TIMEOUT),
        received_spf: received_spf.unwrap_or(true),
    })
}

pub(super) const SPF: CheckKind = CheckKind {
    name: "spf",
    read: Some(|s: &mut Section<'_>, errors: &mut Errors| {
        read(s, errors).map(|settings| Arc::new(settings) as Arc<dyn CheckSettings>)
    }),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<SpfSettings, Vec<String>> {
        let table: toml::Table = text.parse().unwrap();
        let mut errors = Errors::default();
        let mut s = Section::new("check.spf".into(), &table);
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
            fail = { code = 550, message = "5.7.1 Access denied: {reason}" }
            softfail = { code = 250, message = "2.0.0 Ok; {reason}" }
            temperror = { code = 451, message = "4.7.1 SPF temporary error: {reason}" }
            timeout = "3s"
            received_spf = false
            stage = "rcpt"
            trusted = ["192.0.2.0/24"]
            "#,
        )
        .unwrap();
        let t = |code, m| ReplyTemplate::new(code, m).unwrap();
        assert_eq!(
            got,
            SpfSettings {
                rules: vec![
                    (SpfResult::Fail, t(550, "5.7.1 Access denied: {reason}")),
                    (SpfResult::SoftFail, t(250, "2.0.0 Ok; {reason}")),
                    (
                        SpfResult::TempError,
                        t(451, "4.7.1 SPF temporary error: {reason}")
                    ),
                ],
                stage: SpfStage::Rcpt,
                timeout: Duration::from_secs(3),
                received_spf: false,
                trusted: vec!["192.0.2.0/24".parse().unwrap()],
            }
        );
        let defaults = read_text("").unwrap();
        assert_eq!(
            defaults,
            SpfSettings {
                rules: vec![],
                stage: SpfStage::Mail,
                timeout: Duration::from_secs(10),
                received_spf: true,
                trusted: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            }
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_key() {
        let cases: &[(&str, &str)] = &[
            (
                r#"fail = { code = 550, message = "5.7.1 {resaon}" }"#,
                "check.spf.fail: unknown placeholder {resaon} (this reply can use: {reason})",
            ),
            (
                r#"pass = { code = 250, message = "2.0.0 ok", color = 1 }"#,
                "check.spf.pass: unknown key \"color\" (expected code and message)",
            ),
            (
                r#"neutral = { code = 700, message = "x" }"#,
                "check.spf.neutral: must be between 200 and 599, found 700",
            ),
            (
                r#"stage = "data""#,
                "check.spf.stage: unknown value \"data\" (expected one of: \"mail\", \"rcpt\")",
            ),
            (
                r#"timeout = "0s""#,
                "check.spf.timeout: must be longer than zero",
            ),
            (
                "received_spf = 1",
                "check.spf.received_spf: expected a boolean, found integer",
            ),
            (
                r#"hardfail = { code = 550, message = "no" }"#,
                "check.spf.hardfail: unknown key (expected one of: fail, neutral, none, pass, permerror, received_spf, softfail, stage, temperror, timeout, trusted)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(read_text(text).unwrap_err(), [want.to_string()], "{text}");
        }
    }

    #[tokio::test]
    async fn the_built_check_asks_the_configured_nameservers_and_adds_the_header() {
        use super::super::test_build::{edge_checks, session};
        let dns = test_peers::Dnsmasq::start(&[
            "--txt-record=fail.test,v=spf1 ip4:192.0.2.9 -all",
            "--txt-record=pass.test,v=spf1 ip4:192.0.2.0/24 -all",
        ]);
        let links = edge_checks(
            "[check.spf]\ntype = \"spf\"\nfail = { code = 550, message = \"5.7.1 Access denied: {reason}\" }",
            "[\"spf\"]",
            dns.addr(),
        );
        let mail = async |ip: &str, sender: &str| {
            let mut reply = slimta::Reply::new(250, "2.1.0", "ok");
            links[0]
                .mail_boxed(
                    &mut reply,
                    &session(ip),
                    sender,
                    &slimta::smtp::MailParams::default(),
                )
                .await;
            String::from_utf8(reply.to_bytes()).unwrap()
        };
        assert_eq!(
            mail("192.0.2.1", "a@fail.test").await,
            "550 5.7.1 Access denied: domain of a@fail.test does not designate 192.0.2.1 as permitted sender\r\n"
        );
        // Loopback is trusted.
        assert_eq!(mail("127.0.0.1", "a@fail.test").await, "250 2.1.0 ok\r\n");
        assert_eq!(mail("192.0.2.1", "a@pass.test").await, "250 2.1.0 ok\r\n");
        let mut envelope = slimta::Envelope::new(
            "a@pass.test",
            vec!["b@example.test".into()],
            b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        );
        let mut reply = slimta::Reply::new(250, "2.6.0", "ok");
        links[0]
            .have_data_boxed(&mut reply, &session("192.0.2.1"), &mut envelope)
            .await;
        let text = String::from_utf8(envelope.message).unwrap();
        assert!(
            text.starts_with("Received-SPF: pass (mx.test: domain of a@pass.test designates 192.0.2.1 as permitted sender)\r\n\treceiver=mx.test;"),
            "{text}"
        );
    }
}
