//! The `Authenticate` queue policy against real peers: mail signed offline
//! by OpenDKIM (`opendkim-testmsg`, keys from `opendkim-genkey`), SPF, DKIM
//! and DMARC records served by a real dnsmasq, and refusals through a real
//! SMTP edge and queue.

#![cfg(feature = "auth")]

mod scanner_support;

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use scanner_support::{Mta, header};
use slimta::dns::Resolver;
use slimta::policy::QueuePolicy;
use slimta::policy::arc_seal::ArcSeal;
use slimta::policy::authenticate::Authenticate;
use slimta::{ClientInfo, Envelope};
use test_peers::{Dnsmasq, require};

const ID: &str = "mx.example.test";

/// An RSA key made by `opendkim-genkey` for `selector._domainkey.example.test`.
struct DkimKey {
    dir: tempfile::TempDir,
    selector: String,
    /// The record's `p=` value.
    public: String,
}

impl DkimKey {
    fn generate(selector: &str) -> Self {
        let genkey = require("opendkim-genkey", "opendkim-tools");
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(genkey)
            .args(["--bits=2048", "--domain=example.test"])
            .arg(format!("--selector={selector}"))
            .arg(format!("--directory={}", dir.path().display()))
            .status()
            .unwrap();
        assert!(status.success(), "opendkim-genkey failed");
        let zone = std::fs::read_to_string(dir.path().join(format!("{selector}.txt"))).unwrap();
        // The quoted strings of the zone stub, joined: "v=DKIM1; h=sha256; k=rsa; p=...".
        let record: String = zone.split('"').skip(1).step_by(2).collect();
        let public = record.split("p=").nth(1).unwrap().trim().to_owned();
        Self {
            dir,
            selector: selector.to_owned(),
            public,
        }
    }

    fn private(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("{}.private", self.selector))
    }

    /// The dnsmasq flag publishing the key (no `h=`: opendkim-testmsg
    /// signs rsa-sha1, which the stub's `h=sha256` would forbid); strings
    /// of at most 255 characters.
    fn record(&self) -> String {
        let text = format!("v=DKIM1; k=rsa; p={}", self.public);
        let parts: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        format!(
            "--txt-record={}._domainkey.example.test,{}",
            self.selector,
            parts.join(",")
        )
    }

    /// `message` signed by OpenDKIM as example.test.
    fn sign(&self, message: &str) -> String {
        let testmsg = require("opendkim-testmsg", "opendkim-tools");
        let mut child = Command::new(testmsg)
            .args(["-C", "-d", "example.test", "-s", &self.selector, "-k"])
            .arg(self.private())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "opendkim-testmsg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let signed = String::from_utf8(out.stdout).unwrap();
        assert!(signed.starts_with("DKIM-Signature:"), "{signed}");
        signed
    }
}

fn message(from: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: b@example.test\r\nSubject: lunch\r\n\
         Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-Id: <lunch@example.test>\r\n\r\n\
         Shall we have lunch on Friday at noon?\r\n"
    )
}

/// The records every test serves: SPF for example.test (127.0.0.1 only),
/// other.test (loopback, not aligned with example.test), reject.test (no
/// mail allowed); DMARC p=reject for example.test, p=quarantine for q.test.
fn dns(key: &DkimKey, extra: &[&str]) -> Dnsmasq {
    let mut records = vec![
        "--txt-record=example.test,v=spf1 ip4:127.0.0.1 -all".to_owned(),
        "--txt-record=other.test,v=spf1 ip4:127.0.0.0/8 -all".to_owned(),
        "--txt-record=q.test,v=spf1 ip4:192.0.2.99 -all".to_owned(),
        "--txt-record=_dmarc.example.test,v=DMARC1; p=reject".to_owned(),
        "--txt-record=_dmarc.q.test,v=DMARC1; p=quarantine".to_owned(),
        key.record(),
    ];
    records.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    Dnsmasq::start(&refs)
}

fn envelope(sender: &str, ip: &str, message: &str) -> Envelope {
    let mut e = Envelope::new(
        sender,
        vec!["b@example.test".into()],
        message.as_bytes().to_vec(),
    );
    e.client = ClientInfo {
        ip: Some(ip.parse::<IpAddr>().unwrap()),
        helo: Some("client.example.test".into()),
        ..ClientInfo::default()
    };
    e
}

