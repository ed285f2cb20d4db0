//! [`ReplyTemplate`]: an SMTP reply an operator writes once, with
//! placeholders filled per session (`550 5.7.1 Access denied: {reason}`).
//!
//! Checks and policies that refuse (SPF, DNS lists, address rules) let the
//! operator choose the reply, as python-slimta's
//! `EnforceSpf.set_enforcement('fail', match_message='5.7.1 Access denied:
//! {reason}')` did.
//!
//! Decisions:
//! - The message may start with an enhanced status code (`5.7.1 ...`),
//!   which becomes the reply's enhanced code; without one the reply has
//!   none.
//! - Placeholders are `{name}` with a name of letters, digits and `_`;
//!   `{{` and `}}` are literal braces. Which names exist is up to the user
//!   of the template: [`ReplyTemplate::check_names`] refuses any other, so
//!   a typo is a configuration error, not a literal `{resaon}` in a reply.
//! - Filled values are stripped of CR and LF (a value from the DNS or the
//!   client must not end the reply line or start a new one), and capped
//!   at 400 bytes each so a reply stays within RFC 5321's 512-byte line.

use std::fmt;

use crate::reply::{EnhancedCode, Reply};

/// The longest a filled-in value may be, in bytes.
const MAX_VALUE: usize = 400;

/// A reply with `{placeholders}`; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTemplate {
    code: u16,
    enhanced: Option<EnhancedCode>,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Name(String),
}

/// Why a template was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

impl ReplyTemplate {
    /// A template answering `code` with `message`.
    ///
    /// # Errors
    ///
    /// A code outside 200-599, an enhanced code whose class differs from
    /// the code's, an unclosed `{`, a stray `}`, an empty or malformed
    /// placeholder name, or a CR or LF in the message.
    pub fn new(code: u16, message: &str) -> Result<Self, TemplateError> {
        if !(200..=599).contains(&code) {
            return Err(TemplateError(format!(
                "reply code {code} is not between 200 and 599"
            )));
        }
        if message.contains(['\r', '\n']) {
            return Err(TemplateError(
                "a reply message is one line (no CR or LF)".into(),
            ));
        }
        let (first, rest) = message.split_once(' ').unwrap_or((message, ""));
        let (enhanced, text) = match first.parse::<EnhancedCode>() {
            Ok(e) => (Some(e), rest),
            Err(()) => (None, message),
        };
        if let Some(e) = enhanced
            && u16::from(e.class) != code / 100
        {
            return Err(TemplateError(format!(
                "enhanced code {e} does not match reply code {code} (class {})",
                code / 100
            )));
        }
        Ok(Self {
            code,
            enhanced,
            parts: parse(text)?,
        })
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The placeholder names used, in order of first use.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Name(name) = part
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// Refuses placeholders not in `known`.
    ///
    /// # Errors
    ///
    /// Names the first unknown placeholder and the known ones.
    pub fn check_names(&self, known: &[&str]) -> Result<(), TemplateError> {
        match self.names().into_iter().find(|n| !known.contains(n)) {
            None => Ok(()),
            Some(unknown) => {
                let known: Vec<String> = known.iter().map(|k| format!("{{{k}}}")).collect();
                Err(TemplateError(format!(
                    "unknown placeholder {{{unknown}}} (this reply can use: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )))
            }
        }
    }

    /// The reply, with every placeholder replaced by `value(name)` (an
    /// unknown name by nothing).
    pub fn render(&self, value: impl Fn(&str) -> Option<String>) -> Reply {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Name(name) => {
                    let filled = value(name).unwrap_or_default();
                    let clean: String = filled
                        .chars()
                        .filter(|c| !matches!(c, '\r' | '\n'))
                        .collect();
                    let mut end = clean.len().min(MAX_VALUE);
                    while !clean.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.push_str(&clean[..end]);
                }
            }
        }
        Reply::from_parts(self.code, self.enhanced, text)
    }
}

fn parse(text: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                        Some(c) => {
                            return Err(TemplateError(format!(
                                "placeholder names use letters, digits and _ (found {c:?}); write {{{{ for a literal brace"
                            )));
                        }
                        None => return Err(TemplateError("unclosed { in the reply".into())),
                    }
                }
                if name.is_empty() {
                    return Err(TemplateError("empty placeholder {} in the reply".into()));
                }
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Name(name));
            }
            '}' => {
                return Err(TemplateError(
                    "stray } in the reply (write }} for a literal brace)".into(),
                ));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_placeholders_and_keeps_the_enhanced_code() {
        let t = ReplyTemplate::new(550, "5.7.1 Access denied: {reason}").unwrap();
        assert_eq!(t.names(), vec!["reason"]);
        let r = t.render(|n| (n == "reason").then(|| "not allowed\r\nRSET".to_owned()));
        assert_eq!(r.code(), 550);
        assert_eq!(r.enhanced().unwrap().to_string(), "5.7.1");
        assert_eq!(r.text(), "Access denied: not allowedRSET");
    }

    #[test]
    fn table_of_templates() {
        let cases: &[(u16, &str, Result<&str, &str>)] = &[
            (250, "2.0.0 Ok; {reason}", Ok("Ok; R")),
            (451, "4.7.1 {a}{a} {{literal}}", Ok("AA {literal}")),
            (550, "no enhanced code {a}", Ok("no enhanced code A")),
            (550, "{a", Err("unclosed")),
            (550, "a}", Err("stray")),
            (550, "{}", Err("empty")),
            (550, "{a b}", Err("letters")),
            (550, "4.7.1 wrong class", Err("does not match")),
            (600, "x", Err("between")),
        ];
        for (code, message, want) in cases {
            let got = ReplyTemplate::new(*code, message).map(|t| {
                t.render(|n| Some(if n == "reason" { "R" } else { "A" }.to_owned()))
                    .text()
                    .to_owned()
            });
            match (want, got) {
                (Ok(text), Ok(got)) => assert_eq!(&got, text, "{message}"),
                (Err(part), Err(e)) => assert!(e.to_string().contains(part), "{message}: {e}"),
                (want, got) => panic!("{message}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn unknown_names_are_refused() {
        let t = ReplyTemplate::new(550, "5.7.1 {ip} {lists} {resaon}").unwrap();
        assert!(
            t.check_names(&["ip", "lists", "reason"])
                .unwrap_err()
                .to_string()
                .contains("{resaon}")
        );
        assert!(t.check_names(&["ip", "lists", "resaon"]).is_ok());
    }

    #[test]
    fn long_values_are_capped() {
        let t = ReplyTemplate::new(550, "5.7.1 {v}").unwrap();
        let r = t.render(|_| Some("é".repeat(300)));
        assert!(r.text().len() <= MAX_VALUE);
    }
}
