//! The journal segment format, version 1: many new messages in one file,
//! so that one `fdatasync` makes a whole group commit durable.
//!
//! Why: with one file per message, every accepted message costs at least
//! one fsync of its own (plus a share of a directory fsync, a create, a
//! rename and an unlink), and the disk queue was bound by that, not by CPU.
//! A journal segment takes every message waiting at one moment as
//! appended records and syncs once; the removal after delivery is one more
//! record in the same stream. A message that stays (deferred, or still
//! waiting when its segment is old) is moved to its own spool file, whose
//! format (`disk/format.rs`) the journal record simply contains.
//!
//! ```text
//! segment := "SLIMTAJ\n" (8 bytes)  version: u16 = 1  reserved: u16 = 0  record*
//! record  := kind: u8  len: u64  payload: len bytes  crc: u32
//!            (the same framing and CRC as spool file records)
//! ```
//!
//! Records:
//!
//! - `16 NEW`: id (32 lowercase hex digits), then the bytes of the
//!   message's spool file exactly as `disk/format.rs` defines it (header,
//!   envelope, first due time). Moving the message to its own file writes
//!   these bytes unchanged.
//! - `17 REMOVE`: id. The message is gone: delivered, bounced or deleted.
//!   It wins over a `NEW` record in any segment and over a spool file of
//!   the same id (which start-up then unlinks).
//! - `18 META`: id, then one whole spool file metadata record (an attempt's
//!   `OUTCOME`, or a `TIMESTAMP`) exactly as `disk/format.rs` appends it
//!   to a file. It applies to a message whose only copy is a `NEW` record
//!   (in the same or an older segment): the message's state is its `NEW`
//!   record's file bytes followed by its `META` records' bytes, in journal
//!   order, which is byte for byte the spool file the message gets when it
//!   is moved out of the journal. A `META` record for an id that has a
//!   file (moved since: the file holds it) or no `NEW` record (removed, or
//!   its segment deleted) is ignored. (Added after version 1 shipped
//!   without a version bump: an older reader skips it as an unknown kind,
//!   which at worst retries a message early or a recipient again, never
//!   loses one.)
//!
//! Why `META`: with every next hop down, each new message is deferred once
//! soon after it arrives. Moving it to a file of its own at that moment
//! cost a file fsync per message on the deferral's path, and deferrals
//! (and with them intake, which shares the disk) fell to the fsync rate.
//! A `META` record shares the group commit like any other record; the
//! move to a file happens later, in the background, many files under one
//! sync (`disk/mod.rs`).
//!
//! Segments are named by a sequence number (16 hex digits) and replayed in
//! that order. A crash can only tear the tail of the segment being written
//! (records are appended and synced in order); the reader stops at the
//! first record that is cut short or fails its CRC. A segment is never
//! appended to after a restart, so a torn tail is simply ignored. Unknown
//! record kinds with a good CRC are skipped; a newer version is refused.

use std::io::{self, Read};

use super::format::{self, Invalid, RECORD_OVERHEAD};

/// The first eight bytes of every journal segment.
pub(crate) const MAGIC: &[u8; 8] = b"SLIMTAJ\n";
/// The segment format version this code writes and reads.
pub(crate) const VERSION: u16 = 1;
/// Magic, version and reserved bytes.
pub(crate) const HEADER_LEN: usize = 12;

const NEW: u8 = 16;
const REMOVE: u8 = 17;
const META: u8 = 18;
const ID_LEN: usize = 32;

/// The header that starts every segment.
pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:016x}")
}

/// The sequence number in a segment's file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// The bytes that go before and after a `NEW` record's spool file bytes
/// (`parts`, written in order), so the message itself is never copied:
/// kind, length and id before; the CRC, computed over the parts in place,
/// after.
pub(crate) fn new_record_around(id: &str, parts: &[&[u8]]) -> (Vec<u8>, [u8; 4]) {
    debug_assert_eq!(id.len(), ID_LEN);
    let len = ID_LEN + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut prefix = Vec::with_capacity(9 + ID_LEN);
    prefix.push(NEW);
    prefix.extend_from_slice(&(len as u64).to_le_bytes());
    prefix.extend_from_slice(id.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&prefix);
    for part in parts {
        crc.update(part);
    }
    (prefix, crc.finalize().to_le_bytes())
}

/// A whole `REMOVE` record.
pub(crate) fn remove_record(id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_OVERHEAD + ID_LEN);
    format::push_record(&mut out, REMOVE, id.as_bytes());
    out
}

