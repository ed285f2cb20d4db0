//! The spool file format, version 1.
//!
//! One file per message, named by its id, made of a header and a journal
//! of records:
//!
//! ```text
//! header  := "SLIMTAQ\n" (8 bytes)  version: u16 = 1  reserved: u16 = 0
//! record  := kind: u8  len: u64  payload: len bytes  crc: u32
//!            (crc = CRC-32/ISO-HDLC over kind, len and payload)
//! file    := header ENVELOPE TIMESTAMP (TIMESTAMP | OUTCOME | ATTEMPTS | DELIVERED | LAST_ERROR | DELAY_WARNED)*
//! ```
//!
//! All integers are little-endian. Payloads:
//!
//! - `1 ENVELOPE`: sender: str; recipients: u32 count, str each;
//!   client ip: u8 (0 none, 4 + 4 bytes, 6 + 16 bytes); port: u16;
//!   host: opt-str; helo: opt-str; protocol: str (RFC 3848 keyword);
//!   auth: opt-str; tls: u8 (0 none, 1 + protocol: str + cipher: str);
//!   receive time: time; body: u8 (0 7BIT, 1 8BITMIME, 2 BINARYMIME);
//!   smtputf8: u8; message: u64 length + the bytes exactly as received.
//! - `2 TIMESTAMP`: time (the next attempt is due).
//! - `3 ATTEMPTS`: u32, the absolute count (replaying it twice is harmless).
//! - `4 DELIVERED`: u32 count, u32 indices; added to the delivered set.
//! - `5 LAST_ERROR`: str.
//! - `6 DELAY_WARNED`: empty; the delay warning was queued (added after
//!   version 1 shipped; older readers skip it as an unknown record, which
//!   at worst sends the warning again).
//! - `7 OUTCOME`: one delivery attempt's outcome, applied whole or (torn,
//!   bad CRC) not at all: attempts: u32 (absolute); finished: u32 count,
//!   u32 indices (added to the delivered set); next due: u8 0 (unchanged)
//!   or u8 1 + time; last error: opt-str (none: unchanged); delay warned:
//!   u8 (1: set; 0: unchanged).
//!
//! The queue writes `TIMESTAMP` (an operator's "retry now") and `OUTCOME`
//! (everything an attempt changed, in one record and one `fdatasync`).
//! Kinds 3 to 6, one field each, are what earlier releases appended per
//! field; they are still read. (An earlier release reading a file with
//! `OUTCOME` records skips them as unknown: it would retry recipients
//! already delivered, never lose one.)
//!
//! `str` is a u32 byte length and UTF-8; `opt-str` is u8 0, or u8 1 and a
//! str; `time` is i64 seconds since the Unix epoch (negative before it) and
//! u32 nanoseconds.
//!
//! Decisions:
//! - The first record (the envelope) is written, fsync'd and renamed into
//!   place before the message exists, so it is always whole. Later records
//!   are appended; a crash can leave a torn *last* record, which the CRC or
//!   the length exposes. The reader stops at the first bad record and
//!   reports where the good part ends, so the spool can truncate the torn
//!   tail before appending again.
//! - Unknown record kinds with a good CRC are skipped, so a later version
//!   can add optional records without a version bump. A file with a higher
//!   version number is refused, not guessed at.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::envelope::{BodyType, ClientInfo, Envelope, Protocol, TlsInfo};
use crate::queue::storage::{AttemptOutcome, QueueMeta, StoredEnvelope};

/// The first eight bytes of every spool file.
pub(crate) const MAGIC: &[u8; 8] = b"SLIMTAQ\n";
/// The format version this code writes and reads.
pub(crate) const VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 12;
/// Kind, length and CRC around every record's payload.
pub(crate) const RECORD_OVERHEAD: usize = 1 + 8 + 4;

const ENVELOPE: u8 = 1;
const TIMESTAMP: u8 = 2;
const ATTEMPTS: u8 = 3;
const DELIVERED: u8 = 4;
const LAST_ERROR: u8 = 5;
const DELAY_WARNED: u8 = 6;
const OUTCOME: u8 = 7;

