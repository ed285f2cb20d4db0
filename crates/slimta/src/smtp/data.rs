//! The DATA reader: finds the end of message and undoes dot-stuffing,
//! smuggling-safe (CVE-2023-51764/5/6).
//!
//! Decisions (project-wide: the SMTP edge, the LMTP edge and the relay
//! client's DATA encoder follow the same rules):
//! - Only `<CRLF>.<CRLF>` ends the data; `.<CRLF>` at the very start of the
//!   data (directly after the 354) ends an empty message. Bare CR and bare LF
//!   are content: they never end a line, never start one, never end the
//!   message. Every byte is kept exactly as received, except a stuffed dot.
//! - Dot-unstuffing (RFC 5321 4.5.2) removes a `.` that starts a line, where
//!   a line starts at the beginning of the data or after CRLF. Because bare
//!   CR/LF are content, `\r\n.\r` + `X` yields `\r\n\rX` (the dot removed,
//!   the CR kept).
//! - Text lines are measured between CRLFs, including the CRLF and any
//!   stuffed dot (the wire length). One line over the limit marks the
//!   message; the server answers it with 554 5.6.0 after the final dot
//!   instead of queueing it, so the client still gets exactly one reply.
//! - [`Body`] stops storing at its size limit and only counts, so memory
//!   never exceeds `max_size` whatever the client sends.
//!
//! The reader is a five-state machine that is resumable at every byte, so a
//! `CRLF.CRLF` split across reads at any position is found. The common path
//! (text between CRs) is found with `memchr` and copied as a slice: the cost
//! is one search and one copy per line, never per byte.

use memchr::memchr;

/// Message bytes collected up to a size limit; beyond it they are counted
/// and discarded.
#[derive(Debug, Default)]
pub struct Body {
    data: Vec<u8>,
    size: u64,
    max: usize,
}

impl Body {
    /// An empty body that keeps at most `max` octets.
    pub fn new(max: usize) -> Self {
        Self {
            data: Vec::new(),
            size: 0,
            max,
        }
    }

    /// Appends `bytes`, or only counts them once the limit was passed.
    pub fn push(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.exceeded() {
            // Release what was kept: the message will be refused anyway.
            if !self.data.is_empty() {
                self.data = Vec::new();
            }
        } else {
            self.data.extend_from_slice(bytes);
        }
    }

    /// Octets received so far (kept or not).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether more than the limit was received.
    pub fn exceeded(&self) -> bool {
        self.size > self.max as u64
    }

    /// The kept bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the kept bytes, leaving the body empty.
    pub fn take(&mut self) -> Vec<u8> {
        self.size = 0;
        std::mem::take(&mut self.data)
    }
}

/// Position of the reader in the line structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Inside a line, the previous byte was not CR.
    Text,
    /// The previous byte was CR (already stored) and the line is not known
    /// to have ended.
    Cr,
    /// At the start of a line (data start or after CRLF).
    LineStart,
    /// Saw `.` at the start of a line (not stored).
    Dot,
    /// Saw `.` CR at the start of a line (neither stored).
    DotCr,
}

/// Reads DATA content up to and including the terminating `CRLF.CRLF`.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    line_len: usize,
    max_line: usize,
    long_line: bool,
}

impl DataReader {
    /// A reader positioned directly after the 354 reply. `max_line` is the
    /// longest allowed text line including CRLF; 0 disables the check.
    pub fn new(max_line: usize) -> Self {
        Self {
            state: State::LineStart,
            line_len: 0,
            max_line,
            long_line: false,
        }
    }

    /// Whether a text line longer than the limit was seen.
    pub fn long_line(&self) -> bool {
        self.long_line
    }

    fn end_line(&mut self, len: usize) {
        if self.max_line != 0 && len > self.max_line {
            self.long_line = true;
        }
        self.line_len = 0;
    }