/// A whole `META` record: `record` (one encoded spool file metadata
/// record) for message `id`.
pub(crate) fn meta_record(id: &str, record: &[u8]) -> Vec<u8> {
    debug_assert_eq!(id.len(), ID_LEN);
    let mut payload = Vec::with_capacity(ID_LEN + record.len());
    payload.extend_from_slice(id.as_bytes());
    payload.extend_from_slice(record);
    let mut out = Vec::with_capacity(RECORD_OVERHEAD + payload.len());
    format::push_record(&mut out, META, &payload);
    out
}

/// One record read back from a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    /// A new message: its id, where its record starts in the segment, the
    /// record's whole length, and the spool file bytes inside it.
    New {
        id: &'a str,
        offset: u64,
        len: u64,
        file: &'a [u8],
    },
    /// A removal.
    Remove { id: &'a str },
    /// A metadata record for a journal message: the spool file record's
    /// bytes, whole.
    Meta { id: &'a str, record: &'a [u8] },
}

/// A segment read from the start.
#[derive(Debug)]
#[cfg(test)]
pub(crate) struct Scan<'a> {
    pub(crate) entries: Vec<Entry<'a>>,
    /// Where the last good record ends.
    pub(crate) good_len: usize,
}

/// Reads a whole segment (tests; the start-up scan streams, see
/// [`scan_stream`]).
///
/// # Errors
///
/// [`Invalid::Corrupt`] if the header is not a segment header (a segment
/// shorter than its header is an empty one cut short by a crash, and scans
/// as empty); [`Invalid::NewerVersion`] for a newer format.
#[cfg(test)]
pub(crate) fn scan(bytes: &[u8]) -> Result<Scan<'_>, Invalid> {
    if bytes.len() < HEADER_LEN {
        // Created but its header never synced: nothing was ever stored in
        // it (a record is acknowledged only after the sync that covers the
        // header too).
        return Ok(Scan {
            entries: Vec::new(),
            good_len: bytes.len(),
        });
    }
    check_header(bytes)?;
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    while let Some((kind, payload, next)) = format::next_record(bytes, pos) {
        let Ok(entry) = entry_of(kind, payload, pos as u64, next - pos) else {
            break;
        };
        entries.extend(entry);
        pos = next;
    }
    Ok(Scan {
        entries,
        good_len: pos,
    })
}

