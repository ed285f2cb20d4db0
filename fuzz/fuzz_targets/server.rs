//! Fuzzes the SMTP server state machine: the input is split into reads at
//! points taken from its first bytes, and the session must not panic,
//! must write only well-formed replies, and must behave exactly as when
//! the same bytes arrive in one read.
//!
//! Run with `cargo fuzz run server` from the repository root (nightly).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use slimta::Reply;
use slimta::smtp::{Server, ServerConfig, Step};

/// Runs one session; `refuse` has a bit per event (1 = answer 550).
fn drive(reads: &[&[u8]], refuse: u64) -> (Vec<u8>, Vec<String>) {
    let config = ServerConfig {
        max_size: 300,
        max_recipients: 3,
        max_bad_commands: 100,
        max_command_line: 64,
        max_text_line: 80,
        ..ServerConfig::new("mx.test")
    };
    let mut server = Server::new(Arc::new(config));
    server.greet(server.default_banner());
    let mut output = Vec::new();
    let mut events = Vec::new();
    let mut reads = reads.iter();
    loop {
        match server.step() {
            Step::Event(ev) => {
                let n = events.len() % 64;
                events.push(format!("{:?}", ev.kind));
                if refuse >> n & 1 == 1 {
                    server.respond(Reply::new(550, "5.7.1", "refused"));
                } else {
                    server.respond(ev.reply);
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
            Step::StartTls => server.tls_established(),
            Step::Close => break,
        }
    }
    output.extend_from_slice(server.output());
    (output, events)
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
    let input = &data[9..];
    let whole = drive(&[input], refuse);
    assert!(
        well_formed(&whole.0),
        "{:?}",
        String::from_utf8_lossy(&whole.0)
    );
    let pieces: Vec<&[u8]> = input.chunks(step).collect();
    let split = drive(&pieces, refuse);
    assert_eq!(whole, split, "split every {step}");
});