    /// Feeds received bytes, storing the unstuffed content in `body`.
    ///
    /// Returns `Some(n)` when the end of data was found, `n` being the octets
    /// of `input` consumed including the terminator (the rest is the next
    /// command); `None` when all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8], body: &mut Body) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Text => {
                    let rest = &input[i..];
                    match memchr(b'\r', rest) {
                        None => {
                            body.push(rest);
                            self.line_len = self.line_len.saturating_add(rest.len());
                            i = input.len();
                        }
                        Some(j) if rest.get(j + 1) == Some(&b'\n') => {
                            body.push(&rest[..j + 2]);
                            self.end_line(self.line_len.saturating_add(j + 2));
                            i += j + 2;
                            self.state = State::LineStart;
                        }
                        Some(j) => {
                            body.push(&rest[..=j]);
                            self.line_len = self.line_len.saturating_add(j + 1);
                            i += j + 1;
                            self.state = State::Cr;
                        }
                    }
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        body.push(b"\n");
                        self.end_line(self.line_len.saturating_add(1));
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::LineStart => {
                    if input[i] == b'.' {
                        i += 1;
                        self.line_len = 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        self.line_len = 2;
                        self.state = State::DotCr;
                    } else {
                        // A stuffed dot: dropped, the rest of the line is text.
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::LineStart;
                        return Some(i + 1);
                    }
                    // `.` CR X at a line start: the dot was stuffing, the CR
                    // is content (a bare CR), X is looked at as text.
                    body.push(b"\r");
                    self.state = State::Text;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces cut at `cuts`; returns (data, consumed, long).
    fn read(input: &[u8], cuts: &[usize], max_line: usize) -> (Vec<u8>, Option<usize>, bool) {
        let mut reader = DataReader::new(max_line);
        let mut body = Body::new(usize::MAX);
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
        bounds.push(input.len());
        for end in bounds {
            if end < start {
                continue;
            }
            if let Some(n) = reader.feed(&input[start..end], &mut body) {
                return (body.take(), Some(start + n), reader.long_line());
            }
            start = end;
        }
        (body.take(), None, reader.long_line())
    }

    #[test]
    fn unstuffs_and_ends_only_at_crlf_dot_crlf() {
        let cases: &[(&[u8], &[u8], Option<usize>)] = &[
            (b".\r\n", b"", Some(3)),
            (b".\r\nMAIL", b"", Some(3)),
            (b"a\r\n.\r\n", b"a\r\n", Some(6)),
            (b"\r\n.\r\n", b"\r\n", Some(5)),
            (b"..\r\n.\r\n", b".\r\n", Some(7)),
            (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n", Some(11)),
            (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", Some(10)),
            (b"a.\r\n.\r\n", b"a.\r\n", Some(7)),
            (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", Some(10)),
            (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", Some(10)),
            (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n", Some(11)),
            (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n", Some(10)),
            (b"a\r\n.\r.\r\n.\r\n", b"a\r\n\r.\r\n", Some(11)),
            (b"a\r\r\n.\r\n", b"a\r\r\n", Some(7)),
            (b"a\r\n\0.\r\n.\r\n", b"a\r\n\0.\r\n", Some(10)),
            (b"a\r\n.\0\r\n.\r\n", b"a\r\n\0\r\n", Some(10)),
            (b".", b"", None),
            (b"a\r\n.", b"a\r\n", None),
            (b"a\r\n.\r", b"a\r\n", None),
            (b"a\r\n", b"a\r\n", None),
            (b"\n.\n", b"\n.\n", None),
            (b"a\r\n.\n", b"a\r\n\n", None),
        ];
        for &(input, data, consumed) in cases {
            let whole = read(input, &[], 0);
            assert_eq!(
                (whole.0.as_slice(), whole.1),
                (data, consumed),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            // The same at every single split position and one byte at a time.
            for cut in 0..input.len() {
                let split = read(input, &[cut], 0);
                assert_eq!(
                    (split.0.as_slice(), split.1),
                    (data, consumed),
                    "cut {cut} of {input:?}"
                );
            }
            let all: Vec<usize> = (0..input.len()).collect();
            let bytewise = read(input, &all, 0);
            assert_eq!(
                (bytewise.0.as_slice(), bytewise.1),
                (data, consumed),
                "bytewise {input:?}"
            );
        }
    }

    #[test]
    fn measures_lines_between_crlfs() {
        let line = |n: usize| {
            let mut v = vec![b'a'; n - 2];
            v.extend_from_slice(b"\r\n.\r\n");
            v
        };
        assert!(!read(&line(1000), &[], 1000).2);
        assert!(read(&line(1001), &[], 1000).2);
        assert!(!read(&line(1001), &[], 0).2, "0 disables the check");
        // A stuffed dot counts (wire length); bare LF does not end a line.
        let mut stuffed = vec![b'.'; 999];
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert!(read(&stuffed, &[], 1000).2);
        let mut bare = vec![b'a'; 600];
        bare.push(b'\n');
        bare.extend_from_slice(&[b'b'; 600]);
        bare.extend_from_slice(b"\r\n.\r\n");
        assert!(read(&bare, &[7, 601, 900], 1000).2);
    }

    #[test]
    fn body_counts_past_its_limit_without_keeping() {
        let mut body = Body::new(4);
        body.push(b"abcd");
        assert!(!body.exceeded());
        assert_eq!(body.data(), b"abcd");
        body.push(b"e");
        assert!(body.exceeded());
        assert_eq!(body.data(), b"");
        body.push(&[0; 100]);
        assert_eq!(body.size(), 105);
        assert_eq!(body.data().len(), 0);
    }
}