/// A metadata change, appended as one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Update {
    Timestamp(SystemTime),
    Outcome(AttemptOutcome),
    /// The one-field records of earlier releases, written only by tests
    /// (files from those releases must stay readable).
    #[cfg(test)]
    Attempts(u32),
    #[cfg(test)]
    Delivered(Vec<usize>),
    #[cfg(test)]
    LastError(String),
    #[cfg(test)]
    DelayWarned,
}

/// Why a file could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not a spool file, or its envelope record is damaged.
    Corrupt(&'static str),
    /// Written by a newer version of this program.
    NewerVersion(u16),
}

/// A decoded spool file.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) stored: StoredEnvelope,
    /// Where the last good record ends; less than the file length if the
    /// tail is torn.
    pub(crate) good_len: usize,
}

/// The bytes of a new spool file: header, envelope, first due time.
#[cfg(test)]
pub(crate) fn encode_new(envelope: &Envelope, timestamp: SystemTime) -> Vec<u8> {
    let (head, tail) = encode_new_around(envelope, timestamp);
    [head.as_slice(), &envelope.message, &tail].concat()
}

/// A new spool file without a copy of the message: the file is `head`, then
/// `envelope.message` exactly, then `tail`. The message bytes end the
/// envelope record's payload, so only the record's CRC (computed over them
/// in place) follows them, then the first `TIMESTAMP` record.
pub(crate) fn encode_new_around(envelope: &Envelope, timestamp: SystemTime) -> (Vec<u8>, Vec<u8>) {
    let mut fields = Vec::with_capacity(256);
    encode_envelope_fields(envelope, &mut fields);
    let mut head = Vec::with_capacity(HEADER_LEN + RECORD_OVERHEAD + fields.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes());
    head.push(ENVELOPE);
    let payload_len = fields.len() + envelope.message.len();
    head.extend_from_slice(&(payload_len as u64).to_le_bytes());
    head.extend_from_slice(&fields);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[HEADER_LEN..]);
    crc.update(&envelope.message);
    let mut tail = crc.finalize().to_le_bytes().to_vec();
    tail.extend_from_slice(&encode_update(&Update::Timestamp(timestamp)));
    (head, tail)
}

/// One appended record.
pub(crate) fn encode_update(update: &Update) -> Vec<u8> {
    let mut payload = Vec::new();
    let kind = match update {
        Update::Timestamp(t) => {
            put_time(&mut payload, *t);
            TIMESTAMP
        }
        Update::Outcome(o) => {
            payload.extend_from_slice(&o.attempts.to_le_bytes());
            put_indices(&mut payload, &o.finished);
            match o.next_attempt {
                Some(t) => {
                    payload.push(1);
                    put_time(&mut payload, t);
                }
                None => payload.push(0),
            }
            put_opt_str(&mut payload, o.last_error.as_deref());
            payload.push(u8::from(o.delay_warned));
            OUTCOME
        }
        #[cfg(test)]
        Update::Attempts(n) => {
            payload.extend_from_slice(&n.to_le_bytes());
            ATTEMPTS
        }
        #[cfg(test)]
        Update::Delivered(indices) => {
            put_indices(&mut payload, indices);
            DELIVERED
        }
        #[cfg(test)]
        Update::LastError(e) => {
            put_str(&mut payload, e);
            LAST_ERROR
        }
        #[cfg(test)]
        Update::DelayWarned => DELAY_WARNED,
    };
    let mut out = Vec::with_capacity(payload.len() + RECORD_OVERHEAD);
    push_record(&mut out, kind, &payload);
    out
}

