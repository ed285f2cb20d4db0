//! `DkimSign` against independent verifiers: dkimpy (RSA and Ed25519) and
//! OpenDKIM (RSA and Ed25519). Keys are made by `openssl`, and the published
//! records computed by `openssl` too (as peers.md shows), so neither the key
//! reading nor the record printing is checked only against itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use slimta::envelope::Envelope;
use slimta::policy::dkim_key::{DkimKey, KeyAlgorithm, KeyError};
use slimta::policy::dkim_sign::{Canonicalization, DkimSign};
use slimta::policy::{QueuePolicy, RelayPolicy};
use test_peers::{dkimpy_verify, opendkim_verify, require};

const MESSAGE: &[u8] = b"From: Alice Example <alice@example.test>\r\n\
To: bob@remote.test\r\n\
Subject: quarterly  figures\r\n\
Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <1@example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello Bob,  \r\n\
\r\n\
the figures are attached.\r\n\
\r\n\
\r\n";

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new(require("openssl", "openssl"))
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A key made by openssl in `dir`, and its DNS record computed by openssl.
fn openssl_key(dir: &Path, kind: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{kind}.key"));
    let p = path.to_str().unwrap();
    match kind {
        "rsa" => {
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                p,
            ]);
        }
        "rsa-pkcs1" => {
            openssl(&["genrsa", "-traditional", "-out", p, "2048"]);
        }
        "rsa-1024" => {
            openssl(&["genrsa", "-traditional", "-out", p, "1024"]);
        }
        "ed25519" => {
            openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
        }
        _ => unreachable!(),
    }
    let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    let record = if kind == "ed25519" {
        format!("v=DKIM1; k=ed25519; p={}", b64(&spki[spki.len() - 32..]))
    } else {
        format!("v=DKIM1; k=rsa; p={}", b64(&spki))
    };
    (path, record)
}

/// A verifier's verdict that the signature is bad (not that it could not
/// look, which would make a tampering test pass for the wrong reason).
fn refused(verdict: Result<(), String>) {
    let why = verdict.expect_err("the changed message must not verify");
    assert!(why.contains("fail"), "{why}");
}

fn envelope(message: &[u8], auth: Option<&str>) -> Envelope {
    let mut env = Envelope::new(
        "alice@example.test",
        vec!["bob@remote.test".into()],
        message.to_vec(),
    );
    env.client.auth = auth.map(str::to_owned);
    env
}

async fn sign_queued(policy: &DkimSign, env: Envelope) -> Vec<u8> {
    let mut out = QueuePolicy::apply(policy, env)
        .await
        .expect("queue policy never refuses");
    assert_eq!(out.len(), 1);
    out.remove(0).message
}

fn replace(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    assert!(text.contains(from));
    text.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn rsa_signatures_pass_dkimpy_and_opendkim_and_changes_fail_both() {
    let dir = tempfile::tempdir().unwrap();
    let (path, record) = openssl_key(dir.path(), "rsa");
    let key = DkimKey::load(&path).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
    assert_eq!(key.dns_record(), record, "our record is openssl's");
    let records = [("s1._domainkey.example.test", record.as_str())];
    let policy = DkimSign::new().domain("example.test", "s1", key);

    let signed = sign_queued(&policy, envelope(MESSAGE, None)).await;
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256; s=s1; d=example.test;"));
    assert!(signed.ends_with(MESSAGE));
    dkimpy_verify(&signed, &records).unwrap();
    opendkim_verify(&signed, &records).unwrap();

    let body_changed = replace(&signed, "attached", "lost");
    refused(dkimpy_verify(&body_changed, &records));
    refused(opendkim_verify(&body_changed, &records));
    let subject_changed = replace(&signed, "quarterly", "annual");
    refused(dkimpy_verify(&subject_changed, &records));
    refused(opendkim_verify(&subject_changed, &records));
    // From is oversigned: a second From: on top breaks the signature.
    let mut second_from = b"From: mallory@evil.test\r\n".to_vec();
    second_from.extend_from_slice(&signed);
    let fields = String::from_utf8_lossy(&signed[..signed.len() - MESSAGE.len()]).into_owned();
    let unfolded = fields.replace("\r\n\t", "").replace(' ', "");
    let h = unfolded
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let froms = h
        .split(':')
        .filter(|n| n.eq_ignore_ascii_case("from"))
        .count();
    assert_eq!(froms, 2, "From is named twice in h=: {h}");
    refused(dkimpy_verify(&second_from, &records));
    refused(opendkim_verify(&second_from, &records));
}

#[tokio::test]
async fn pkcs1_rsa_and_simple_canonicalization_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (path, record) = openssl_key(dir.path(), "rsa-pkcs1");
    let key = DkimKey::load(&path).unwrap();
    let records = [("legacy._domainkey.example.test", record.as_str())];
    let policy = DkimSign::new()
        .domain("example.test", "legacy", key)
        .canonicalization(Canonicalization::Simple, Canonicalization::Simple)
        .headers(["from", "to", "subject"]);
    let signed = sign_queued(&policy, envelope(MESSAGE, None)).await;
    assert!(String::from_utf8_lossy(&signed).contains("c=simple/simple"));
    dkimpy_verify(&signed, &records).unwrap();
    opendkim_verify(&signed, &records).unwrap();
    // Simple body canonicalization: even whitespace counts.
    let respaced = replace(&signed, "Hello Bob,  ", "Hello Bob, ");
    refused(dkimpy_verify(&respaced, &records));
    refused(opendkim_verify(&respaced, &records));
}

