//! `type = "dkim_sign"`: DKIM-signs mail from the configured domains
//! (`slimta::policy::dkim_sign`).
//!
//! ```toml
//! [policy.sign]
//! type = "dkim_sign"
//! domain = "example.test"            # or a table, see below
//! selector = "s1"
//! key = "/etc/slimta/dkim/s1.key"    # PEM: RSA (2048+ bits) or Ed25519
//! headers = ["From", "To", "Subject"]  # default: the library's DEFAULT_HEADERS
//! canonicalization = "relaxed/relaxed" # the default
//! only_authenticated = true            # the default
//! ```
//!
//! Several domains: `domain = { "example.test" = { selector = "s1", key =
//! "..." }, "example.org" = { selector = "s2", key = "..." } }`, with no
//! top-level `selector`/`key` then.
//!
//! Decisions:
//! - Key files are read, parsed and test-signed when the configuration is
//!   read, so `--check-config` reports a missing, unreadable, malformed or
//!   weak key (RSA under 2048 bits) with its key path. A key takes effect
//!   on restart: SIGHUP re-reads the files and, as for any queue setting,
//!   logs a changed policy as needing a restart (the section's summary
//!   names each key's public half, so a rotated key counts as a change).
//! - `only_authenticated` defaults to true: an MTA that also takes inbound
//!   mail must not sign what strangers send claiming a local domain. Turn it
//!   off only on a queue that takes nothing but trusted submissions.
//! - Either stage: in `policies` the stored copy is signed (once); in
//!   `relay_policies` each attempt is signed afresh. List it after every
//!   policy that changes the message.

use std::collections::BTreeMap;
use std::sync::Arc;

use slimta::policy::dkim_key::DkimKey;
use slimta::policy::dkim_sign::{Canonicalization, DkimSign, is_valid_selector};
use slimta::policy::{DynQueuePolicy, DynRelayPolicy};
use toml::Value;

use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{
    Errors, Section, boolean, check_domain, expected, non_empty_string, string,
};

#[derive(Debug)]
struct Settings {
    policy: DkimSign,
}

impl PolicySettings for Settings {
    fn queue_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(self.policy.clone()))
    }

    fn relay_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynRelayPolicy>> {
        Some(Arc::new(self.policy.clone()))
    }
}

/// A selector: one DNS label.
fn selector(value: &Value) -> Result<String, String> {
    let s = non_empty_string(value)?;
    if is_valid_selector(&s) {
        Ok(s)
    } else {
        Err(format!(
            "invalid selector \"{s}\" (letters, digits, '-' and '.')"
        ))
    }
}

/// A key file, read and checked now.
fn key_file(value: &Value) -> Result<DkimKey, String> {
    let path = non_empty_string(value)?;
    DkimKey::load(&path).map_err(|e| format!("{path}: {e}"))
}

fn header_name(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        Ok(s)
    } else {
        Err(format!("invalid header field name \"{s}\""))
    }
}

fn canonicalization(value: &Value) -> Result<(Canonicalization, Canonicalization), String> {
    let s = string(value)?;
    Canonicalization::parse_pair(&s).ok_or_else(|| {
        format!("invalid canonicalization \"{s}\" (expected HEADER/BODY, each \"relaxed\" or \"simple\")")
    })
}

