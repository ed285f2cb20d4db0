//! The `Authentication-Results:` header field (RFC 8601): what the
//! [`Authenticate`](super::authenticate::Authenticate) policy found, written
//! as one field, and the removal of fields that claim to be ours.
//!
//! The model ([`AuthResults`]) is plain data, so the formatting is tested
//! without DNS or keys; `authenticate` maps mail-auth's outputs onto it.
//!
//! Decisions:
//! - One method per line, folded with CRLF + TAB, in the order spf, dkim
//!   (one entry per signature, in message order), dmarc, arc. A message
//!   with no result at all gets `authserv-id; none` (RFC 8601 2.2).
//! - DKIM entries carry `header.d`, `header.s` and `header.b` (the first 8
//!   characters of the signature, RFC 6008), so a reader can tell two
//!   signatures of one domain apart; a failed check carries a `reason=`.
//! - DMARC carries `header.from` (the RFC 5322.From domain) and a comment
//!   with the published policy and our disposition, in the form large
//!   receivers use: `(p=quarantine dis=quarantine)`. `dis=quarantine` is
//!   how a later stage (a sieve rule, a relay policy) learns that the
//!   message should be filed as suspicious.
//! - Values that are not a plain token or `local@domain` are quoted, and
//!   control characters are dropped: client-supplied text (a HELO, a
//!   sender) cannot add a property or break the header.
//! - Any field whose authserv-id is ours was forged by the sender or an
//!   earlier hop (RFC 8601 5): [`remove_ours`] drops it, case-insensitively,
//!   with its continuation lines. Fields of other authserv-ids stay: they
//!   are another host's trace.

use std::fmt::Write as _;

/// A method's result (RFC 8601 2.7, RFC 7208 2.6, RFC 7489 11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verified.
    Pass,
    /// Verification failed.
    Fail,
    /// SPF's "probably not authorized".
    SoftFail,
    /// Checked, no conclusion (SPF `?all`, a DKIM signature that could not
    /// be processed).
    Neutral,
    /// Nothing to check.
    None,
    /// A transient error, usually the DNS.
    TempError,
    /// A permanent error in a record or signature.
    PermError,
}

impl Verdict {
    /// The result keyword of the header.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::SoftFail => "softfail",
            Verdict::Neutral => "neutral",
            Verdict::None => "none",
            Verdict::TempError => "temperror",
            Verdict::PermError => "permerror",
        }
    }
}

/// Which SPF identity was checked (RFC 8601 2.7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfIdentity {
    /// `smtp.mailfrom`: the MAIL FROM address.
    MailFrom,
    /// `smtp.helo`: the HELO name (for the null sender).
    Helo,
}

/// The SPF result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfEntry {
    /// The result.
    pub result: Verdict,
    /// The identity checked.
    pub identity: SpfIdentity,
    /// The sender address, or the HELO name.
    pub value: String,
    /// A comment (for example why there was no check).
    pub comment: Option<String>,
}

/// The result of one DKIM signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimEntry {
    /// The result.
    pub result: Verdict,
    /// Why it did not pass.
    pub reason: Option<String>,
    /// The signing domain (`d=`), when the signature could be read.
    pub domain: Option<String>,
    /// The selector (`s=`).
    pub selector: Option<String>,
    /// The first characters of the signature (`b=`).
    pub b: Option<String>,
}

/// The DMARC result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcEntry {
    /// The result.
    pub result: Verdict,
    /// The published policy (`none`, `quarantine`, `reject`), when there
    /// was a record.
    pub policy: Option<&'static str>,
    /// What this host did about it (`none`, `quarantine`, `reject`).
    pub disposition: Option<&'static str>,
    /// The RFC 5322.From domain.
    pub header_from: Option<String>,
}

/// Everything one `Authentication-Results:` field says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResults {
    /// Our authserv-id (RFC 8601 2.5), normally the host name.
    pub authserv_id: String,
    /// SPF, if evaluated.
    pub spf: Option<SpfEntry>,
    /// One entry per DKIM signature.
    pub dkim: Vec<DkimEntry>,
    /// DMARC, if evaluated.
    pub dmarc: Option<DmarcEntry>,
    /// The ARC chain's result, if evaluated.
    pub arc: Option<Verdict>,
}

/// The header field's name.
pub const HEADER: &str = "Authentication-Results";

