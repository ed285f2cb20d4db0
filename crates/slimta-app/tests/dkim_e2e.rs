//! Black-box tests of DKIM signing in the `slimta` binary: `slimta dkim
//! keygen` writes a private key only its owner can read and prints a record
//! that dkimpy accepts; a daemon with `[policy.sign]` signs what an
//! authenticated client (swaks) submits and leaves inbound mail alone; a
//! missing or weak key is a `--check-config` error.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{Slimta, SmtpSink, relay_config};
use test_peers::dkimpy_verify;

const BIN: &str = env!("CARGO_BIN_EXE_slimta");
const WAIT: Duration = Duration::from_secs(20);

fn slimta(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs keygen; the TXT text joined from the printed zone line's strings.
fn keygen(dir: &Path, selector: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "dkim",
        "keygen",
        "--domain",
        "example.test",
        "--selector",
        selector,
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = slimta(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = text(&out.stdout);
    let prefix = format!("{selector}._domainkey.example.test. IN TXT ( ");
    assert!(
        line.starts_with(&prefix) && line.ends_with(" )\n"),
        "{line}"
    );
    let quoted = &line[prefix.len()..line.len() - 3];
    let strings: Vec<&str> = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap()
        .split("\" \"")
        .collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
    strings.concat()
}

#[test]
fn keygen_writes_a_0600_key_and_a_record_dkimpy_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let rsa = keygen(&keys, "s1", &[]);
    assert!(rsa.starts_with("v=DKIM1; k=rsa; p="), "{rsa}");
    // A 2048-bit key's record is longer than one TXT string.
    assert!(rsa.len() > 255, "{rsa}");
    let ed = keygen(&keys, "ed", &["--ed25519"]);
    assert!(ed.starts_with("v=DKIM1; k=ed25519; p="), "{ed}");
    for name in ["s1.key", "ed.key"] {
        let mode = std::fs::metadata(keys.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // openssl reads what keygen wrote: a standard PEM key.
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(keys.join("s1.key"))
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("Private-Key: (2048 bit"),
        "{out:?}"
    );

    // Never over an existing key.
    let again = slimta(&[
        "dkim",
        "keygen",
        "--domain",
        "example.test",
        "--selector",
        "s1",
        "--out",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(text(&again.stderr).contains("s1.key"), "{again:?}");
    let bad = slimta(&[
        "dkim",
        "keygen",
        "--domain",
        "example.test",
        "--selector",
        "no good",
        "--out",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // The daemon signs with both; dkimpy verifies each with its record.
    let sink = SmtpSink::start(&[], true);
    let config = sign_config(&sink, &keys.join("s1.key"), "s1");
    let daemon = Slimta::start(&config);
    let sent = swaks(&daemon, "alice@example.test", true);
    assert!(sent.0, "{}", sent.1);
    let message = delivered(&sink, 1);
    assert!(message.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256; s=s1; d=example.test;"));
    dkimpy_verify(&message, &[("s1._domainkey.example.test", &rsa)]).unwrap();
    drop(daemon);

    let sink = SmtpSink::start(&[], true);
    let daemon = Slimta::start(&sign_config(&sink, &keys.join("ed.key"), "ed"));
    let sent = swaks(&daemon, "alice@example.test", true);
    assert!(sent.0, "{}", sent.1);
    let message = delivered(&sink, 1);
    dkimpy_verify(&message, &[("ed._domainkey.example.test", &ed)]).unwrap();
    // The record of the other key does not verify it: the check can fail.
    dkimpy_verify(&message, &[("ed._domainkey.example.test", &rsa)]).unwrap_err();
}

/// A daemon relaying to `sink` that signs with `key` as a queue policy,
/// with AUTH PLAIN for alice over plaintext (loopback test only).
fn sign_config(sink: &SmtpSink, key: &Path, selector: &str) -> String {
    let extra =
        "[edge.in.auth]\nallow_plaintext = true\nusers = { alice = \"{PLAIN}wonderland\" }\n";
    let mut config = relay_config(sink.addr(), extra).replace(
        "relay = \"out\"\n",
        "relay = \"out\"\npolicies = [\"add_received_header\", \"sign\"]\n",
    );
    config.push_str(&format!(
        "\n[policy.sign]\ntype = \"dkim_sign\"\ndomain = \"example.test\"\nselector = \"{selector}\"\nkey = \"{}\"\n",
        key.display()
    ));
    config
}

fn swaks(daemon: &Slimta, from: &str, auth: bool) -> (bool, String) {
    let mut command = Command::new(support::program("swaks", "swaks"));
    command.args([
        "--server",
        &daemon.addr().to_string(),
        "-f",
        from,
        "-t",
        "r@example.test",
        "--header",
        "Subject: signed?",
    ]);
    if auth {
        command.args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "wonderland",
        ]);
    }
    let out = command.output().expect("swaks");
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

/// The `n`th message the sink got, with its CRLF line ends back (smtp-sink
/// dumps LF).
fn delivered(sink: &SmtpSink, n: usize) -> Vec<u8> {
    let messages = sink.wait_for_messages(n, WAIT);
    let content = &messages[n - 1].content;
    let mut out = Vec::with_capacity(content.len() + content.len() / 20 + 2);
    for &b in content {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn unauthenticated_mail_is_relayed_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "s1", &["--ed25519"]);
    let sink = SmtpSink::start(&[], true);
    let daemon = Slimta::start(&sign_config(&sink, &dir.path().join("s1.key"), "s1"));
    let sent = swaks(&daemon, "alice@example.test", false);
    assert!(sent.0, "{}", sent.1);
    let message = delivered(&sink, 1);
    assert!(
        !text(&message)
            .to_ascii_lowercase()
            .contains("dkim-signature"),
        "{}",
        text(&message)
    );
}

#[test]
fn check_config_names_a_missing_or_weak_key() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&[], false);
    let missing = dir.path().join("nope.key");
    let path = dir.path().join("slimta.toml");
    std::fs::write(
        &path,
        sign_config(&sink, &missing, "s1").replace("{port}", "0"),
    )
    .unwrap();
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!(
            "policy.sign.key: {}: cannot read the key",
            missing.display()
        )),
        "{out:?}"
    );

    let weak = dir.path().join("weak.key");
    let made = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&weak)
        .arg("1024")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(
        &path,
        sign_config(&sink, &weak, "s1").replace("{port}", "0"),
    )
    .unwrap();
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("RSA key under 2048 bits"),
        "{out:?}"
    );
}
