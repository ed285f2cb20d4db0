//! Fuzzes the milter reply decoder (`slimta::policy::milter::protocol`) and
//! what the policy does with the changes it decodes
//! (`slimta::policy::milter::actions`): decoding must not panic, must never
//! take more bytes than it was given or a packet longer than its cap, and
//! must say "need more bytes" for every proper prefix of a packet it
//! decodes; applying any decoded changes to a message must leave a header
//! section in which every line is a field or a fold (a filter cannot inject
//! a field or end the header early).
//!
//! Run with `cargo fuzz run milter_reply` from the repository root
//! (nightly). The same checks run as a property test in the library
//! (`protocol::tests::decoding_and_applying_random_packets`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slimta::Envelope;
use slimta::policy::milter::actions;
use slimta::policy::milter::protocol::{MAX_PACKET, Reply, decode_reply};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut changes = Vec::new();
    while let Ok(Some((reply, used))) = decode_reply(rest) {
        assert!((5..=4 + MAX_PACKET).contains(&used) && used <= rest.len());
        assert!(matches!(decode_reply(&rest[..used - 1]), Ok(None)));
        if let Reply::Modify(m) = reply {
            changes.push(m);
        }
        rest = &rest[used..];
    }
    let mut envelope = Envelope::new(
        "a@x.test",
        vec!["b@y.test".into()],
        b"From: a@x.test\r\nSubject: s\r\n\tfolded\r\n\r\nbody\r\n".to_vec(),
    );
    actions::apply(&mut envelope, &changes, data.first() == Some(&1));
    let head_end = actions::body_start(&envelope.message);
    let head = &envelope.message[..head_end];
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.is_empty()
                || line.contains(&b':')
                || line.starts_with(b" ")
                || line.starts_with(b"\t"),
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
});
