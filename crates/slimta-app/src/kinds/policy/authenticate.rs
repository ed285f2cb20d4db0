//! `type = "authenticate"`: the inbound verifier of the library
//! (`slimta::policy::authenticate`): SPF, DKIM, DMARC and ARC in one
//! `Authentication-Results:` field.
//!
//! ```toml
//! [policy.verify]
//! type = "authenticate"
//! authserv_id = "mx.example.test"   # default: process.hostname
//! dmarc_reject = true               # default false: p=reject failures only marked
//! timeout = "10s"                   # per method; past it: temperror
//! verify_authenticated = false      # default: submission clients are not verified
//! arc_seal = { domain = "example.test", selector = "arc1", key = "/etc/slimta/arc1.pem" }
//! ```
//!
//! Decisions:
//! - A queue policy only: the verdict belongs in the stored message, and a
//!   DMARC refusal must come before anything is stored.
//! - `dmarc_reject` defaults to off, as OpenDMARC's `RejectFailures` does:
//!   turning on refusals is the operator's explicit choice.
//! - The ARC key is read when the configuration is read, so
//!   `--check-config` reports a missing or unreadable key. A changed key
//!   file with an unchanged section is not re-read on SIGHUP.
//! - The lookups go to `[dns] nameservers`, like the SPF check's. If the
//!   system resolver cannot be set up (no `/etc/resolv.conf`), the policy
//!   logs an error and asks 127.0.0.1:53: every method is then
//!   `temperror`, which never refuses mail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slimta::policy::DynQueuePolicy;
use slimta::policy::arc_seal::ArcSeal;
use slimta::policy::authenticate::{Authenticate, DEFAULT_TIMEOUT};

use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{
    Errors, Section, boolean, domain, non_empty_string, positive_duration,
};

#[derive(Debug)]
struct Settings {
    authserv_id: Option<String>,
    dmarc_reject: bool,
    timeout: Duration,
    verify_authenticated: bool,
    arc_seal: Option<ArcSeal>,
}

impl PolicySettings for Settings {
    fn queue_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        let resolver = slimta::dns::Resolver::new(&context.dns.nameservers).or_else(|e| {
            tracing::error!(error = %e.message(),
                "authenticate: cannot set up the DNS resolver; asking 127.0.0.1:53");
            let local: SocketAddr = "127.0.0.1:53".parse().expect("a valid address");
            slimta::dns::Resolver::new(&[local])
        });
        let resolver = resolver.ok()?;
        let id = self.authserv_id.as_deref().unwrap_or(context.hostname);
        let mut policy = Authenticate::new(&resolver, id)
            .dmarc_reject(self.dmarc_reject)
            .timeout(self.timeout)
            .verify_authenticated(self.verify_authenticated);
        if let Some(seal) = &self.arc_seal {
            policy = policy.arc_seal(seal.clone());
        }
        Some(Arc::new(policy))
    }
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Arc<dyn PolicySettings>> {
    let mut ok = true;
    let authserv_id = s.opt(errors, "authserv_id", domain);
    ok &= authserv_id.is_some() || !s.table.contains_key("authserv_id");
    let dmarc_reject = s.opt(errors, "dmarc_reject", boolean);
    ok &= dmarc_reject.is_some() || !s.table.contains_key("dmarc_reject");
    let timeout = s.opt(errors, "timeout", positive_duration);
    ok &= timeout.is_some() || !s.table.contains_key("timeout");
    let verify_authenticated = s.opt(errors, "verify_authenticated", boolean);
    ok &= verify_authenticated.is_some() || !s.table.contains_key("verify_authenticated");
    let arc_seal = match s.table(errors, "arc_seal") {
        Some(mut t) => {
            let seal_domain = t.required(errors, "domain", domain);
            let selector = t.required(errors, "selector", non_empty_string);
            let key = t
                .required(errors, "key", non_empty_string)
                .map(PathBuf::from);
            let path = t.key_path("key");
            t.finish(errors, &[], None);
            match (seal_domain, selector, key) {
                (Some(d), Some(sel), Some(key)) => match ArcSeal::from_file(&d, &sel, &key) {
                    Ok(seal) => Some(seal),
                    Err(e) => {
                        errors.push(path, e.to_string());
                        ok = false;
                        None
                    }
                },
                _ => {
                    ok = false;
                    None
                }
            }
        }
        None => {
            ok &= !s.table.contains_key("arc_seal");
            None
        }
    };
    ok.then(|| {
        Arc::new(Settings {
            authserv_id,
            dmarc_reject: dmarc_reject.unwrap_or(false),
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            verify_authenticated: verify_authenticated.unwrap_or(false),
            arc_seal,
        }) as Arc<dyn PolicySettings>
    })
}