impl AuthResults {
    /// The field's value (without the name), folded.
    pub fn header_value(&self) -> String {
        let mut methods = Vec::new();
        if let Some(spf) = &self.spf {
            let mut m = format!("spf={}", spf.result.name());
            if let Some(c) = &spf.comment {
                let _ = write!(m, " ({})", comment(c));
            }
            let property = match spf.identity {
                SpfIdentity::MailFrom => "smtp.mailfrom",
                SpfIdentity::Helo => "smtp.helo",
            };
            let _ = write!(m, " {property}={}", pvalue(&spf.value));
            methods.push(m);
        }
        if self.dkim.is_empty() && self.spf.is_some() {
            methods.push("dkim=none".to_owned());
        }
        for dkim in &self.dkim {
            let mut m = format!("dkim={}", dkim.result.name());
            if let Some(reason) = &dkim.reason {
                let _ = write!(m, " reason={}", quoted(reason));
            }
            for (p, v) in [
                ("header.d", &dkim.domain),
                ("header.s", &dkim.selector),
                ("header.b", &dkim.b),
            ] {
                if let Some(v) = v {
                    let _ = write!(m, " {p}={}", pvalue(v));
                }
            }
            methods.push(m);
        }
        if let Some(dmarc) = &self.dmarc {
            let mut m = format!("dmarc={}", dmarc.result.name());
            let parts: Vec<String> = [("p", dmarc.policy), ("dis", dmarc.disposition)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
                .collect();
            if !parts.is_empty() {
                let _ = write!(m, " ({})", parts.join(" "));
            }
            if let Some(from) = &dmarc.header_from {
                let _ = write!(m, " header.from={}", pvalue(from));
            }
            methods.push(m);
        }
        if let Some(arc) = self.arc {
            methods.push(format!("arc={}", arc.name()));
        }
        let id = pvalue(&self.authserv_id);
        if methods.is_empty() {
            return format!("{id}; none");
        }
        format!("{id};\r\n\t{}", methods.join(";\r\n\t"))
    }
}

/// A token (RFC 2045, no tspecials) or `local-part@domain` as it is,
/// anything else as a quoted string.
fn pvalue(s: &str) -> String {
    let token = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c))
    };
    let plain = match s.rsplit_once('@') {
        Some((local, domain)) => token(local) && token(domain),
        None => token(s),
    };
    if plain { s.to_owned() } else { quoted(s) }
}

