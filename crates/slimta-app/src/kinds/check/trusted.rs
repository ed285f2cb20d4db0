//! The `trusted` key of the SPF and DNS list checks: clients that are
//! never judged (besides authenticated ones).
//!
//! Decision: the default is loopback (`127.0.0.0/8`, `::1`), like
//! Postfix's `permit_mynetworks` before its policy checks: local programs
//! submitting through loopback would otherwise fail their own domain's
//! SPF. `trusted = []` judges every client (a benchmark or a test on
//! loopback needs that), and an operator adds the networks of their own
//! hosts.

use slimta::edge::ip_range::IpRange;

use crate::config::fields::{Errors, Section, string};

/// Trusted when the key is absent.
pub(super) const DEFAULT: [&str; 2] = ["127.0.0.0/8", "::1"];

/// Reads `trusted` (addresses or CIDR blocks); `None` if it had errors.
pub(super) fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Vec<IpRange>> {
    let before = errors.0.len();
    let ranges = s.list(errors, "trusted", |v| string(v)?.parse::<IpRange>());
    if errors.0.len() > before {
        return None;
    }
    Some(ranges.unwrap_or_else(|| {
        DEFAULT
            .iter()
            .map(|r| r.parse().expect("a valid range"))
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<Vec<IpRange>, Vec<String>> {
        let table: toml::Table = text.parse().unwrap();
        let mut errors = Errors::default();
        let mut s = Section::new("check.c".into(), &table);
        let got = read(&mut s, &mut errors);
        got.ok_or_else(|| errors.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_to_loopback_and_may_be_emptied_or_listed() {
        let loopback = read_text("").unwrap();
        assert_eq!(loopback.len(), 2);
        assert!(loopback[0].contains("127.0.0.9".parse().unwrap()));
        assert!(read_text("trusted = []").unwrap().is_empty());
        let own = read_text(r#"trusted = ["192.0.2.0/24", "2001:db8::1"]"#).unwrap();
        assert!(own[0].contains("192.0.2.77".parse().unwrap()));
        assert!(!own[0].contains("127.0.0.1".parse().unwrap()));
        let bad = read_text(r#"trusted = ["192.0.2.0/33"]"#).unwrap_err();
        assert!(bad[0].starts_with("check.c.trusted[0]"), "{bad:?}");
    }
}