/// Checks a segment's header (at least [`HEADER_LEN`] bytes).
fn check_header(bytes: &[u8]) -> Result<(), Invalid> {
    if &bytes[..8] != MAGIC {
        return Err(Invalid::Corrupt("not a journal segment"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version > VERSION {
        return Err(Invalid::NewerVersion(version));
    }
    if version == 0 {
        return Err(Invalid::Corrupt("journal version 0"));
    }
    Ok(())
}

/// The entry of one whole good record of `kind` at `offset`, `len` bytes
/// long (`None` for a kind this version skips); `Err` if the record is
/// damaged although its CRC matched, where the scan stops.
fn entry_of(kind: u8, payload: &[u8], offset: u64, len: usize) -> Result<Option<Entry<'_>>, ()> {
    if !matches!(kind, NEW | REMOVE | META) {
        return Ok(None);
    }
    let id = payload
        .get(..ID_LEN)
        .and_then(|id| std::str::from_utf8(id).ok())
        .ok_or(())?;
    match kind {
        META => {
            let record = &payload[ID_LEN..];
            // Exactly one good record inside, or the journal is damaged
            // here (its CRC matched, so not torn).
            match format::next_record(record, 0) {
                Some((_, _, end)) if end == record.len() => Ok(Some(Entry::Meta { id, record })),
                _ => Err(()),
            }
        }
        NEW => Ok(Some(Entry::New {
            id,
            offset,
            len: len as u64,
            file: &payload[ID_LEN..],
        })),
        _ if payload.len() == ID_LEN => Ok(Some(Entry::Remove { id })),
        _ => Err(()),
    }
}

/// How much more of a segment [`scan_stream`] reads at a time, at least.
const READ_CHUNK: usize = 64 << 10;

/// [`scan`] over a reader, a record at a time: `visit` gets every entry
/// in order, and the buffer holds one record (and a read chunk), never the
/// whole segment. Returns where the last good record ends.
///
/// Why: a 32 MiB buffer per segment at start-up is freed again at once,
/// and the allocator then keeps much bigger blocks in its heap instead of
/// mapping them, so the index tables built during the scan fragment it
/// and the process keeps megabytes it no longer uses.
///
/// # Errors
///
/// An I/O error reading, or the first error `visit` returns; the inner
/// `Err` as for [`scan`].
pub(crate) fn scan_stream(
    mut reader: impl Read,
    visit: &mut dyn FnMut(Entry<'_>) -> io::Result<()>,
) -> io::Result<Result<u64, Invalid>> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut eof = fill(&mut reader, &mut buf, HEADER_LEN)?;
    if buf.len() < HEADER_LEN {
        return Ok(Ok(buf.len() as u64));
    }
    if let Err(invalid) = check_header(&buf) {
        return Ok(Err(invalid));
    }
    // `buf[start..]` is unparsed; `buf[0]` is at offset `base`.
    let (mut base, mut start) = (0u64, HEADER_LEN);
    loop {
        let rest = &buf[start..];
        let need = match rest.get(1..9) {
            Some(len) => u64::from_le_bytes(len.try_into().expect("8 bytes"))
                .saturating_add(RECORD_OVERHEAD as u64),
            None => RECORD_OVERHEAD as u64,
        };
        if (rest.len() as u64) < need && !eof {
            buf.drain(..start);
            base += start as u64;
            start = 0;
            let want = usize::try_from(need).unwrap_or(usize::MAX);
            eof = fill(&mut reader, &mut buf, want)?;
            continue;
        }
        let Some((kind, payload, next)) = format::next_record(&buf, start) else {
            break;
        };
        let Ok(entry) = entry_of(kind, payload, base + start as u64, next - start) else {
            break;
        };
        if let Some(entry) = entry {
            visit(entry)?;
        }
        start = next;
    }
    Ok(Ok(base + start as u64))
}

/// Reads into `buf` until it holds `want` bytes or the reader ends, a
/// chunk at a time (a damaged length is never allocated up front).
/// Returns whether the reader ended.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    while buf.len() < want.max(READ_CHUNK) {
        let old = buf.len();
        buf.resize(old + READ_CHUNK, 0);
        let read = reader.read(&mut buf[old..]);
        buf.truncate(old + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The spool file bytes inside one whole `NEW` record for `id` (as read
/// back from its offset), or `None` if the bytes are not that record.
pub(crate) fn new_record_file<'a>(record: &'a [u8], id: &str) -> Option<&'a [u8]> {
    let (kind, payload, end) = format::next_record(record, 0)?;
    (kind == NEW && end == record.len() && payload.get(..ID_LEN)? == id.as_bytes())
        .then(|| &payload[ID_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    fn new_record(id: &str, parts: &[&[u8]]) -> Vec<u8> {
        let (prefix, crc) = new_record_around(id, parts);
        let mut out = prefix;
        for p in parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&crc);
        out
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_stops_the_scan() {
        let mut seg = header().to_vec();
        let first = new_record(A, &[b"head", b"message", b"tail"]);
        seg.extend_from_slice(&first);
        seg.extend_from_slice(&remove_record(A));
        let second_at = seg.len();
        seg.extend_from_slice(&new_record(B, &[b"x"]));
        let whole = scan(&seg).unwrap();
        assert_eq!(whole.good_len, seg.len());
        assert_eq!(
            whole.entries,
            [
                Entry::New {
                    id: A,
                    offset: HEADER_LEN as u64,
                    len: first.len() as u64,
                    file: b"headmessagetail"
                },
                Entry::Remove { id: A },
                Entry::New {
                    id: B,
                    offset: second_at as u64,
                    len: (seg.len() - second_at) as u64,
                    file: b"x"
                },
            ]
        );
        assert_eq!(
            new_record_file(&seg[HEADER_LEN..HEADER_LEN + first.len()], A),
            Some(&b"headmessagetail"[..])
        );
        assert_eq!(
            new_record_file(&seg[HEADER_LEN..HEADER_LEN + first.len()], B),
            None
        );
        for cut in second_at..seg.len() {
            let torn = scan(&seg[..cut]).unwrap();
            assert_eq!(torn.entries.len(), 2, "cut at {cut}");
            assert_eq!(torn.good_len, second_at);
        }
    }

    #[test]
    fn meta_records_round_trip_and_must_hold_one_whole_record() {
        let inner = format::encode_update(&format::Update::Timestamp(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7),
        ));
        let mut seg = header().to_vec();
        seg.extend_from_slice(&new_record(A, &[b"m"]));
        seg.extend_from_slice(&meta_record(A, &inner));
        let scanned = scan(&seg).unwrap();
        assert_eq!(
            scanned.entries[1],
            Entry::Meta {
                id: A,
                record: &inner
            }
        );
        assert_eq!(scanned.good_len, seg.len());
        // A good outer CRC around a damaged inner record stops the scan
        // there, as damage does.
        let mut broken = inner;
        let last = broken.len() - 1;
        broken[last] ^= 1;
        let mut bad = header().to_vec();
        bad.extend_from_slice(&meta_record(A, &broken));
        bad.extend_from_slice(&remove_record(A));
        let scanned = scan(&bad).unwrap();
        assert!(scanned.entries.is_empty());
        assert_eq!(scanned.good_len, HEADER_LEN);
    }

    #[test]
    fn short_empty_foreign_and_newer_segments() {
        for cut in 0..HEADER_LEN {
            assert!(scan(&header()[..cut]).unwrap().entries.is_empty());
        }
        assert!(scan(&header()).unwrap().entries.is_empty());
        assert_eq!(
            scan(b"SLIMTAQ\n\x01\x00\x00\x00").unwrap_err(),
            Invalid::Corrupt("not a journal segment")
        );
        let mut newer = header();
        newer[8] = 2;
        assert_eq!(scan(&newer).unwrap_err(), Invalid::NewerVersion(2));
    }

    /// A segment of three records and where each record ends.
    fn three_records() -> (Vec<u8>, Vec<usize>) {
        let mut seg = header().to_vec();
        let mut ends = Vec::new();
        for record in [
            new_record(A, &[b"first message"]),
            remove_record(A),
            new_record(B, &[b"second", b" message"]),
        ] {
            seg.extend_from_slice(&record);
            ends.push(seg.len());
        }
        (seg, ends)
    }

    #[test]
    fn damage_anywhere_keeps_exactly_the_records_before_it() {
        use proptest::prelude::*;
        let (seg, ends) = three_records();
        let whole = scan(&seg).unwrap().entries.len();
        proptest!(|(at in HEADER_LEN..seg.len(), flip in 1u8..=255)| {
            let mut damaged = seg.clone();
            damaged[at] ^= flip;
            let scanned = scan(&damaged).unwrap();
            // Every record that ends before the damage survives; the one
            // it hits, and everything after it, is dropped (the CRC).
            let intact = ends.iter().filter(|&&end| end <= at).count();
            prop_assert_eq!(scanned.entries.len(), intact);
            prop_assert!(intact < whole);
            prop_assert_eq!(scanned.good_len, if intact == 0 { HEADER_LEN } else { ends[intact - 1] });
        });
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(tail in prop::collection::vec(any::<u8>(), 0..400))| {
            let mut seg = header().to_vec();
            seg.extend_from_slice(&tail);
            let scanned = scan(&seg).unwrap();
            prop_assert!(scanned.good_len <= seg.len());
            let _ = scan(&tail);
            let _ = new_record_file(&tail, A);
        });
    }

    #[test]
    fn segment_names_sort_by_sequence() {
        assert_eq!(segment_name(255), "00000000000000ff");
        assert_eq!(parse_segment_name("00000000000000ff"), Some(255));
        assert_eq!(parse_segment_name("ff"), None);
        assert_eq!(parse_segment_name("00000000000000fg"), None);
    }

    /// What an entry says, owned, to compare the two readers.
    fn owned(entry: &Entry<'_>) -> (u8, String, u64, u64, Vec<u8>) {
        match entry {
            Entry::New {
                id,
                offset,
                len,
                file,
            } => (NEW, (*id).to_owned(), *offset, *len, file.to_vec()),
            Entry::Remove { id } => (REMOVE, (*id).to_owned(), 0, 0, Vec::new()),
            Entry::Meta { id, record } => (META, (*id).to_owned(), 0, 0, record.to_vec()),
        }
    }

    #[test]
    fn the_streaming_reader_sees_what_the_whole_reader_sees_at_every_cut() {
        // Records bigger than a read chunk and many small ones, so the
        // stream refills inside records and between them.
        let mut segment = header().to_vec();
        let big = vec![7u8; READ_CHUNK + 1000];
        segment.extend(new_record(A, &[b"f", &big]));
        for n in 0..200u8 {
            segment.extend(meta_record(
                A,
                &format::encode_update(&format::Update::Outcome(
                    crate::queue::storage::AttemptOutcome {
                        attempts: u32::from(n),
                        ..Default::default()
                    },
                )),
            ));
        }
        segment.extend(new_record(B, &[b"g", &vec![9u8; 3 * READ_CHUNK]]));
        segment.extend(remove_record(A));
        let len = segment.len();
        let cuts = (0..len).step_by(997).chain([
            HEADER_LEN - 1,
            HEADER_LEN,
            READ_CHUNK,
            READ_CHUNK + 1,
            len - 1,
            len,
        ]);
        for cut in cuts {
            let bytes = &segment[..cut];
            let whole = scan(bytes).unwrap();
            let mut streamed = Vec::new();
            let good_len = scan_stream(bytes, &mut |e| {
                streamed.push(owned(&e));
                Ok(())
            })
            .unwrap()
            .unwrap();
            assert_eq!(good_len, whole.good_len as u64, "cut at {cut}");
            let expected: Vec<_> = whole.entries.iter().map(owned).collect();
            assert_eq!(streamed, expected, "cut at {cut}");
        }
        // A damaged header is refused the same way.
        let mut bad = segment.clone();
        bad[0] ^= 1;
        assert!(matches!(
            scan_stream(&bad[..], &mut |_| Ok(())).unwrap(),
            Err(Invalid::Corrupt(_))
        ));
    }
}
