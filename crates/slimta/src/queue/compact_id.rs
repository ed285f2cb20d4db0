//! [`CompactId`]: a storage id as the in-memory indexes keep it.
//!
//! A queue with a big backlog keeps one index entry per message, so the
//! size of an id matters: the disk spool's ids are 32 lower-case hex digits,
//! which as a `String` cost a 24-byte header and a 32-byte heap block (48
//! with the allocator's rounding) per copy. As 16 raw bytes they cost
//! nothing on the heap. Ids of any other shape (other storages choose their
//! own) are kept as a shared `Arc<str>`, cloned without copying.
//!
//! The conversion is exact both ways: only ids that print back to the same
//! text are packed.

use std::fmt;
use std::sync::Arc;

/// A storage id, packed when it is 32 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum CompactId {
    Hex([u8; 16]),
    Text(Arc<str>),
}

impl CompactId {
    pub(crate) fn new(id: &str) -> Self {
        match pack_hex(id) {
            Some(bytes) => Self::Hex(bytes),
            None => Self::Text(id.into()),
        }
    }
}

fn pack_hex(id: &str) -> Option<[u8; 16]> {
    let digits = id.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (k, pair) in digits.chunks_exact(2).enumerate() {
        out[k] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hex(bytes) => bytes.iter().try_for_each(|b| write!(f, "{b:02x}")),
            Self::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_pack_and_print_back_exactly() {
        let id = "0123456789abcdef0123456789abcdef";
        let packed = CompactId::new(id);
        assert!(matches!(packed, CompactId::Hex(_)));
        assert_eq!(packed.to_string(), id);
        assert_eq!(packed, CompactId::new(id));
    }

    #[test]
    fn other_ids_stay_text() {
        for id in [
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "msg-1",
            "",
        ] {
            let kept = CompactId::new(id);
            assert!(matches!(kept, CompactId::Text(_)), "{id}");
            assert_eq!(kept.to_string(), id);
        }
    }

    #[test]
    fn it_is_small() {
        assert!(std::mem::size_of::<CompactId>() <= 24);
    }
}
