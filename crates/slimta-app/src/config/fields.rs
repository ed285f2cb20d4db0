//! Reading TOML values with errors that carry their key path.
//!
//! [`Section`] wraps one table and records which keys the schema asked for,
//! so the leftovers can be reported as unknown; the converters turn one value
//! into a typed one or into the message an operator reads. Nothing here stops
//! at the first error: each problem is pushed to [`Errors`] and reading goes
//! on, which is what lets `--check-config` list them all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::{Table, Value};

use super::ConfigError;

#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }
}

/// One TOML table being read. It remembers which keys the schema asked for,
/// so whatever is left over can be reported as unknown.
pub(crate) struct Section<'a> {
    path: String,
    pub(crate) table: &'a Table,
    known: BTreeSet<&'static str>,
}

impl<'a> Section<'a> {
    pub(crate) fn new(path: String, table: &'a Table) -> Self {
        Self {
            path,
            table,
            known: BTreeSet::new(),
        }
    }

    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.insert(key);
        self.table.get(key)
    }

    /// The value of `key` converted by `convert`; `None` when absent or bad
    /// (bad is recorded).
    pub(crate) fn opt<T>(
        &mut self,
        errors: &mut Errors,
        key: &'static str,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.take(key)?;
        match convert(value) {
            Ok(v) => Some(v),
            Err(message) => {
                errors.push(self.key_path(key), message);
                None
            }
        }
    }

    pub(crate) fn or<T>(
        &mut self,
        errors: &mut Errors,
        key: &'static str,
        default: T,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> T {
        self.opt(errors, key, convert).unwrap_or(default)
    }

    pub(crate) fn required<T>(
        &mut self,
        errors: &mut Errors,
        key: &'static str,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        if !self.table.contains_key(key) {
            self.known.insert(key);
            errors.push(self.key_path(key), "missing required key");
            return None;
        }
        self.opt(errors, key, convert)
    }

    /// An array whose items are each converted; a bad item is reported
    /// as `key[i]`.
    pub(crate) fn list<T>(
        &mut self,
        errors: &mut Errors,
        key: &'static str,
        convert: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let value = self.take(key)?;
        let path = self.key_path(key);
        let Value::Array(items) = value else {
            errors.push(path, expected("an array", value));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match convert(item) {
                Ok(v) => out.push(v),
                Err(message) => errors.push(format!("{path}[{i}]"), message),
            }
        }
        Some(out)
    }

    /// A sub-table, for keys such as `retry` or `force_mx`.
    pub(crate) fn table(&mut self, errors: &mut Errors, key: &'static str) -> Option<Section<'a>> {
        let value = self.take(key)?;
        match value {
            Value::Table(t) => Some(Section::new(self.key_path(key), t)),
            other => {
                errors.push(self.key_path(key), expected("a table", other));
                None
            }
        }
    }

    /// The keys asked for so far (read or not).
    pub(crate) fn asked(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.known.iter().copied()
    }

    /// Reports every key the schema did not ask for. `elsewhere` are keys
    /// valid for other types of the same section, for a clearer message.
    pub(crate) fn finish(self, errors: &mut Errors, elsewhere: &[&str], kind: Option<&str>) {
        for key in self.table.keys() {
            if self.known.contains(key.as_str()) {
                continue;
            }
            let message = match kind {
                Some(kind) if elsewhere.contains(&key.as_str()) => {
                    format!("unknown key for type \"{kind}\"")
                }
                _ => {
                    let known: Vec<&str> = self.known.iter().copied().collect();
                    format!("unknown key (expected one of: {})", known.join(", "))
                }
            };
            errors.push(self.key_path(key), message);
        }
    }
}

pub(crate) fn expected(what: &str, found: &Value) -> String {
    format!("expected {what}, found {}", found.type_str())
}

pub(crate) fn string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(expected("a string", other)),
    }
}

pub(crate) fn non_empty_string(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s)
    }
}

pub(crate) fn boolean(value: &Value) -> Result<bool, String> {
    value.as_bool().ok_or_else(|| expected("a boolean", value))
}

/// An integer within `min..=max`.
pub(crate) fn integer(min: u64, max: u64) -> impl Fn(&Value) -> Result<u64, String> {
    move |value| {
        let i = value
            .as_integer()
            .ok_or_else(|| expected("an integer", value))?;
        match u64::try_from(i) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("must be between {min} and {max}, found {i}")),
        }
    }
}

pub(crate) fn count(value: &Value) -> Result<usize, String> {
    // Counts are at least 1: a limit of zero would refuse everything.
    let n = integer(1, u32::MAX.into())(value)?;
    usize::try_from(n).map_err(|_| format!("too large: {n}"))
}

pub(crate) fn port(value: &Value) -> Result<u16, String> {
    integer(1, 65535)(value).map(|n| u16::try_from(n).unwrap_or(u16::MAX))
}

pub(crate) fn float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Float(f) => Ok(*f),
        // Integers are accepted for floats: `factor = 2` means 2.0.
        Value::Integer(i) => Ok(*i as f64),
        other => Err(expected("a number", other)),
    }
}

