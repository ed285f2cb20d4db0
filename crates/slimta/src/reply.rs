//! SMTP replies: a three-digit code, an optional enhanced status code
//! (RFC 3463) and human-readable text that may span several lines.
//!
//! Every part of slimta speaks in [`Reply`] values: the server state machine
//! answers commands with them, validators rewrite them, the queue answers the
//! edge with them and relays report remote answers through them. Keeping one
//! type means a remote `452 4.2.2` can travel from a relay into a bounce
//! without being re-encoded.
//!
//! Design decision: when a reply's code is changed (a validator turns a `250`
//! into a `550`), the class digit of the enhanced status code follows the code
//! when rendered, so `2.1.0` is written as `5.1.0`. A reply can never say
//! "success" in its enhanced code and "failure" in its basic code.

use std::fmt;
use std::str::FromStr;

/// An enhanced mail system status code (RFC 3463), `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject sub-code (0-999).
    pub subject: u16,
    /// The detail sub-code (0-999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }
}

impl FromStr for EnhancedCode {
    type Err = ();

    /// Parses `"2.1.0"`; rejects anything that is not `[245].[0-9]{1,3}.[0-9]{1,3}`.
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('.');
        let class = parts.next().ok_or(())?;
        let subject = parts.next().ok_or(())?;
        let detail = parts.next().ok_or(())?;
        if parts.next().is_some() {
            return Err(());
        }
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(class, 1) || !digits(subject, 3) || !digits(detail, 3) {
            return Err(());
        }
        let class: u8 = class.parse().map_err(|_| ())?;
        if !matches!(class, 2 | 4 | 5) {
            return Err(());
        }
        Ok(Self {
            class,
            subject: subject.parse().map_err(|_| ())?,
            detail: detail.parse().map_err(|_| ())?,
        })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// An SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: String,
}

impl Reply {
    /// Builds a reply. `enhanced` is an RFC 3463 code such as `"2.1.0"`, or
    /// `""` for none; an unparsable code is dropped (and asserted in debug
    /// builds, since it is a programming error).
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        let enhanced = if enhanced.is_empty() {
            None
        } else {
            let parsed = enhanced.parse().ok();
            debug_assert!(parsed.is_some(), "bad enhanced status code {enhanced:?}");
            parsed
        };
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// Builds a reply from already parsed parts (used by reply parsers).
    pub fn from_parts(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, with its class digit matching [`Reply::code`].
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced.map(|e| EnhancedCode {
            class: self.class(),
            ..e
        })
    }

    /// The text, lines separated by `\n`, without codes.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Replaces the code (the enhanced code's class follows it when rendered).
    pub fn set_code(&mut self, code: u16) {
        self.code = code;
    }

    /// Replaces the enhanced status code (`""` removes it).
    pub fn set_enhanced(&mut self, enhanced: &str) {
        self.enhanced = enhanced.parse().ok();
    }

    /// Replaces the text.
    pub fn set_text(&mut self, text: impl Into<String>) {
        self.text = text.into();
    }

    /// Replaces code, enhanced code and text at once.
    pub fn set(&mut self, code: u16, enhanced: &str, text: impl Into<String>) {
        *self = Self::new(code, enhanced, text);
    }