#[tokio::test]
async fn ed25519_signatures_pass_dkimpy_and_opendkim() {
    let dir = tempfile::tempdir().unwrap();
    let (path, record) = openssl_key(dir.path(), "ed25519");
    let key = DkimKey::load(&path).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
    assert_eq!(key.dns_record(), record);
    let records = [("ed._domainkey.example.test", record.as_str())];
    let policy = DkimSign::new().domain("example.test", "ed", key);

    // As a relay policy: the attempt's copy is signed in place.
    let mut env = envelope(MESSAGE, None);
    RelayPolicy::apply(&policy, &mut env).await.unwrap();
    assert!(
        env.message
            .starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    );
    dkimpy_verify(&env.message, &records).unwrap();
    opendkim_verify(&env.message, &records).unwrap();

    let changed = replace(&env.message, "figures are", "figures were");
    refused(dkimpy_verify(&changed, &records));
    refused(opendkim_verify(&changed, &records));
}

#[tokio::test]
async fn only_authenticated_clients_and_keyed_domains_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, record) = openssl_key(dir.path(), "ed25519");
    let policy = DkimSign::new()
        .domain("example.test", "s1", DkimKey::load(&path).unwrap())
        .only_authenticated(true);
    let records = [("s1._domainkey.example.test", record.as_str())];

    let inbound = sign_queued(&policy, envelope(MESSAGE, None)).await;
    assert_eq!(inbound, MESSAGE, "unauthenticated mail passes unchanged");

    let submitted = sign_queued(&policy, envelope(MESSAGE, Some("alice"))).await;
    dkimpy_verify(&submitted, &records).unwrap();

    // A subdomain is signed with its parent's key, d= the parent.
    let sub = replace(MESSAGE, "alice@example.test", "alice@mail.example.test");
    let signed = sign_queued(&policy, envelope(&sub, Some("alice"))).await;
    assert!(String::from_utf8_lossy(&signed).contains("d=example.test;"));
    dkimpy_verify(&signed, &records).unwrap();

    // A From: domain without a key: unchanged, even when authenticated.
    let other = replace(MESSAGE, "alice@example.test", "alice@elsewhere.test");
    let passed = sign_queued(&policy, envelope(&other, Some("alice"))).await;
    assert_eq!(passed, other);
}

#[test]
fn weak_and_wrong_keys_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (weak, _) = openssl_key(dir.path(), "rsa-1024");
    let err = DkimKey::load(&weak).unwrap_err();
    assert!(matches!(err, KeyError::WeakRsa), "{err}");
    assert!(err.to_string().contains("under 2048 bits"), "{err}");

    let ec = dir.path().join("ec.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        ec.to_str().unwrap(),
    ]);
    let err = DkimKey::load(&ec).unwrap_err();
    assert!(
        err.to_string().contains("cannot sign DKIM") || err.to_string().contains("invalid key"),
        "{err}"
    );

    let err = DkimKey::load(dir.path().join("missing.key")).unwrap_err();
    assert!(matches!(err, KeyError::Read(_)), "{err}");
}