pub(crate) fn push_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes a whole spool file.
///
/// # Errors
///
/// [`Invalid`] when the header or the envelope record is bad; a bad later
/// record only shortens `good_len`.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, Invalid> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(Invalid::Corrupt("not a spool file"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version > VERSION {
        return Err(Invalid::NewerVersion(version));
    }
    if version == 0 {
        return Err(Invalid::Corrupt("version 0"));
    }
    let mut pos = HEADER_LEN;
    let (kind, payload, next) =
        next_record(bytes, pos).ok_or(Invalid::Corrupt("damaged envelope record"))?;
    if kind != ENVELOPE {
        return Err(Invalid::Corrupt("first record is not an envelope"));
    }
    let envelope = decode_envelope(payload).ok_or(Invalid::Corrupt("malformed envelope record"))?;
    pos = next;
    let mut meta = QueueMeta::default();
    while let Some((kind, payload, next)) = next_record(bytes, pos) {
        if apply_update(&mut meta, kind, payload).is_none() {
            // A record with a good CRC but a bad payload is a bug or
            // deliberate damage; stop as at a torn tail.
            break;
        }
        pos = next;
    }
    meta.delivered.retain(|&i| i < envelope.recipients.len());
    Ok(Decoded {
        stored: StoredEnvelope {
            envelope: std::sync::Arc::new(envelope),
            meta,
        },
        good_len: pos,
    })
}

/// The due time one whole metadata record (as [`encode_update`] makes it)
/// sets, if it sets one.
pub(crate) fn due_set_by(record: &[u8]) -> Option<SystemTime> {
    let (kind, payload, _) = next_record(record, 0)?;
    let mut meta = QueueMeta::default();
    apply_update(&mut meta, kind, payload)?;
    meta.timestamp
}

/// The record at `pos`: kind, payload and where the next record starts;
/// `None` if it is cut short or fails its CRC.
pub(crate) fn next_record(bytes: &[u8], pos: usize) -> Option<(u8, &[u8], usize)> {
    let rest = bytes.get(pos..)?;
    if rest.len() < RECORD_OVERHEAD {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(rest[1..9].try_into().ok()?)).ok()?;
    let end = 9usize.checked_add(len)?;
    let crc_bytes = rest.get(end..end.checked_add(4)?)?;
    let crc = u32::from_le_bytes(crc_bytes.try_into().ok()?);
    if crc32fast::hash(&rest[..end]) != crc {
        return None;
    }
    Some((rest[0], &rest[9..end], pos + end + 4))
}

pub(crate) fn apply_update(meta: &mut QueueMeta, kind: u8, payload: &[u8]) -> Option<()> {
    let mut r = Reader(payload);
    match kind {
        TIMESTAMP => meta.timestamp = Some(r.time()?),
        ATTEMPTS => meta.attempts = r.u32()?,
        DELIVERED => r.indices_into(&mut meta.delivered)?,
        LAST_ERROR => meta.last_error = Some(r.str()?),
        DELAY_WARNED => meta.delay_warned = true,
        OUTCOME => {
            // Decoded whole before anything is applied: a record is all
            // or nothing, even one whose CRC is good but payload is not.
            let attempts = r.u32()?;
            let mut finished = Vec::new();
            r.indices_into(&mut finished)?;
            let next_attempt = match r.u8()? {
                0 => None,
                1 => Some(r.time()?),
                _ => return None,
            };
            let last_error = r.opt_str()?;
            let delay_warned = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            if !r.0.is_empty() {
                return None;
            }
            let outcome = AttemptOutcome {
                attempts,
                finished,
                next_attempt,
                last_error,
                delay_warned,
            };
            // Out-of-range indices are dropped after the whole file is read.
            outcome.apply_to(meta, usize::MAX);
        }
        _ => return Some(()),
    }
    r.0.is_empty().then_some(())
}