    fn class(&self) -> u8 {
        // Codes outside 200-599 are invalid SMTP but keep the arithmetic total.
        u8::try_from(self.code / 100).unwrap_or(5)
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// 221 and 421 end the session after they are sent.
    pub fn closes_session(&self) -> bool {
        matches!(self.code, 221 | 421)
    }

    /// Writes the reply in wire form: one `code-` line per text line and a
    /// final `code ` line, each with the enhanced code, each ending in CRLF.
    /// CR and LF inside the text never reach the wire except as line breaks.
    pub fn render_into(&self, out: &mut Vec<u8>) {
        // Hot path (every reply of every session): plain byte appends, no
        // formatting machinery and no allocation.
        let mut code = [0u8; 3];
        // Always three digits on the wire, even for a nonsensical code.
        push_decimal(&mut ArrayWriter(&mut code, 0), self.code.clamp(100, 999));
        let mut enhanced = [0u8; 12];
        let mut enhanced_len = 0;
        if let Some(e) = self.enhanced() {
            let mut w = ArrayWriter(&mut enhanced, 0);
            push_decimal(&mut w, u16::from(e.class));
            w.push(b'.');
            push_decimal(&mut w, e.subject);
            w.push(b'.');
            push_decimal(&mut w, e.detail);
            enhanced_len = w.1;
        }
        let mut lines = self
            .text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .peekable();
        loop {
            let line = lines.next().unwrap_or("");
            let last = lines.peek().is_none();
            out.extend_from_slice(&code);
            out.push(if last { b' ' } else { b'-' });
            if enhanced_len > 0 {
                out.extend_from_slice(&enhanced[..enhanced_len]);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            // A CR inside a line would end it early on the wire.
            out.extend(line.bytes().map(|b| if b == b'\r' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
            if last {
                break;
            }
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.render_into(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    /// One line: `550 5.7.1 text`, with multi-line text joined by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced() {
            write!(f, " {e}")?;
        }
        for (i, line) in self.text.split('\n').enumerate() {
            let line = line.trim_end_matches('\r');
            if i == 0 || !line.is_empty() {
                write!(f, " {line}")?;
            }
        }
        Ok(())
    }
}

/// A fixed buffer being filled (for rendering numbers without allocating).
struct ArrayWriter<'a>(&'a mut [u8], usize);

impl ArrayWriter<'_> {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.0.get_mut(self.1) {
            *slot = b;
            self.1 += 1;
        }
    }
}

/// Writes `n` in decimal (no leading zeros).
fn push_decimal(w: &mut ArrayWriter<'_>, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        w.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_single_and_multi_line() {
        let cases: &[(Reply, &str)] = &[
            (Reply::new(250, "2.1.0", "Ok"), "250 2.1.0 Ok\r\n"),
            (
                Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"),
                "354 End data with <CR><LF>.<CR><LF>\r\n",
            ),
            (
                Reply::new(250, "", "mx.example.test\nPIPELINING\nSIZE 100"),
                "250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
            ),
            (
                Reply::new(214, "2.0.0", "a\nb"),
                "214-2.0.0 a\r\n214 2.0.0 b\r\n",
            ),
            (Reply::new(250, "2.0.0", ""), "250 2.0.0\r\n"),
            (
                Reply::new(550, "5.7.1", "evil\rtext"),
                "550 5.7.1 evil text\r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(
                String::from_utf8(reply.to_bytes()).unwrap(),
                *wire,
                "{reply:?}"
            );
        }
    }

    #[test]
    fn enhanced_class_follows_code() {
        let mut r = Reply::new(250, "2.1.5", "Ok");
        r.set_code(550);
        assert_eq!(r.to_bytes(), b"550 5.1.5 Ok\r\n");
        assert_eq!(r.enhanced(), Some(EnhancedCode::new(5, 1, 5)));
        assert!(r.is_permanent() && !r.is_positive());
    }

    #[test]
    fn parses_enhanced_codes_strictly() {
        assert_eq!("4.4.2".parse(), Ok(EnhancedCode::new(4, 4, 2)));
        assert_eq!("5.1.10".parse(), Ok(EnhancedCode::new(5, 1, 10)));
        for bad in [
            "", "2", "2.1", "3.0.0", "2.1.0.0", "2.1000.0", "a.b.c", "2..0",
        ] {
            assert!(bad.parse::<EnhancedCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_is_one_line() {
        let r = Reply::new(421, "4.4.2", "a\nb");
        assert_eq!(r.to_string(), "421 4.4.2 a b");
        assert!(r.closes_session());
    }
}
