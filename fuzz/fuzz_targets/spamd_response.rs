//! Fuzzes the spamd answer parser (`slimta::policy::spamassassin::protocol`):
//! it must not panic, must refuse anything longer than its cap, and must
//! agree with itself on prefixes: a prefix that already parses to a verdict
//! gives the same verdict for the whole input when the answer had a
//! `Content-length` (bytes after it are not read), and "need more bytes"
//! never becomes a verdict at end of input that differs from the complete
//! parse.
//!
//! Run with `cargo fuzz run spamd_response` from the repository root (nightly).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slimta::policy::spamassassin::protocol::{MAX_RESPONSE, parse_response};

fuzz_target!(|data: &[u8]| {
    let whole = parse_response(data, true);
    if data.len() > MAX_RESPONSE {
        assert!(whole.is_err());
    }
    // At end of input there is no "need more bytes".
    assert!(!matches!(whole, Ok(None)));
    let split = data.len() / 2;
    if let Ok(Some(early)) = parse_response(&data[..split], false) {
        // A verdict from a prefix is never contradicted by more bytes of a
        // framed answer.
        if let Ok(Some(late)) = parse_response(data, false) {
            assert_eq!(early.spam, late.spam);
            assert_eq!(early.score.to_bits(), late.score.to_bits());
        }
    }
});