/// The methods of our Authentication-Results field (unfolded), after the
/// authserv-id.
fn methods(message: &str) -> Vec<String> {
    let value = header(message, "Authentication-Results").expect("no Authentication-Results");
    let mut parts = value.split(';').map(|s| s.trim().to_owned());
    assert_eq!(parts.next().as_deref(), Some(ID), "{value}");
    parts.collect()
}

/// The first 8 characters of the signature's b= tag.
fn b_prefix(signed: &str) -> String {
    let sig = header(signed, "DKIM-Signature").unwrap();
    let b: String = sig
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("b="))
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    b.chars().take(8).collect()
}

async fn verify(policy: &Authenticate, envelope: Envelope) -> String {
    let mut out = policy.apply(envelope).await.expect("accepted");
    assert_eq!(out.len(), 1);
    String::from_utf8(out.remove(0).message).unwrap()
}

/// As RFC 8601 wants a value: quoted when it holds a tspecial (RFC 2045;
/// of base64's characters, `/` and `=`; `+` is a token character).
fn quoted_if_needed(b: &str) -> String {
    if b.contains(['/', '=']) {
        format!("\"{b}\"")
    } else {
        b.to_owned()
    }
}

#[tokio::test]
async fn opendkim_signed_mail_passes_dkim_spf_and_dmarc() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let policy = Authenticate::new(&resolver, ID).dmarc_reject(true);
    let signed = key.sign(&message("alice@example.test"));
    let got = verify(
        &policy,
        envelope("alice@example.test", "127.0.0.1", &signed),
    )
    .await;
    assert!(got.starts_with("Authentication-Results: "), "{got}");
    let b = quoted_if_needed(&b_prefix(&signed));
    assert_eq!(
        methods(&got),
        [
            "spf=pass smtp.mailfrom=alice@example.test".to_owned(),
            format!("dkim=pass header.d=example.test header.s=rsa header.b={b}"),
            "dmarc=pass (p=reject dis=none) header.from=example.test".to_owned(),
            "arc=none".to_owned(),
        ],
        "{got}"
    );
    // The message below our field is the signed one, unchanged.
    assert!(got.ends_with(&signed));
}

#[tokio::test]
async fn a_tampered_body_fails_dkim_and_dmarc_still_passes_on_aligned_spf() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let policy = Authenticate::new(&resolver, ID).dmarc_reject(true);
    let signed = key.sign(&message("alice@example.test"));
    let tampered = signed.replace("noon", "one");
    let got = verify(
        &policy,
        envelope("alice@example.test", "127.0.0.1", &tampered),
    )
    .await;
    let m = methods(&got);
    assert_eq!(m[0], "spf=pass smtp.mailfrom=alice@example.test");
    assert!(m[1].starts_with("dkim=fail reason="), "{got}");
    assert!(
        m[1].ends_with(&format!(
            "header.d=example.test header.s=rsa header.b={}",
            quoted_if_needed(&b_prefix(&signed))
        )),
        "{got}"
    );
    assert_eq!(
        m[2],
        "dmarc=pass (p=reject dis=none) header.from=example.test"
    );
}

#[tokio::test]
async fn spf_pass_and_fail_come_from_the_records() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let policy = Authenticate::new(&resolver, ID);
    let plain = message("alice@other.test");
    let pass = verify(&policy, envelope("alice@other.test", "127.0.0.9", &plain)).await;
    assert_eq!(methods(&pass)[0], "spf=pass smtp.mailfrom=alice@other.test");
    let fail = verify(&policy, envelope("alice@other.test", "192.0.2.1", &plain)).await;
    assert_eq!(methods(&fail)[0], "spf=fail smtp.mailfrom=alice@other.test");
    assert_eq!(methods(&fail)[1], "dkim=none");
    // No DMARC record for other.test.
    assert_eq!(methods(&fail)[2], "dmarc=none header.from=other.test");
    // The null sender is checked by its HELO name.
    let bounce = verify(&policy, envelope("", "127.0.0.1", &plain)).await;
    assert_eq!(
        methods(&bounce)[0],
        "spf=none smtp.helo=client.example.test"
    );
}

