//! OpenDKIM 2.11 (Debian `opendkim`) as an independent DKIM verifier, in
//! its own test mode: `opendkim -t FILE` verifies one message and reports
//! on stderr or stdout.
//!
//! Decision: the public keys come from OpenDKIM's `TestPublicKeys` file
//! (its documented hook for automated tests), not from dnsmasq: OpenDKIM's
//! `Nameservers` takes addresses only, always port 53, which a test on a
//! shared machine cannot own. The verification code is the same either way.

use std::fs;
use std::process::Command;

use crate::require;

/// Verifies `message` with OpenDKIM, the public keys answering `records`
/// (`("s1._domainkey.example.test", "v=DKIM1; ...")`).
///
/// # Errors
///
/// OpenDKIM's report when the verification does not succeed.
///
/// # Panics
///
/// When opendkim is not installed or cannot run.
pub fn opendkim_verify(message: &[u8], records: &[(&str, &str)]) -> Result<(), String> {
    let opendkim = require("opendkim", "opendkim");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: String = records
        .iter()
        .map(|(name, value)| format!("{name} {value}\n"))
        .collect();
    let keys_path = dir.path().join("keys");
    fs::write(&keys_path, keys).expect("write keys");
    let conf = dir.path().join("opendkim.conf");
    fs::write(
        &conf,
        format!(
            "Syslog no\nLogWhy yes\nMode v\nBackground no\nTestPublicKeys {}\n",
            keys_path.display()
        ),
    )
    .expect("write opendkim.conf");
    let message_path = dir.path().join("message.eml");
    fs::write(&message_path, message).expect("write message");
    let out = Command::new(opendkim)
        .arg("-x")
        .arg(&conf)
        .arg("-t")
        .arg(&message_path)
        .output()
        .expect("run opendkim -t");
    // The report goes to stderr on a terminal and to stdout otherwise.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if out.status.success() && report.contains(") succeeded") {
        Ok(())
    } else {
        Err(format!("opendkim ({}): {report}", out.status))
    }
}
