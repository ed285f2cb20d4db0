//! Walks the parsed TOML table section by section into [`Config`].
//!
//! Each `read_*` function reads one kind of section with [`Section`] and
//! pushes every problem to [`Errors`]; references between sections (an
//! edge's queue, a queue's relay) are checked against the names present in
//! the file, even when the named section has errors of its own, so one
//! mistake is reported once. Checks that span sections (two edges on one
//! address, two disk queues on one spool) run after the sections are read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::kinds::check::{self, CheckConfig};
use crate::kinds::policy::{self, PolicyConfig, Stage};
use crate::kinds::{relay, sections, storage};

use super::fields::{
    Errors, Section, boolean, check_domain, choice, count, domain, duration, email_address,
    expected, float, integer, log_level, nameserver, non_empty_string, positive_duration, quoted,
    socket_addr,
};
use super::{
    Config, ConfigError, DnsConfig, EdgeAuthConfig, EdgeConfig, EdgeKind, EdgeTlsConfig, LogFormat,
    ProcessConfig, ProxyProtocol, QueueConfig, RetryConfig,
};

pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let path = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "syntax".to_owned(),
    };
    ConfigError::new(path, format!("TOML syntax: {}", error.message().trim_end()))
}

pub(super) fn read_config(root: &Table, errors: &mut Errors) -> Config {
    let mut section = Section::new(String::new(), root);
    let process = match section.table(errors, "process") {
        Some(s) => read_process(s, errors),
        None => read_process(Section::new("process".into(), &Table::new()), errors),
    };
    let dns = match section.table(errors, "dns") {
        Some(s) => read_dns(s, errors),
        None => DnsConfig::default(),
    };
    let edge_tables = named_tables(&mut section, errors, "edge");
    let queue_tables = named_tables(&mut section, errors, "queue");
    let relay_tables = named_tables(&mut section, errors, "relay");
    let policy_tables = named_tables(&mut section, errors, "policy");
    let check_tables = named_tables(&mut section, errors, "check");
    section.finish(errors, &[], None);
    let policies = policy::read_sections(&policy_tables, errors);
    let policy_names = sections::section_names(&policy_tables);
    let checks = check::read_sections(&check_tables, errors);
    let check_names = sections::section_names(&check_tables);

    if edge_tables.is_empty() {
        errors.push(
            "edge",
            "no edge configured: add an [edge.NAME] section so slimta listens somewhere",
        );
    }

    let relays = relay::read_sections(&relay_tables, errors);

    let mut queues = BTreeMap::new();
    for (name, table) in &queue_tables {
        let section = Section::new(format!("queue.{name}"), table);
        if let Some(queue) = read_queue(
            name,
            section,
            errors,
            &relay_tables,
            (&policies, &policy_names),
        ) {
            queues.insert(name.clone(), queue);
        }
    }
    check_spool_paths(&queues, errors);

    let mut edges = BTreeMap::new();
    for (name, table) in &edge_tables {
        let section = Section::new(format!("edge.{name}"), table);
        if let Some(edge) = read_edge(section, errors, &queue_tables, (&checks, &check_names)) {
            edges.insert(name.clone(), edge);
        }
    }
    check_listen_addresses(&edges, errors);

    Config {
        process,
        edges,
        queues,
        relays,
        policies,
        checks,
        dns,
    }
}

/// `[edge.NAME]`-style sections: a table of tables.
fn named_tables<'a>(
    section: &mut Section<'a>,
    errors: &mut Errors,
    key: &'static str,
) -> BTreeMap<String, &'a Table> {
    let mut out = BTreeMap::new();
    let Some(value) = section.take(key) else {
        return out;
    };
    let Value::Table(table) = value else {
        errors.push(key, expected(&format!("[{key}.NAME] sections"), value));
        return out;
    };
    for (name, value) in table {
        match value {
            Value::Table(t) => {
                out.insert(name.clone(), t);
            }
            other => errors.push(
                format!("{key}.{name}"),
                expected(&format!("a [{key}.{name}] section"), other),
            ),
        }
    }
    out
}