#[tokio::test]
async fn dmarc_fail_with_p_reject_is_refused_at_the_end_of_data_and_nothing_is_queued() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let mta = Mta::start(Authenticate::new(&resolver, ID).dmarc_reject(true)).await;
    // MAIL FROM a@x.test (no SPF record, not aligned), From: example.test,
    // signed but tampered: nothing passes aligned.
    let signed = key.sign(&message("alice@example.test"));
    let reply = mta.send(&signed.replace("noon", "one")).await;
    assert_eq!(
        reply,
        "550 5.7.1 Message refused: DMARC policy of example.test (p=reject) failed"
    );
    assert!(mta.queued().await.is_empty());
    // The intact signature passes aligned, whatever the envelope sender.
    let reply = mta.send(&signed).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    let m = methods(&queued[0]);
    assert_eq!(m[0], "spf=none smtp.mailfrom=a@x.test");
    assert!(m[1].starts_with("dkim=pass header.d=example.test"), "{m:?}");
    assert_eq!(
        m[2],
        "dmarc=pass (p=reject dis=none) header.from=example.test"
    );
}

#[tokio::test]
async fn without_dmarc_reject_a_p_reject_failure_is_only_marked() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let mta = Mta::start(Authenticate::new(&resolver, ID)).await;
    let reply = mta.send(&message("alice@example.test")).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    assert_eq!(
        methods(&queued[0])[2],
        "dmarc=fail (p=reject dis=quarantine) header.from=example.test"
    );
}

#[tokio::test]
async fn dmarc_fail_with_p_quarantine_is_accepted_and_marked_for_quarantine() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let mta = Mta::start(Authenticate::new(&resolver, ID).dmarc_reject(true)).await;
    let reply = mta.send(&message("alice@q.test")).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        methods(&queued[0]),
        [
            "spf=none smtp.mailfrom=a@x.test",
            "dkim=none",
            "dmarc=fail (p=quarantine dis=quarantine) header.from=q.test",
            "arc=none",
        ]
    );
}

#[tokio::test]
async fn a_forged_field_with_our_authserv_id_is_replaced_and_others_kept() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let mta = Mta::start(Authenticate::new(&resolver, ID)).await;
    let forged = format!(
        "Authentication-Results: MX.example.test;\r\n\tdkim=pass header.d=example.test;\r\n\tdmarc=pass\r\n\
         Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=a@x.test\r\n{}",
        message("alice@example.test")
    );
    let reply = mta.send(&forged).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = &mta.queued().await[0];
    assert_eq!(
        queued.matches("Authentication-Results:").count(),
        2,
        "{queued}"
    );
    assert!(!queued.contains("MX.example.test"), "{queued}");
    assert!(queued.contains("Authentication-Results: relay.other.test; spf=pass"));
    assert_eq!(methods(queued)[1], "dkim=none");
}

#[tokio::test]
async fn dns_errors_are_temperror_and_never_refuse() {
    // Nothing answers on this port: every lookup fails.
    let closed = format!("127.0.0.1:{}", test_peers::free_port())
        .parse()
        .unwrap();
    let resolver = Resolver::new(&[closed]).unwrap();
    let policy = Authenticate::new(&resolver, ID)
        .dmarc_reject(true)
        .timeout(std::time::Duration::from_secs(3));
    let key = DkimKey::generate("rsa");
    let signed = key.sign(&message("alice@example.test"));
    let got = verify(
        &policy,
        envelope("alice@example.test", "127.0.0.1", &signed),
    )
    .await;
    let m = methods(&got);
    assert!(m[0].starts_with("spf=temperror"), "{m:?}");
    assert!(m[1].starts_with("dkim=temperror"), "{m:?}");
    assert!(m[2].starts_with("dmarc=temperror"), "{m:?}");
}

#[tokio::test]
async fn authenticated_clients_are_not_verified_unless_asked() {
    let key = DkimKey::generate("rsa");
    let dns = dns(&key, &[]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let policy = Authenticate::new(&resolver, ID).dmarc_reject(true);
    let forged = format!(
        "Authentication-Results: mx.example.test; dkim=pass\r\n{}",
        message("alice@example.test")
    );
    let mut e = envelope("alice@example.test", "192.0.2.1", &forged);
    e.client.auth = Some("alice".into());
    let got = verify(&policy, e.clone()).await;
    assert_eq!(got, message("alice@example.test"));
    // Asked to, the same message fails SPF and DMARC and is refused.
    let refused = policy
        .clone()
        .verify_authenticated(true)
        .apply(e)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), 550);
}