/// Every envelope field of the payload except the message bytes, which
/// follow their length at the end.
fn encode_envelope_fields(e: &Envelope, out: &mut Vec<u8>) {
    put_str(out, &e.sender);
    put_u32(out, e.recipients.len());
    for r in &e.recipients {
        put_str(out, r);
    }
    let c = &e.client;
    match c.ip {
        None => out.push(0),
        Some(IpAddr::V4(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Some(IpAddr::V6(ip)) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&c.port.to_le_bytes());
    put_opt_str(out, c.host.as_deref());
    put_opt_str(out, c.helo.as_deref());
    put_str(out, c.protocol.as_str());
    put_opt_str(out, c.auth.as_deref());
    match &c.tls {
        None => out.push(0),
        Some(tls) => {
            out.push(1);
            put_str(out, &tls.protocol);
            put_str(out, &tls.cipher);
        }
    }
    put_time(out, e.receive_time);
    out.push(match e.body {
        BodyType::SevenBit => 0,
        BodyType::EightBitMime => 1,
        BodyType::BinaryMime => 2,
    });
    out.push(u8::from(e.smtputf8));
    out.extend_from_slice(&(e.message.len() as u64).to_le_bytes());
}

fn decode_envelope(payload: &[u8]) -> Option<Envelope> {
    let mut r = Reader(payload);
    let sender = r.str()?;
    let n = r.u32()?;
    let mut recipients = Vec::with_capacity(usize::try_from(n).ok()?.min(4096));
    for _ in 0..n {
        recipients.push(r.str()?);
    }
    let ip = match r.u8()? {
        0 => None,
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).ok()?)),
        _ => return None,
    };
    let port = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let host = r.opt_str()?;
    let helo = r.opt_str()?;
    let protocol = Protocol::parse(&r.str()?)?;
    let auth = r.opt_str()?;
    let tls = match r.u8()? {
        0 => None,
        1 => Some(TlsInfo {
            protocol: r.str()?,
            cipher: r.str()?,
        }),
        _ => return None,
    };
    let receive_time = r.time()?;
    let body = match r.u8()? {
        0 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        2 => BodyType::BinaryMime,
        _ => return None,
    };
    let smtputf8 = match r.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let len = usize::try_from(u64::from_le_bytes(r.take(8)?.try_into().ok()?)).ok()?;
    let message = r.take(len)?.to_vec();
    if !r.0.is_empty() {
        return None;
    }
    Some(Envelope {
        sender,
        recipients,
        message,
        client: ClientInfo {
            ip,
            port,
            host,
            helo,
            protocol,
            auth,
            tls,
        },
        receive_time,
        body,
        smtputf8,
    })
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Counts and lengths beyond u32 cannot come from an SMTP session (the
    // edge limits recipients and line lengths long before).
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_indices(out: &mut Vec<u8>, indices: &[usize]) {
    put_u32(out, indices.len());
    for &i in indices {
        put_u32(out, i);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            // Before the epoch: floor to whole seconds, nanos count forward.
            let d = e.duration();
            let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    };
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&nanos.to_le_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A u32 count and that many u32 indices, added to `set` (kept sorted
    /// and without duplicates).
    fn indices_into(&mut self, set: &mut Vec<usize>) -> Option<()> {
        let n = self.u32()?;
        for _ in 0..n {
            set.push(usize::try_from(self.u32()?).ok()?);
        }
        set.sort_unstable();
        set.dedup();
        Some(())
    }

    fn str(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }

    fn time(&mut self) -> Option<SystemTime> {
        let secs = i64::from_le_bytes(self.take(8)?.try_into().ok()?);
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return None;
        }
        let whole = Duration::from_secs(secs.unsigned_abs());
        let base = if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(whole)?
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(whole)?
        };
        base.checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn full_envelope() -> Envelope {
        let mut message: Vec<u8> = (0..=255u8).collect();
        message.extend_from_slice(b"\r\n.\r\n\0\xff");
        Envelope {
            sender: "s\u{e9}nder@example.test".into(),
            recipients: vec!["a@x.test".into(), "\"q r\"@y.test".into()],
            message,
            client: ClientInfo {
                ip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                port: 54321,
                host: Some("client.example.test".into()),
                helo: Some("[::1]".into()),
                protocol: Protocol::Esmtpsa,
                auth: Some("user".into()),
                tls: Some(TlsInfo {
                    protocol: "TLSv1.3".into(),
                    cipher: "TLS13_AES_256_GCM_SHA384".into(),
                }),
            },
            receive_time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            body: BodyType::BinaryMime,
            smtputf8: true,
        }
    }

    #[test]
    fn round_trips_every_field_and_the_journal() {
        let e = full_envelope();
        let due = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5);
        let mut file = encode_new(&e, due);
        for u in [
            Update::Attempts(1),
            Update::Delivered(vec![1]),
            Update::LastError("451 4.4.1 later".into()),
            Update::Attempts(2),
            Update::Delivered(vec![1, 0]),
            Update::DelayWarned,
        ] {
            file.extend_from_slice(&encode_update(&u));
        }
        let d = decode(&file).unwrap();
        assert_eq!(*d.stored.envelope, e);
        assert_eq!(d.good_len, file.len());
        let m = d.stored.meta;
        assert_eq!(
            (m.timestamp, m.attempts, m.delivered),
            (Some(due), 2, vec![0, 1])
        );
        assert_eq!(m.last_error.as_deref(), Some("451 4.4.1 later"));
        assert!(m.delay_warned);
    }

    #[test]
    fn an_outcome_record_is_applied_whole_or_not_at_all() {
        let due = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5);
        let mut file = encode_new(&full_envelope(), SystemTime::UNIX_EPOCH);
        let first = AttemptOutcome {
            attempts: 1,
            finished: vec![1],
            next_attempt: Some(due),
            last_error: Some("451 4.4.1 first".into()),
            delay_warned: false,
        };
        file.extend_from_slice(&encode_update(&Update::Outcome(first)));
        let before = decode(&file).unwrap().stored.meta;
        assert_eq!(
            (before.attempts, &before.delivered, before.timestamp),
            (1, &vec![1], Some(due))
        );
        assert_eq!(before.last_error.as_deref(), Some("451 4.4.1 first"));
        let second = AttemptOutcome {
            attempts: 2,
            finished: vec![0, 7],
            next_attempt: None,
            last_error: None,
            delay_warned: true,
        };
        let next = encode_update(&Update::Outcome(second));
        // Every cut of the second record leaves exactly the first state.
        for cut in 0..next.len() {
            let mut torn = file.clone();
            torn.extend_from_slice(&next[..cut]);
            assert_eq!(decode(&torn).unwrap().stored.meta, before, "cut at {cut}");
        }
        file.extend_from_slice(&next);
        let after = decode(&file).unwrap().stored.meta;
        assert_eq!(
            after,
            QueueMeta {
                timestamp: Some(due),
                attempts: 2,
                // Index 7 is beyond the two recipients: dropped.
                delivered: vec![0, 1],
                last_error: Some("451 4.4.1 first".into()),
                delay_warned: true,
            }
        );
    }

    #[test]
    fn times_before_the_epoch_survive() {
        for t in [
            SystemTime::UNIX_EPOCH - Duration::new(5, 1),
            SystemTime::UNIX_EPOCH - Duration::from_secs(5),
            SystemTime::UNIX_EPOCH,
        ] {
            let mut out = Vec::new();
            put_time(&mut out, t);
            assert_eq!(Reader(&out).time(), Some(t));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let mut file = encode_new(&full_envelope(), SystemTime::UNIX_EPOCH);
        file.extend_from_slice(&encode_update(&Update::Attempts(1)));
        let good = file.len();
        let next = encode_update(&Update::Delivered(vec![0]));
        for cut in 0..next.len() {
            let mut torn = file.clone();
            torn.extend_from_slice(&next[..cut]);
            let d = decode(&torn).unwrap();
            assert_eq!(d.good_len, good, "cut at {cut}");
            assert!(d.stored.meta.delivered.is_empty());
            assert_eq!(d.stored.meta.attempts, 1);
        }
    }

    #[test]
    fn damage_to_the_header_or_envelope_is_corruption() {
        let file = encode_new(&full_envelope(), SystemTime::UNIX_EPOCH);
        let envelope_end =
            file.len() - encode_update(&Update::Timestamp(SystemTime::UNIX_EPOCH)).len();
        for cut in 0..envelope_end {
            assert!(
                matches!(decode(&file[..cut]), Err(Invalid::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut flipped = file.clone();
        flipped[200] ^= 1;
        assert!(matches!(decode(&flipped), Err(Invalid::Corrupt(_))));
        let mut newer = file;
        newer[8] = 2;
        assert_eq!(decode(&newer).unwrap_err(), Invalid::NewerVersion(2));
    }
}