fn read_process(mut s: Section<'_>, errors: &mut Errors) -> ProcessConfig {
    let hostname = s
        .opt(errors, "hostname", domain)
        .unwrap_or_else(system_hostname);
    let log_level = s.or(errors, "log_level", "info".to_owned(), log_level);
    let log_format = match s.opt(errors, "log_format", choice(&["text", "json"])) {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let user = s.opt(errors, "user", non_empty_string);
    let group = s.opt(errors, "group", non_empty_string);
    let pid_file = s
        .opt(errors, "pid_file", non_empty_string)
        .map(PathBuf::from);
    s.finish(errors, &[], None);
    ProcessConfig {
        hostname,
        log_level,
        log_format,
        user,
        group,
        pid_file,
    }
}

/// The system's host name, or `localhost` when it is not valid UTF-8 or
/// not a valid name (a banner must never carry garbage).
fn system_hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .and_then(|name| check_domain(&name).ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn read_dns(mut s: Section<'_>, errors: &mut Errors) -> DnsConfig {
    let nameservers = s
        .list(errors, "nameservers", nameserver)
        .unwrap_or_default();
    s.finish(errors, &[], None);
    DnsConfig { nameservers }
}

fn read_edge(
    mut s: Section<'_>,
    errors: &mut Errors,
    queues: &BTreeMap<String, &Table>,
    (checks, check_names): (&BTreeMap<String, CheckConfig>, &BTreeSet<String>),
) -> Option<EdgeConfig> {
    let kind = s.required(errors, "type", choice(&["smtp", "lmtp", "http"]));
    let listen = s.required(errors, "listen", |v| match v {
        Value::Array(items) if items.is_empty() => Err("must list at least one address".into()),
        _ => Ok(()),
    });
    // `listen` was only checked for emptiness above; read its items now.
    let listen_entries = if listen.is_some() {
        s.list(errors, "listen", listen_entry)
    } else {
        None
    };
    let (addresses, listen_unix) = match listen_entries {
        Some(entries) => {
            let mut tcp = Vec::new();
            let mut unix = Vec::new();
            for entry in entries {
                match entry {
                    ListenEntry::Tcp(addr) => tcp.push(addr),
                    ListenEntry::Unix(path) => unix.push(path),
                }
            }
            (Some(tcp), unix)
        }
        None => (None, Vec::new()),
    };
    let queue = s.required(errors, "queue", non_empty_string);
    // Checked against the names present, even if that section has errors
    // of its own, so one mistake is not reported twice.
    if let Some(queue) = queue.as_ref().filter(|q| !queues.contains_key(*q)) {
        errors.push(s.key_path("queue"), format!("no queue named \"{queue}\""));
    }
    let accept_domains = s.list(errors, "accept_domains", domain).unwrap_or_default();
    let checks = check::read_list(&mut s, errors, checks, check_names);
    let max_size = s.or(errors, "max_size", 10_485_760, integer(1, u64::MAX));
    let max_recipients = s.or(errors, "max_recipients", 100, count);
    let max_connections = s.or(errors, "max_connections", 1000, count);
    let command_timeout = s.or(
        errors,
        "command_timeout",
        Duration::from_secs(300),
        positive_duration,
    );
    let data_timeout = s.or(
        errors,
        "data_timeout",
        Duration::from_secs(600),
        positive_duration,
    );
    let tls = s
        .table(errors, "tls")
        .and_then(|t| read_edge_tls(t, errors));
    let tls_immediately = s.or(errors, "tls_immediately", false, boolean);
    if tls_immediately && tls.is_none() {
        errors.push(s.key_path("tls_immediately"), "needs `tls` (cert and key)");
    }
    let proxy_protocol = match s.or(
        errors,
        "proxy_protocol",
        "off",
        choice(&["off", "v1", "v2", "auto"]),
    ) {
        "v1" => ProxyProtocol::V1,
        "v2" => ProxyProtocol::V2,
        "auto" => ProxyProtocol::Auto,
        _ => ProxyProtocol::Off,
    };
    let auth = s
        .table(errors, "auth")
        .and_then(|t| read_edge_auth(t, errors));
    let reverse_dns = s.or(errors, "reverse_dns", true, boolean);
    if matches!(kind, Some("smtp" | "http")) && !listen_unix.is_empty() {
        errors.push(s.key_path("listen"), "unix sockets are for lmtp edges only");
    }
    s.finish(errors, &[], None);
    Some(EdgeConfig {
        listen_unix,
        tls,
        tls_immediately,
        proxy_protocol,
        auth,
        reverse_dns,
        kind: match kind? {
            "lmtp" => EdgeKind::Lmtp,
            "http" => EdgeKind::Http,
            _ => EdgeKind::Smtp,
        },
        listen: addresses?,
        queue: queue?,
        accept_domains,
        checks,
        max_size,
        max_recipients,
        max_connections,
        command_timeout,
        data_timeout,
    })
}

/// Two edges on one address would fail at bind time; say so now.
fn check_listen_addresses(edges: &BTreeMap<String, EdgeConfig>, errors: &mut Errors) {
    let mut seen: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (name, edge) in edges {
        for (i, addr) in edge.listen.iter().enumerate() {
            let here = format!("edge.{name}.listen[{i}]");
            // Port 0 asks the system for a free port: never a clash.
            if addr.port() == 0 {
                continue;
            }
            if let Some(first) = seen.get(addr) {
                errors.push(here, format!("{addr} is already used by {first}"));
            } else {
                seen.insert(*addr, here);
            }
        }
    }
}

fn read_queue(
    name: &str,
    mut s: Section<'_>,
    errors: &mut Errors,
    relays: &BTreeMap<String, &Table>,
    (policies, policy_names): (&BTreeMap<String, PolicyConfig>, &BTreeSet<String>),
) -> Option<QueueConfig> {
    let (kind, storage) = match storage::read(name, &mut s, errors) {
        Some((kind, storage)) => (Some(kind.name), storage),
        None => (None, None),
    };
    let relay = s.required(errors, "relay", non_empty_string);
    if let Some(relay) = relay.as_ref().filter(|r| !relays.contains_key(*r)) {
        errors.push(s.key_path("relay"), format!("no relay named \"{relay}\""));
    }
    let max_concurrency = s.or(errors, "max_concurrency", 100, count);
    let bounce_headers_only = s.or(errors, "bounce_headers_only", false, boolean);
    let postmaster = s.opt(errors, "postmaster", email_address);
    let delay_warning = s.opt(errors, "delay_warning", positive_duration);
    let stats_interval = s.or(errors, "stats_interval", Duration::from_secs(60), duration);
    let relay_policies = policy::read_list(&mut s, errors, Stage::Relay, policies, policy_names);
    let policies = policy::read_list(&mut s, errors, Stage::Queue, policies, policy_names);
    let retry = match s.table(errors, "retry") {
        Some(r) => read_retry(r, errors),
        None => RetryConfig::default(),
    };
    s.finish(errors, &storage::keys(), kind);
    Some(QueueConfig {
        storage: storage?,
        relay: relay?,
        max_concurrency,
        bounce_headers_only,
        postmaster,
        delay_warning,
        stats_interval: (!stats_interval.is_zero()).then_some(stats_interval),
        policies,
        relay_policies,
        retry,
    })
}

fn read_retry(mut s: Section<'_>, errors: &mut Errors) -> RetryConfig {
    let d = RetryConfig::default();
    let initial_delay = s.or(errors, "initial_delay", d.initial_delay, positive_duration);
    let factor = s.or(errors, "factor", d.factor, |v| {
        let f = float(v)?;
        if f.is_finite() && f >= 1.0 {
            Ok(f)
        } else {
            Err(format!("must be a number of at least 1.0, found {f}"))
        }
    });
    let max_delay = s.or(errors, "max_delay", d.max_delay, positive_duration);
    let max_age = s.or(errors, "max_age", d.max_age, positive_duration);
    let maximum = s.or(errors, "maximum", 0, |v| {
        integer(0, u32::MAX.into())(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    });
    if max_delay < initial_delay {
        errors.push(
            s.key_path("max_delay"),
            format!(
                "shorter than initial_delay ({} < {})",
                humantime::format_duration(max_delay),
                humantime::format_duration(initial_delay)
            ),
        );
    }
    s.finish(errors, &[], None);
    RetryConfig {
        initial_delay,
        factor,
        max_delay,
        max_age,
        maximum,
    }
}

/// Two disk queues sharing a spool would load each other's messages.
fn check_spool_paths(queues: &BTreeMap<String, QueueConfig>, errors: &mut Errors) {
    let mut seen: BTreeMap<&Path, &str> = BTreeMap::new();
    for (name, queue) in queues {
        if let Some(path) = queue.storage.spool() {
            if let Some(first) = seen.get(path) {
                errors.push(
                    format!("queue.{name}.path"),
                    format!("already the spool of queue \"{first}\""),
                );
            } else {
                seen.insert(path, name);
            }
        }
    }
}

enum ListenEntry {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `"IP:PORT"`, `"[IPv6]:PORT"` or `"unix:/path"`.
fn listen_entry(value: &Value) -> Result<ListenEntry, String> {
    if let Some(path) = value.as_str().and_then(|t| t.strip_prefix("unix:")) {
        if path.is_empty() {
            return Err("empty unix socket path".into());
        }
        return Ok(ListenEntry::Unix(PathBuf::from(path)));
    }
    socket_addr(value).map(ListenEntry::Tcp)
}

fn read_edge_tls(mut s: Section<'_>, errors: &mut Errors) -> Option<EdgeTlsConfig> {
    let existing_file = |v: &Value| -> Result<PathBuf, String> {
        let path = PathBuf::from(non_empty_string(v)?);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("no such file: {}", path.display()))
        }
    };
    let cert = s.required(errors, "cert", existing_file);
    let key = s.required(errors, "key", existing_file);
    s.finish(errors, &[], None);
    Some(EdgeTlsConfig {
        cert: cert?,
        key: key?,
    })
}

const AUTH_MECHANISMS: [&str; 3] = ["PLAIN", "LOGIN", "CRAM-MD5"];

fn read_edge_auth(mut s: Section<'_>, errors: &mut Errors) -> Option<EdgeAuthConfig> {
    let mechanisms = s
        .list(errors, "mechanisms", |v| {
            let name = non_empty_string(v)?.to_ascii_uppercase();
            if AUTH_MECHANISMS.contains(&name.as_str()) {
                Ok(name)
            } else {
                Err(format!(
                    "unknown mechanism \"{name}\" (expected one of: {})",
                    quoted(&AUTH_MECHANISMS)
                ))
            }
        })
        .unwrap_or_else(|| AUTH_MECHANISMS.iter().map(|m| (*m).to_string()).collect());
    let allow_plaintext = s.or(errors, "allow_plaintext", false, boolean);
    let required = s.or(errors, "required", false, boolean);
    let mut users = BTreeMap::new();
    if let Some(table) = s.table(errors, "users") {
        for (user, secret) in table.table {
            let path = table.key_path(user);
            match non_empty_string(secret) {
                Ok(secret) => match scheme_of(&secret) {
                    // Hashed secrets cannot answer CRAM-MD5; those users
                    // just cannot use that mechanism (as with Dovecot).
                    Some(scheme) if ["PLAIN", "ARGON2ID", "SHA512-CRYPT"].contains(&scheme) => {
                        users.insert(user.clone(), secret);
                    }
                    Some(scheme) => errors.push(
                        path,
                        format!("unknown password scheme {{{scheme}}} (expected {{PLAIN}}, {{ARGON2ID}} or {{SHA512-CRYPT}})"),
                    ),
                    None => errors.push(path, "the secret needs a scheme prefix such as {PLAIN} or {ARGON2ID}"),
                },
                Err(message) => errors.push(path, message),
            }
        }
    }
    s.finish(errors, &[], None);
    Some(EdgeAuthConfig {
        mechanisms,
        allow_plaintext,
        required,
        users,
    })
}

/// `PLAIN` from `{PLAIN}secret`.
fn scheme_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix('{')?;
    let end = rest.find('}')?;
    Some(&rest[..end])
}
