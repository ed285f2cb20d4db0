//! The project's own versioned binary form of a queued message, for
//! storages that keep messages somewhere other than the disk spool (Redis,
//! object stores): the same records as a spool file (`disk/format.rs`:
//! magic, version, CRC-checked records), never a language's pickle or a
//! text format that could change the message bytes.
//!
//! - [`encode_envelope`] is a spool file with only its envelope record:
//!   written once, when the message is queued, and never changed.
//! - [`encode_meta`] is the metadata as records (due time, and one outcome
//!   record holding attempts, finished recipients, last error, the delay
//!   warning), small enough to rewrite whole on every attempt.
//! - [`decode`] reads either an envelope alone or an envelope followed by
//!   metadata records (a whole spool file); [`decode_meta`] reads metadata
//!   records alone.
//!
//! A newer format version is refused with an error that says so, never
//! misread.

use std::io;

use crate::envelope::Envelope;

use super::disk::format::{self, Invalid};
use super::storage::{AttemptOutcome, QueueMeta, StoredEnvelope};

/// The envelope (every field and the message bytes) as a versioned record.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    // A new spool file is head + message + tail, the tail being the
    // envelope record's CRC (4 bytes) and then a due-time record; the
    // envelope alone stops after the CRC.
    let (head, tail) = format::encode_new_around(envelope, std::time::SystemTime::UNIX_EPOCH);
    [head.as_slice(), &envelope.message, &tail[..4]].concat()
}

/// The metadata as records, rewritten whole per attempt.
pub fn encode_meta(meta: &QueueMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    if let Some(due) = meta.timestamp {
        out.extend_from_slice(&format::encode_update(&format::Update::Timestamp(due)));
    }
    let outcome = AttemptOutcome {
        attempts: meta.attempts,
        finished: meta.delivered.clone(),
        next_attempt: None,
        last_error: meta.last_error.clone(),
        delay_warned: meta.delay_warned,
    };
    out.extend_from_slice(&format::encode_update(&format::Update::Outcome(outcome)));
    out
}

/// Reads metadata records made by [`encode_meta`].
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] when a record is cut short, fails its
/// CRC or has a bad payload.
pub fn decode_meta(bytes: &[u8]) -> io::Result<QueueMeta> {
    let mut meta = QueueMeta::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let (kind, payload, next) = format::next_record(bytes, pos)
            .ok_or_else(|| invalid("damaged metadata record".into()))?;
        format::apply_update(&mut meta, kind, payload)
            .ok_or_else(|| invalid("malformed metadata record".into()))?;
        pos = next;
    }
    Ok(meta)
}

/// Reads an envelope made by [`encode_envelope`], with any metadata
/// records after it applied (none: default metadata).
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] when the bytes are not a message of
/// this format (or one written by a newer version), or a metadata record
/// after the envelope is damaged.
pub fn decode(bytes: &[u8]) -> io::Result<StoredEnvelope> {
    let decoded = format::decode(bytes).map_err(|e| match e {
        Invalid::Corrupt(why) => invalid(why.to_owned()),
        Invalid::NewerVersion(v) => invalid(format!(
            "written by a newer slimta (format version {v}, this one reads up to {})",
            format::VERSION
        )),
    })?;
    if decoded.good_len != bytes.len() {
        return Err(invalid("damaged record after the envelope".into()));
    }
    Ok(decoded.stored)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn envelope() -> Envelope {
        Envelope::new(
            "a@example.test",
            vec!["b@example.test".into(), "c@x.test".into()],
            b"Subject: x\r\n\r\nbare\nLF and \r and \0\r\n.\r\n".to_vec(),
        )
    }

    #[test]
    fn envelope_and_meta_round_trip() {
        let e = envelope();
        let bytes = encode_envelope(&e);
        let stored = decode(&bytes).unwrap();
        assert_eq!(*stored.envelope, e);
        assert_eq!(stored.meta, QueueMeta::default());
        let meta = QueueMeta {
            timestamp: Some(SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 7)),
            attempts: 3,
            delivered: vec![1],
            last_error: Some("451 4.4.1 later".into()),
            delay_warned: true,
        };
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        let whole = [bytes, encode_meta(&meta)].concat();
        assert_eq!(decode(&whole).unwrap().meta, meta);
    }

    #[test]
    fn damage_is_an_error_not_a_misread() {
        let mut bytes = encode_envelope(&envelope());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            decode(&bytes).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut meta = encode_meta(&QueueMeta::default());
        meta.truncate(meta.len() - 1);
        assert_eq!(
            decode_meta(&meta).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut newer = encode_envelope(&envelope());
        newer[8] = 9;
        let e = decode(&newer).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
