//! Fuzzes the SMTP server state machine: the input is split into reads at
//! points taken from its first bytes, and the session must not panic,
//! must write only well-formed replies, and must behave exactly as when
//! the same bytes arrive in one read. A header byte picks plain SMTP,
//! STARTTLS with AUTH, or LMTP with AUTH; after an accepted STARTTLS the
//! remaining reads are dropped (the TLS layer would swallow them) and a
//! fixed post-TLS session is read instead, so split invariance still holds.
//!
//! Run with `cargo fuzz run server` from the repository root (nightly).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use slimta::Reply;
use slimta::smtp::{EventKind, Mechanism, Server, ServerConfig, Step};

const AFTER_TLS: &[u8] = b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@b>\r\nQUIT\r\n";

/// Runs one session; `refuse` has a bit per event (1 = answer 550, or
/// keep the 535 for AUTH; 0 = accept, 235 for AUTH).
fn drive(reads: &[&[u8]], refuse: u64, variant: u8) -> (Vec<u8>, Vec<String>) {
    let mut config = ServerConfig {
        max_size: 300,
        max_recipients: 3,
        max_bad_commands: 100,
        max_command_line: 64,
        max_text_line: 80,
        ..ServerConfig::new("mx.test")
    };
    match variant % 3 {
        0 => {}
        1 => {
            config.starttls = true;
            config.auth_mechanisms = Mechanism::ALL.to_vec();
            config.auth_required = true;
        }
        _ => {
            config.lmtp = true;
            config.auth_mechanisms = Mechanism::ALL.to_vec();
            config.auth_plaintext = true;
        }
    }
    let mut server = Server::new(Arc::new(config));
    server.greet(server.default_banner());
    let mut output = Vec::new();
    let mut events = Vec::new();
    let after_tls: [&[u8]; 1] = [AFTER_TLS];
    let mut reads = reads.iter();
    loop {
        match server.step() {
            Step::Event(ev) => {
                let n = events.len() % 64;
                let refused = refuse >> n & 1 == 1;
                match &ev.kind {
                    // The CRAM-MD5 challenge is random: leave it out.
                    EventKind::Auth(a) => events.push(format!("Auth {}", a.authcid)),
                    other => events.push(format!("{other:?}")),
                }
                match (&ev.kind, refused) {
                    (EventKind::Auth(_), true) => server.respond(ev.reply),
                    (EventKind::Auth(_), false) => {
                        server.respond(Reply::new(235, "2.7.0", "ok"));
                    }
                    (EventKind::Message(t), true) if server.config().lmtp => {
                        let n = t.recipients.len();
                        server.respond_per_recipient(vec![Reply::new(452, "4.2.2", "full"); n]);
                    }
                    (_, true) => server.respond(Reply::new(550, "5.7.1", "refused")),
                    (_, false) => server.respond(ev.reply),
                }
            }
            Step::NeedInput => {
                output.extend_from_slice(server.output());
                server.clear_output();
                match reads.next() {
                    Some(r) => server.receive(r),
                    None => break,
                }
            }
            Step::StartTls => {
                server.tls_established();
                reads = after_tls.iter();
            }
            Step::Close => break,
        }
    }
    output.extend_from_slice(server.output());
    (hide_challenges(&output), events)
}

/// Replaces CRAM-MD5 challenge lines (random) by a fixed line.
fn hide_challenges(output: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(output.len());
    for line in output.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"334 PD") && line.len() > 30 {
            out.extend_from_slice(b"334 <challenge>\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

fn well_formed(output: &[u8]) -> bool {
    if !(output.is_empty() || output.ends_with(b"\r\n")) {
        return false;
    }
    output[..output.len().saturating_sub(2)]
        .split(|&b| b == b'\n')
        .all(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-')
                && !line.contains(&b'\r')
        })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let refuse = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    let step = usize::from(data[8] % 31) + 1;
    let variant = data[8] / 31;
    let input = &data[9..];
    let whole = drive(&[input], refuse, variant);
    assert!(
        well_formed(&whole.0),
        "{:?}",
        String::from_utf8_lossy(&whole.0)
    );
    let pieces: Vec<&[u8]> = input.chunks(step).collect();
    let split = drive(&pieces, refuse, variant);
    assert_eq!(whole, split, "split every {step}");
});