/// Comment text: `(`, `)` and `\` escaped, control characters dropped.
fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A quoted string, control characters dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `message` without the `Authentication-Results:` fields whose
/// authserv-id is `authserv_id` (compared case-insensitively, after any
/// leading comment). The body is never touched.
pub fn remove_ours(message: &[u8], authserv_id: &str) -> Vec<u8> {
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let mut out = Vec::with_capacity(message.len());
    let mut fields = Vec::new();
    let mut start = 0;
    // Split the header section into fields, continuation lines included.
    let mut i = 0;
    while i < head_end {
        let line_end =
            memchr::memmem::find(&message[i..head_end], b"\r\n").map_or(head_end, |n| i + n + 2);
        let next_starts_field = line_end >= head_end || !matches!(message[line_end], b' ' | b'\t');
        if next_starts_field {
            fields.push(&message[start..line_end]);
            start = line_end;
        }
        i = line_end;
    }
    for field in fields {
        if !is_ours(field, authserv_id) {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(&message[head_end..]);
    out
}

fn is_ours(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = String::from_utf8_lossy(&field[..colon]);
    if !name.trim().eq_ignore_ascii_case(HEADER) {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let value = strip_comments(&value);
    let id = value
        .split(|c: char| c == ';' || c.is_whitespace())
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    id.trim_matches('"').eq_ignore_ascii_case(authserv_id)
}

/// The text without RFC 5322 comments (nested, with quoted pairs).
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if depth > 0 => escaped = true,
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dkim(result: Verdict, reason: Option<&str>) -> DkimEntry {
        DkimEntry {
            result,
            reason: reason.map(str::to_owned),
            domain: Some("example.test".into()),
            selector: Some("rsa".into()),
            b: Some("AbCd+/12".into()),
        }
    }

    fn spf(result: Verdict, identity: SpfIdentity, value: &str) -> SpfEntry {
        SpfEntry {
            result,
            identity,
            value: value.into(),
            comment: None,
        }
    }

    #[test]
    fn header_values() {
        let base = AuthResults {
            authserv_id: "mx.example.test".into(),
            spf: None,
            dkim: vec![],
            dmarc: None,
            arc: None,
        };
        let cases: Vec<(AuthResults, &str)> = vec![
            (base.clone(), "mx.example.test; none"),
            (
                AuthResults {
                    spf: Some(spf(Verdict::Pass, SpfIdentity::MailFrom, "a@example.test")),
                    dkim: vec![dkim(Verdict::Pass, None)],
                    dmarc: Some(DmarcEntry {
                        result: Verdict::Pass,
                        policy: Some("reject"),
                        disposition: Some("none"),
                        header_from: Some("example.test".into()),
                    }),
                    arc: Some(Verdict::None),
                    ..base.clone()
                },
                "mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@example.test;\r\n\t\
                 dkim=pass header.d=example.test header.s=rsa header.b=\"AbCd+/12\";\r\n\t\
                 dmarc=pass (p=reject dis=none) header.from=example.test;\r\n\tarc=none",
            ),
            (
                // No signature: dkim=none; two signatures: two entries.
                AuthResults {
                    spf: Some(spf(Verdict::None, SpfIdentity::Helo, "client.test")),
                    ..base.clone()
                },
                "mx.example.test;\r\n\tspf=none smtp.helo=client.test;\r\n\tdkim=none",
            ),
            (
                AuthResults {
                    dkim: vec![
                        dkim(Verdict::Fail, Some("body hash did not verify")),
                        DkimEntry {
                            result: Verdict::Neutral,
                            reason: Some("bad \"tag\"".into()),
                            domain: None,
                            selector: None,
                            b: None,
                        },
                    ],
                    dmarc: Some(DmarcEntry {
                        result: Verdict::Fail,
                        policy: Some("quarantine"),
                        disposition: Some("quarantine"),
                        header_from: Some("example.test".into()),
                    }),
                    ..base.clone()
                },
                "mx.example.test;\r\n\t\
                 dkim=fail reason=\"body hash did not verify\" header.d=example.test header.s=rsa header.b=\"AbCd+/12\";\r\n\t\
                 dkim=neutral reason=\"bad \\\"tag\\\"\";\r\n\t\
                 dmarc=fail (p=quarantine dis=quarantine) header.from=example.test",
            ),
            (
                // Temporary errors are results like any other; no record: no comment.
                AuthResults {
                    spf: Some(SpfEntry {
                        comment: Some("DNS (timeout)".into()),
                        ..spf(Verdict::TempError, SpfIdentity::MailFrom, "a@b.test")
                    }),
                    dmarc: Some(DmarcEntry {
                        result: Verdict::TempError,
                        policy: None,
                        disposition: None,
                        header_from: Some("b.test".into()),
                    }),
                    ..base.clone()
                },
                "mx.example.test;\r\n\tspf=temperror (DNS \\(timeout\\)) smtp.mailfrom=a@b.test;\r\n\t\
                 dkim=none;\r\n\tdmarc=temperror header.from=b.test",
            ),
            (
                // Client text cannot add properties or lines.
                AuthResults {
                    spf: Some(spf(
                        Verdict::Fail,
                        SpfIdentity::Helo,
                        "x.test; dkim=pass\r\nX-Evil: 1",
                    )),
                    ..base
                },
                "mx.example.test;\r\n\tspf=fail smtp.helo=\"x.test; dkim=passX-Evil: 1\";\r\n\tdkim=none",
            ),
        ];
        for (results, want) in cases {
            assert_eq!(results.header_value(), want, "{results:?}");
        }
    }

    #[test]
    fn our_fields_are_removed_and_others_kept() {
        let cases: &[(&str, &str)] = &[
            (
                "Authentication-Results: mx.example.test; dkim=pass\r\nFrom: a@x\r\n\r\nbody\r\n",
                "From: a@x\r\n\r\nbody\r\n",
            ),
            (
                // Folded, upper case, a comment first, a version number.
                "X: 1\r\nauthentication-results: (forged) MX.Example.Test 1;\r\n\tspf=pass\r\n smtp.mailfrom=a@x\r\nFrom: a@x\r\n\r\nbody\r\n",
                "X: 1\r\nFrom: a@x\r\n\r\nbody\r\n",
            ),
            (
                // Another host's results stay; a body line looking like one too.
                "Authentication-Results: other.test; dkim=pass\r\nFrom: a@x\r\n\r\nAuthentication-Results: mx.example.test; x\r\n",
                "Authentication-Results: other.test; dkim=pass\r\nFrom: a@x\r\n\r\nAuthentication-Results: mx.example.test; x\r\n",
            ),
            (
                // A prefix of our id is someone else's.
                "Authentication-Results: mx.example.test.evil; none\r\n\r\n",
                "Authentication-Results: mx.example.test.evil; none\r\n\r\n",
            ),
            (
                "Authentication-Results: mx.example.test;none\r\n\r\n",
                "\r\n",
            ),
        ];
        for (input, want) in cases {
            let got = remove_ours(input.as_bytes(), "mx.example.test");
            assert_eq!(String::from_utf8(got).unwrap(), *want, "{input:?}");
        }
    }
}