#[tokio::test]
async fn arc_sealed_mail_verifies_at_the_next_hop() {
    let key = DkimKey::generate("rsa");
    let arc_key = DkimKey::generate("arc1");
    let dns = dns(&key, &[&arc_key.record()]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let seal = ArcSeal::from_file("example.test", "arc1", &arc_key.private()).unwrap();
    assert_eq!(seal.algorithm(), "rsa-sha256");
    let sealer = Authenticate::new(&resolver, ID).arc_seal(seal);
    let signed = key.sign(&message("alice@example.test"));
    let sealed = verify(
        &sealer,
        envelope("alice@example.test", "127.0.0.1", &signed),
    )
    .await;
    assert!(
        sealed.starts_with("ARC-Seal: i=1; a=rsa-sha256; "),
        "{sealed}"
    );
    for name in ["ARC-Message-Signature", "ARC-Authentication-Results"] {
        assert!(header(&sealed, name).is_some(), "{name} missing: {sealed}");
    }
    assert!(
        header(&sealed, "ARC-Authentication-Results")
            .unwrap()
            .starts_with("i=1; mx.example.test;"),
        "{sealed}"
    );
    // The next hop (another authserv-id) finds a valid chain.
    let next = Authenticate::new(&resolver, "mx2.example.test");
    let mut got = next
        .apply(envelope("alice@example.test", "127.0.0.1", &sealed))
        .await
        .unwrap();
    let got = String::from_utf8(got.remove(0).message).unwrap();
    let value = header(&got, "Authentication-Results").unwrap();
    assert!(value.starts_with("mx2.example.test;"), "{value}");
    assert!(value.ends_with("arc=pass"), "{value}");
}

/// Signs with a fresh Ed25519 key in dkimpy (PyPI, in a venv): the
/// record's `p=` value and the signed message.
fn dkimpy_ed25519_sign(message: &str, selector: &str) -> (String, String) {
    let python = test_peers::python_with("dkimpy[ed25519]==1.1.8", "dkim");
    let script = r#"
import base64, sys, dkim, nacl.signing
key = nacl.signing.SigningKey.generate()
message = sys.stdin.buffer.read()
sig = dkim.sign(message, sys.argv[1].encode(), b"example.test",
                base64.b64encode(bytes(key)), signature_algorithm=b"ed25519-sha256",
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
sys.stdout.buffer.write(base64.b64encode(bytes(key.verify_key)) + b"\n" + sig + message)
"#;
    let mut child = Command::new(python)
        .args(["-c", script, selector])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dkimpy failed");
    let out = String::from_utf8(out.stdout).unwrap();
    let (public, signed) = out.split_once('\n').unwrap();
    (public.to_owned(), signed.to_owned())
}

#[tokio::test]
async fn dkimpy_ed25519_signatures_verify_beside_opendkims_rsa() {
    let key = DkimKey::generate("rsa");
    let rsa_signed = key.sign(&message("alice@example.test"));
    let (public, both) = dkimpy_ed25519_sign(&rsa_signed, "ed");
    let ed_record =
        format!("--txt-record=ed._domainkey.example.test,v=DKIM1; k=ed25519; p={public}");
    let dns = dns(&key, &[&ed_record]);
    let resolver = Resolver::new(&[dns.addr()]).unwrap();
    let policy = Authenticate::new(&resolver, ID).dmarc_reject(true);
    // From another network: SPF fails, so DMARC rests on DKIM alone.
    let got = verify(&policy, envelope("alice@example.test", "192.0.2.1", &both)).await;
    let m = methods(&got);
    assert_eq!(m[0], "spf=fail smtp.mailfrom=alice@example.test");
    // One entry per signature, in message order: dkimpy's on top.
    assert!(
        m[1].starts_with("dkim=pass header.d=example.test header.s=ed "),
        "{m:?}"
    );
    assert!(
        m[2].starts_with("dkim=pass header.d=example.test header.s=rsa "),
        "{m:?}"
    );
    assert_eq!(
        m[3],
        "dmarc=pass (p=reject dis=none) header.from=example.test"
    );
    // A tampered body breaks both; with SPF failing DMARC fails: refused.
    let refused = policy
        .apply(envelope(
            "alice@example.test",
            "192.0.2.1",
            &both.replace("noon", "one"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        String::from_utf8(refused.to_bytes()).unwrap(),
        "550 5.7.1 Message refused: DMARC policy of example.test (p=reject) failed\r\n"
    );
}

#[test]
fn a_missing_arc_key_is_a_clear_error() {
    let err =
        ArcSeal::from_file("example.test", "arc1", Path::new("/nonexistent/arc.pem")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/arc.pem"),
        "{err}"
    );
}