pub(super) const AUTHENTICATE: PolicyKind = PolicyKind {
    name: "authenticate",
    stages: &[Stage::Queue],
    bare: false,
    read: Some(read),
};

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::{Config, DnsConfig};
    use crate::file_reloads::FileReloads;

    const QUEUE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
        [queue.main]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"verify\"]\n\
        [relay.out]\ntype = \"blackhole\"\n";

    fn config(section: &str) -> Result<Config, Vec<String>> {
        let text = format!("{QUEUE}[policy.verify]\ntype = \"authenticate\"\n{section}");
        parse(&text).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    fn settings(section: &str) -> Result<String, Vec<String>> {
        config(section).map(|c| format!("{:?}", c.policies["verify"].settings))
    }

    fn ed25519_key(dir: &std::path::Path) -> std::path::PathBuf {
        let status = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(dir.join("arc.pem"))
            .status()
            .unwrap();
        assert!(status.success());
        dir.join("arc.pem")
    }

    #[test]
    fn reads_every_key_and_the_defaults() {
        assert_eq!(
            settings("").unwrap(),
            "Settings { authserv_id: None, dmarc_reject: false, timeout: 10s, verify_authenticated: false, arc_seal: None }"
        );
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_key(dir.path());
        assert_eq!(
            settings(&format!(
                "authserv_id = \"mx.example.test\"\ndmarc_reject = true\ntimeout = \"3s\"\n\
                 verify_authenticated = true\n\
                 arc_seal = {{ domain = \"example.test\", selector = \"arc1\", key = \"{}\" }}\n",
                key.display()
            ))
            .unwrap(),
            "Settings { authserv_id: Some(\"mx.example.test\"), dmarc_reject: true, timeout: 3s, verify_authenticated: true, \
             arc_seal: Some(ArcSeal { domain: \"example.test\", selector: \"arc1\", algorithm: \"ed25519-sha256\", .. }) }"
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_keys() {
        assert_eq!(
            settings(
                "authserv_id = \"not a name\"\ndmarc_reject = \"yes\"\ntimeout = \"0s\"\n\
                 verify_authenticated = 1\narc_seal = { domain = \"example.test\", key = \"/nonexistent/k.pem\", x = 1 }\n"
            )
            .unwrap_err(),
            [
                "policy.verify.authserv_id: invalid domain \"not a name\": only letters, digits, '-' and '_' are allowed in a label",
                "policy.verify.dmarc_reject: expected a boolean, found string",
                "policy.verify.timeout: must be longer than zero",
                "policy.verify.verify_authenticated: expected a boolean, found integer",
                "policy.verify.arc_seal.selector: missing required key",
                "policy.verify.arc_seal.x: unknown key (expected one of: domain, key, selector)",
            ]
        );
        assert_eq!(
            settings(
                "arc_seal = { domain = \"example.test\", selector = \"arc1\", key = \"/nonexistent/k.pem\" }\n"
            )
            .unwrap_err(),
            ["policy.verify.arc_seal.key: cannot read /nonexistent/k.pem: No such file or directory (os error 2)"]
        );
        assert_eq!(
            settings("arc_seal = true\n").unwrap_err(),
            ["policy.verify.arc_seal: expected a table, found boolean"]
        );
    }

    #[test]
    fn it_cannot_run_per_attempt() {
        let text = format!(
            "{}[policy.verify]\ntype = \"authenticate\"\n",
            QUEUE.replace("policies = [\"verify\"]", "relay_policies = [\"verify\"]")
        );
        let errors: Vec<String> = parse(&text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "queue.main.relay_policies[0]: policy \"verify\" (type \"authenticate\") cannot run in relay_policies; list it in policies"
            ]
        );
    }

    #[tokio::test]
    async fn the_built_policy_uses_the_hostname_and_the_configured_nameservers() {
        let dns =
            test_peers::Dnsmasq::start(&["--txt-record=pass.test,v=spf1 ip4:192.0.2.0/24 -all"]);
        let config = config("").unwrap();
        let files = FileReloads::default();
        let dns_config = DnsConfig {
            nameservers: vec![dns.addr()],
        };
        let context = super::BuildContext {
            hostname: "mx.test",
            dns: &dns_config,
            files: &files,
        };
        let policy = config.policies["verify"].queue_policy(&context);
        let mut envelope = slimta::Envelope::new(
            "a@pass.test",
            vec!["b@example.test".into()],
            b"From: a@pass.test\r\nSubject: x\r\n\r\nbody\r\n".to_vec(),
        );
        envelope.client.ip = Some("192.0.2.1".parse().unwrap());
        envelope.client.helo = Some("c.test".into());
        let out = policy.apply_boxed(envelope).await.unwrap();
        let text = String::from_utf8(out[0].message.clone()).unwrap();
        assert!(
            text.starts_with(
                "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@pass.test;\r\n\tdkim=none;\r\n\tdmarc=none header.from=pass.test;\r\n\tarc=none\r\n"
            ),
            "{text}"
        );
    }
}