pub(crate) fn duration(value: &Value) -> Result<Duration, String> {
    let s = value
        .as_str()
        .ok_or_else(|| expected("a duration string such as \"300s\"", value))?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration \"{s}\" (expected e.g. \"300s\", \"5m\", \"5d\"): {e}")
    })
}

pub(crate) fn positive_duration(value: &Value) -> Result<Duration, String> {
    let d = duration(value)?;
    if d.is_zero() {
        Err("must be longer than zero".to_owned())
    } else {
        Ok(d)
    }
}

pub(crate) fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    let s = string(value)?;
    s.trim().parse().map_err(|_| {
        format!(
            "invalid socket address \"{s}\" (expected IP:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\")"
        )
    })
}

pub(crate) fn nameserver(value: &Value) -> Result<SocketAddr, String> {
    let s = string(value)?;
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse().map_err(|_| {
        format!("invalid nameserver \"{s}\" (expected IP or IP:PORT, e.g. \"127.0.0.1:5353\")")
    })
}

pub(crate) fn ip_addr(value: &Value) -> Result<IpAddr, String> {
    let s = string(value)?;
    s.trim()
        .parse()
        .map_err(|_| format!("invalid IP address \"{s}\""))
}

/// A domain or host name, lowercased and without a trailing dot.
pub(crate) fn domain(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    check_domain(&s).map_err(|why| format!("invalid domain \"{s}\": {why}"))
}

/// A table keyed by domain names (`force_mx`, `domain_concurrency`): each
/// key checked and lower-cased, each value read with `value`; every bad key
/// or value is reported with its path and left out.
pub(crate) fn domain_keyed<T>(
    s: &Section<'_>,
    errors: &mut Errors,
    value: impl Fn(&Value) -> Result<T, String>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for (key, v) in s.table {
        let path = s.key_path(&format!("\"{key}\""));
        let domain = match check_domain(key) {
            Ok(d) => d,
            Err(why) => {
                errors.push(path, format!("invalid domain \"{key}\": {why}"));
                continue;
            }
        };
        match value(v) {
            Ok(v) => {
                out.insert(domain, v);
            }
            Err(message) => errors.push(path, message),
        }
    }
    out
}

pub(crate) fn check_domain(s: &str) -> Result<String, &'static str> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 characters");
        }
        // Non-ASCII is allowed for internationalized names (SMTPUTF8).
        if !label
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        {
            return Err("only letters, digits, '-' and '_' are allowed in a label");
        }
    }
    Ok(name)
}

pub(crate) fn email_address(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    let bad = || format!("invalid address \"{s}\" (expected local@domain, without <>)");
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>')
    {
        return Err(bad());
    }
    check_domain(domain).map_err(|_| bad())?;
    Ok(s)
}

pub(crate) const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

pub(crate) fn log_level(value: &Value) -> Result<String, String> {
    let s = non_empty_string(value)?;
    // EnvFilter takes a bare unknown word as a target name, so a typo such
    // as "inf" would silently log nothing; insist on a level in each
    // directive.
    for directive in s.split(',').map(str::trim) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid log level \"{s}\": \"{directive}\" has no level (expected one of: {})",
                quoted(&LEVELS)
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&s)
        .map(|_| s.clone())
        .map_err(|e| {
            format!(
                "invalid log level \"{s}\" (expected e.g. \"info\" or \"info,slimta=debug\"): {e}"
            )
        })
}

/// A reply table, `{ code = 550, message = "5.7.1 ... {name}" }`, whose
/// placeholders must be among `known` (see [`slimta::reply_template`]).
pub(crate) fn reply_template<'k>(
    known: &'k [&'k str],
) -> impl Fn(&Value) -> Result<slimta::reply_template::ReplyTemplate, String> + 'k {
    move |value| {
        let Value::Table(table) = value else {
            return Err(expected(
                "a table like { code = 550, message = \"5.7.1 ...\" }",
                value,
            ));
        };
        if let Some(extra) = table
            .keys()
            .find(|k| !matches!(k.as_str(), "code" | "message"))
        {
            return Err(format!(
                "unknown key \"{extra}\" (expected code and message)"
            ));
        }
        let code = table
            .get("code")
            .ok_or("missing code")
            .map_err(str::to_owned)
            .and_then(integer(200, 599))?;
        let message = table
            .get("message")
            .ok_or("missing message")
            .map_err(str::to_owned)
            .and_then(string)?;
        let code = u16::try_from(code).map_err(|e| e.to_string())?;
        let template = slimta::reply_template::ReplyTemplate::new(code, &message)
            .map_err(|e| e.to_string())?;
        template.check_names(known).map_err(|e| e.to_string())?;
        Ok(template)
    }
}

/// One of `choices`, reported with the list when wrong.
pub(crate) fn choice<'c>(choices: &'c [&'c str]) -> impl Fn(&Value) -> Result<&'c str, String> {
    move |value| {
        let s = string(value)?;
        choices.iter().copied().find(|c| *c == s).ok_or_else(|| {
            format!(
                "unknown value \"{s}\" (expected one of: {})",
                quoted(choices)
            )
        })
    }
}

pub(crate) fn quoted(choices: &[&str]) -> String {
    choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