/// One domain's `{ selector, key }`.
fn domain_entry(path: &str, value: &Value, errors: &mut Errors) -> Option<(String, DkimKey)> {
    let Value::Table(table) = value else {
        errors.push(path, expected("a table { selector, key }", value));
        return None;
    };
    let mut s = Section::new(path.to_owned(), table);
    let selector = s.required(errors, "selector", selector);
    let key = s.required(errors, "key", key_file);
    s.finish(errors, &[], None);
    Some((selector?, key?))
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Arc<dyn PolicySettings>> {
    let mut domains: BTreeMap<String, (String, DkimKey)> = BTreeMap::new();
    let mut ok = true;
    match s.take("domain") {
        None => {
            s.required(errors, "domain", string);
            let _ = (s.take("selector"), s.take("key"));
            ok = false;
        }
        Some(Value::Table(table)) => {
            for key in ["selector", "key"] {
                if s.table.contains_key(key) {
                    errors.push(
                        s.key_path(key),
                        "with a table of domains, each domain has its own selector and key",
                    );
                    ok = false;
                }
            }
            let _ = (s.take("selector"), s.take("key"));
            if table.is_empty() {
                errors.push(s.key_path("domain"), "names no domain");
                ok = false;
            }
            for (name, entry) in table {
                let path = s.key_path(&format!("domain.\"{name}\""));
                let domain = match check_domain(name) {
                    Ok(d) => d,
                    Err(why) => {
                        errors.push(path, format!("invalid domain \"{name}\": {why}"));
                        ok = false;
                        continue;
                    }
                };
                match domain_entry(&path, entry, errors) {
                    Some(signer) => {
                        domains.insert(domain, signer);
                    }
                    None => ok = false,
                }
            }
        }
        Some(value) => {
            let domain = match string(value) {
                Ok(name) => {
                    check_domain(&name).map_err(|why| format!("invalid domain \"{name}\": {why}"))
                }
                Err(_) => Err(expected("a domain or a table of domains", value)),
            };
            let selector = s.required(errors, "selector", selector);
            let key = s.required(errors, "key", key_file);
            match (domain, selector, key) {
                (Ok(domain), Some(selector), Some(key)) => {
                    domains.insert(domain, (selector, key));
                }
                (Err(message), _, _) => {
                    errors.push(s.key_path("domain"), message);
                    ok = false;
                }
                _ => ok = false,
            }
        }
    }
    let headers = s.list(errors, "headers", header_name);
    if matches!(s.table.get("headers"), Some(Value::Array(a)) if a.is_empty()) {
        errors.push(s.key_path("headers"), "must name at least From");
    }
    let canon = s.or(
        errors,
        "canonicalization",
        (Canonicalization::Relaxed, Canonicalization::Relaxed),
        canonicalization,
    );
    let only_authenticated = s.or(errors, "only_authenticated", true, boolean);
    if !ok {
        return None;
    }
    let mut policy = DkimSign::new()
        .canonicalization(canon.0, canon.1)
        .only_authenticated(only_authenticated);
    if let Some(headers) = headers {
        policy = policy.headers(headers);
    }
    for (domain, (selector, key)) in domains {
        policy = policy.domain(&domain, &selector, key);
    }
    Some(Arc::new(Settings { policy }))
}

pub(super) const DKIM_SIGN: PolicyKind = PolicyKind {
    name: "dkim_sign",
    stages: &[Stage::Queue, Stage::Relay],
    bare: false,
    read: Some(read),
};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use slimta::policy::dkim_key::DkimKey;

    use crate::config::parse;

    const QUEUE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
        [queue.main]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"sign\"]\n\
        [relay.out]\ntype = \"blackhole\"\n";

    fn settings(section: &str) -> Result<String, Vec<String>> {
        let text = format!("{QUEUE}[policy.sign]\ntype = \"dkim_sign\"\n{section}");
        parse(&text)
            .map(|c| format!("{:?}", c.policies["sign"].settings))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    fn write_key(dir: &Path, name: &str, ed25519: bool) -> String {
        let (_, pem) = if ed25519 {
            DkimKey::generate_ed25519().unwrap()
        } else {
            DkimKey::generate_rsa(2048).unwrap()
        };
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    #[test]
    fn reads_one_domain_with_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let key = write_key(dir.path(), "s1.key", true);
        let got = settings(&format!(
            "domain = \"Example.Test\"\nselector = \"s1\"\nkey = \"{key}\"\n"
        ))
        .unwrap();
        assert!(
            got.starts_with("Settings { policy: DkimSign { domains: [\"s1._domainkey.example.test DkimKey { algorithm: Ed25519"),
            "{got}"
        );
        assert!(
            got.contains("canonicalization: (Relaxed, Relaxed), only_authenticated: true"),
            "{got}"
        );
        assert!(
            got.contains("\"Content-Type\""),
            "the default headers: {got}"
        );
    }

    #[test]
    fn reads_a_table_of_domains_and_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_key(dir.path(), "a.key", true);
        let b = write_key(dir.path(), "b.key", false);
        let got = settings(&format!(
            "domain = {{ \"a.test\" = {{ selector = \"s1\", key = \"{a}\" }}, \"b.test\" = {{ selector = \"rsa\", key = \"{b}\" }} }}\n\
             headers = [\"From\", \"Subject\"]\ncanonicalization = \"relaxed/simple\"\nonly_authenticated = false\n"
        ))
        .unwrap();
        assert!(
            got.contains("\"s1._domainkey.a.test DkimKey { algorithm: Ed25519"),
            "{got}"
        );
        assert!(
            got.contains("\"rsa._domainkey.b.test DkimKey { algorithm: Rsa { bits: 2048 }"),
            "{got}"
        );
        assert!(got.contains("headers: [\"From\", \"Subject\"], canonicalization: (Relaxed, Simple), only_authenticated: false"), "{got}");
    }

    #[test]
    fn runs_per_attempt_too() {
        let dir = tempfile::tempdir().unwrap();
        let key = write_key(dir.path(), "s1.key", true);
        let text = QUEUE.replace("policies = [\"sign\"]", "relay_policies = [\"sign\"]")
            + &format!(
                "[policy.sign]\ntype = \"dkim_sign\"\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{key}\"\n"
            );
        let config = parse(&text).unwrap();
        assert_eq!(config.queues["main"].relay_policies[0].name, "sign");
    }

    #[test]
    fn bad_keys_and_values_are_reported_with_their_paths() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key").display().to_string();
        let errors = settings(&format!(
            "domain = \"example.test\"\nselector = \"s 1\"\nkey = \"{missing}\"\n\
             canonicalization = \"loose\"\nheaders = [\"Bad:Name\"]\n"
        ))
        .unwrap_err();
        let has = |errors: &[String], start: &str, part: &str| {
            errors
                .iter()
                .any(|e| e.starts_with(start) && e.contains(part))
        };
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            has(
                &errors,
                "policy.sign.selector: ",
                "invalid selector \"s 1\""
            ),
            "{errors:?}"
        );
        assert!(
            has(
                &errors,
                &format!("policy.sign.key: {missing}: "),
                "cannot read the key"
            ),
            "{errors:?}"
        );
        assert!(
            has(
                &errors,
                "policy.sign.headers[0]: ",
                "invalid header field name"
            ),
            "{errors:?}"
        );
        assert!(
            has(
                &errors,
                "policy.sign.canonicalization: ",
                "invalid canonicalization \"loose\""
            ),
            "{errors:?}"
        );

        let weak = dir.path().join("weak.key");
        let status = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&weak)
            .arg("1024")
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let errors = settings(&format!(
            "domain = {{ \"example.test\" = {{ selector = \"s1\", key = \"{}\" }} }}\nselector = \"s1\"\n",
            weak.display()
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            has(
                &errors,
                "policy.sign.domain.\"example.test\".key: ",
                "RSA key under 2048 bits"
            ),
            "{errors:?}"
        );
        assert!(
            has(&errors, "policy.sign.selector: ", "with a table of domains"),
            "{errors:?}"
        );

        assert_eq!(
            settings("selector = \"s1\"\n").unwrap_err(),
            ["policy.sign.domain: missing required key",]
        );
    }
}
