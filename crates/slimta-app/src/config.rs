//! The TOML schema of the `slimta` executable, and its checker.
//!
//! The file has the four sections of python-slimta's app (`[process]`,
//! `[edge.NAME]`, `[queue.NAME]`, `[relay.NAME]`) plus `[dns]`. It is parsed
//! into a [`toml::Table`] and walked by hand instead of through serde derive,
//! because an operator running `slimta --check-config` wants **every** mistake
//! at once, each with the key path that holds it
//! (`edge.in.listen[1]: invalid socket address "x"`), and serde stops at the
//! first. The walk reports wrong types, missing required keys, unknown keys
//! (a typo must not be silently ignored, as Postfix's `postconf -n` warns),
//! bad values and dangling references between sections.
//!
//! The result is a set of plain structs with every default applied, durations
//! as [`Duration`] and addresses as [`SocketAddr`], so the code that builds the
//! running objects (`build.rs`) never looks at TOML.
//!
//! Decisions worth knowing:
//!
//! - Every section needs an explicit `type`; there is no default kind of
//!   edge, queue or relay, so a file never means something it does not say.
//! - At least one edge is required: a daemon that listens nowhere is a typo.
//! - `accept_domains` defaults to empty: with no domain configured the edge
//!   accepts mail for nobody, so no configuration is an open relay by default.
//! - Queue `policies` default to none; header policies are opt-in so that
//!   mail passes through byte for byte unless the operator asks otherwise.
//! - Relative paths (`queue.*.path`, `process.pid_file`) are relative to the
//!   working directory, as the embedded default's `./slimta-spool` is.
//! - Some types are part of the schema before the library implements them
//!   (the `lmtp` and `http` edges, the relays of issue 5). They parse, so the
//!   schema stays stable, and [`Config::unsupported`] names them so that
//!   `--check-config` and the daemon refuse them instead of half-running.
//! - Names of edges, queues and relays are free-form TOML keys; errors quote
//!   them as written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

/// The embedded default configuration, used when `slimta` runs without
/// `--config`: an SMTP edge on 127.0.0.1:2525 into a disk queue under
/// `./slimta-spool`, relaying by MX, accepting mail for no domain.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// One problem found in a configuration file.
///
/// `path` is the TOML key path (`queue.main.relay`, `edge.in.listen[1]`) or,
/// for a syntax error, the line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// Where the problem is: a key path such as `edge.in.listen[1]`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A whole, checked configuration with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[process]`: identity and logging of the daemon.
    pub process: ProcessConfig,
    /// `[edge.NAME]`, by name.
    pub edges: BTreeMap<String, EdgeConfig>,
    /// `[queue.NAME]`, by name.
    pub queues: BTreeMap<String, QueueConfig>,
    /// `[relay.NAME]`, by name.
    pub relays: BTreeMap<String, RelayConfig>,
    /// `[dns]`: the resolver used by MX relays (and later SPF, DNSBL).
    pub dns: DnsConfig,
}

/// `[process]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// The name used in the banner, Received headers and bounces.
    /// Default: the system hostname.
    pub hostname: String,
    /// A `tracing` filter directive such as `"info"` or
    /// `"info,slimta=debug"`; `RUST_LOG` overrides it. Default `"info"`.
    pub log_level: String,
    /// Text or JSON log lines. Default text.
    pub log_format: LogFormat,
    /// The user to run as after binding the listeners, if any.
    pub user: Option<String>,
    /// The group to run as after binding the listeners, if any.
    pub group: Option<String>,
    /// A file to write the daemon's process id to, if any.
    pub pid_file: Option<PathBuf>,
}

/// `process.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`"text"`).
    Text,
    /// One JSON object per line (`"json"`).
    Json,
}

/// `[edge.NAME]`: a set of listeners that hand mail to one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// Which protocol the edge speaks (`type`).
    pub kind: EdgeKind,
    /// Where to listen; at least one address, IPv6 as `"[::1]:2525"`.
    pub listen: Vec<SocketAddr>,
    /// The name of the queue that takes the mail (`queue`).
    pub queue: String,
    /// Domains (lowercase, no trailing dot) whose recipients are accepted
    /// from anyone; others are relaying and need authentication. Default
    /// empty: mail for nobody.
    pub accept_domains: Vec<String>,
    /// Largest message in bytes, advertised in SIZE. Default 10485760.
    pub max_size: u64,
    /// Recipients per transaction before `452 4.5.3`. Default 100.
    pub max_recipients: usize,
    /// Concurrent sessions before new clients get 421. Default 1000.
    pub max_connections: usize,
    /// How long to wait for a command. Default 300 s.
    pub command_timeout: Duration,
    /// How long to wait for message data. Default 600 s.
    pub data_timeout: Duration,
}

/// `edge.NAME.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// `"smtp"`.
    Smtp,
    /// `"lmtp"` (not supported yet).
    Lmtp,
    /// `"http"` (not supported yet).
    Http,
}

impl EdgeKind {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Lmtp => "lmtp",
            Self::Http => "http",
        }
    }
}

/// `[queue.NAME]`: storage, delivery concurrency, retries and bounces.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Where messages are kept (`type`, and `path` for disk).
    pub storage: StorageConfig,
    /// The name of the relay that delivers (`relay`).
    pub relay: String,
    /// Delivery attempts running at once. Default 100.
    pub max_concurrency: usize,
    /// Bounces carry only the original headers, not the body. Default false.
    pub bounce_headers_only: bool,
    /// Where bounces that themselves fail go; without it they are logged
    /// and dropped.
    pub postmaster: Option<String>,
    /// Queue policies applied in order before a message is stored.
    /// Default none.
    pub policies: Vec<PolicyName>,
    /// `[queue.NAME.retry]`.
    pub retry: RetryConfig,
}

/// `queue.NAME.type` with its type-specific keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// `"memory"`: lost on restart; for tests and throwaway relays.
    Memory,
    /// `"disk"`: a durable spool directory.
    Disk {
        /// The spool directory (`path`, required).
        path: PathBuf,
    },
}

/// A queue policy known to the app (`queue.NAME.policies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyName {
    /// `"add_date_header"`: adds `Date:` when missing.
    AddDateHeader,
    /// `"add_message_id_header"`: adds `Message-Id:` when missing.
    AddMessageIdHeader,
    /// `"add_received_header"`: prepends a `Received:` trace header.
    AddReceivedHeader,
}

impl PolicyName {
    const ALL: [Self; 3] = [
        Self::AddDateHeader,
        Self::AddMessageIdHeader,
        Self::AddReceivedHeader,
    ];

    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddDateHeader => "add_date_header",
            Self::AddMessageIdHeader => "add_message_id_header",
            Self::AddReceivedHeader => "add_received_header",
        }
    }
}

/// `[queue.NAME.retry]`: exponential backoff with a cap and a maximum age.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Delay after the first failed attempt. Default 5 min.
    pub initial_delay: Duration,
    /// Each delay is the previous one times this (>= 1). Default 2.0.
    pub factor: f64,
    /// No delay is longer than this. Default 1 h.
    pub max_delay: Duration,
    /// A message older than this is bounced instead of retried, like
    /// Postfix's `maximal_queue_lifetime`. Default 5 days.
    pub max_age: Duration,
    /// Most attempts before bouncing; 0 means unlimited until `max_age`.
    pub maximum: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(5 * 60),
            factor: 2.0,
            max_delay: Duration::from_secs(60 * 60),
            max_age: Duration::from_secs(5 * 24 * 60 * 60),
            maximum: 0,
        }
    }
}

/// `[relay.NAME]`: how mail leaves, by `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayConfig {
    /// `"static"`: every message to one smart host.
    Static(StaticRelayConfig),
    /// `"mx"`: each recipient domain's MX hosts.
    Mx(MxRelayConfig),
    /// `"blackhole"`: accepts and discards (benchmarks, tests).
    Blackhole,
    /// `"lmtp"` (not supported yet).
    Lmtp(LmtpRelayConfig),
    /// `"http"` (not supported yet).
    Http(HttpRelayConfig),
    /// `"pipe"` (not supported yet).
    Pipe(PipeRelayConfig),
    /// `"maildrop"` (not supported yet).
    Maildrop(CommandRelayConfig),
    /// `"dovecot"`: dovecot-lda (not supported yet).
    Dovecot(CommandRelayConfig),
}

impl RelayConfig {
    /// The `type` used in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::Mx(_) => "mx",
            Self::Blackhole => "blackhole",
            Self::Lmtp(_) => "lmtp",
            Self::Http(_) => "http",
            Self::Pipe(_) => "pipe",
            Self::Maildrop(_) => "maildrop",
            Self::Dovecot(_) => "dovecot",
        }
    }
}

/// The keys every SMTP-speaking relay (static, mx, lmtp) shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpClientConfig {
    /// The name sent in EHLO. Default: `process.hostname`.
    pub ehlo_as: Option<String>,
    /// Default 30 s.
    pub connect_timeout: Duration,
    /// How long to wait for each reply. Default 300 s.
    pub command_timeout: Duration,
    /// Most connections open at once per destination. Default 10.
    pub pool_size: usize,
    /// How long an idle pooled connection is kept. Default 10 s.
    pub idle_timeout: Duration,
    /// STARTTLS policy. Default opportunistic.
    pub tls: TlsMode,
    /// Verify the server's certificate. Default: true for static and lmtp,
    /// false for mx (RFC 7435 opportunistic security).
    pub tls_verify: bool,
    /// AUTH credentials for a smart host.
    pub credentials: Option<Credentials>,
    /// Local addresses to connect from; empty means the system's choice.
    pub source_addresses: Vec<IpAddr>,
}

/// `relay.NAME.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `"off"`: never STARTTLS.
    Off,
    /// `"opportunistic"`: STARTTLS when offered.
    Opportunistic,
    /// `"required"`: fail transiently without STARTTLS.
    Required,
    /// `"immediate"`: TLS from the first byte (port 465).
    Immediate,
}

/// `relay.NAME.credentials = { username = "..", password = ".." }`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The AUTH user name.
    pub username: String,
    /// The AUTH password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Configs get logged; the password must not be.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// `type = "static"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRelayConfig {
    /// The smart host's name or address (`host`, required).
    pub host: String,
    /// Default 25.
    pub port: u16,
    /// The shared SMTP client keys.
    pub client: SmtpClientConfig,
}

/// `type = "mx"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRelayConfig {
    /// The port on each MX host. Default 25 (other values are for tests).
    pub port: u16,
    /// Domain (lowercase) to the host used instead of its MX records.
    pub force_mx: BTreeMap<String, String>,
    /// The shared SMTP client keys.
    pub client: SmtpClientConfig,
}

/// `type = "lmtp"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmtpRelayConfig {
    /// A unix socket (`path`) or a host and port (`host`, `port`, default 24).
    pub target: LmtpTarget,
    /// The shared SMTP client keys.
    pub client: SmtpClientConfig,
}

/// Where an LMTP relay connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp {
        /// Name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// `type = "http"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRelayConfig {
    /// Where messages are POSTed (`url`, required, http or https).
    pub url: String,
    /// Default 60 s.
    pub timeout: Duration,
    /// The name sent as the EHLO header. Default: `process.hostname`.
    pub ehlo_as: Option<String>,
}

/// `type = "pipe"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeRelayConfig {
    /// Program and arguments with `{sender}`, `{recipient}`, ... templates
    /// (`command`, required, non-empty).
    pub command: Vec<String>,
    /// Run once per recipient. Default false.
    pub per_recipient: bool,
    /// Default 60 s.
    pub timeout: Duration,
}

/// `type = "maildrop"` or `"dovecot"`: a local delivery agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRelayConfig {
    /// The program. Default `/usr/bin/maildrop` or
    /// `/usr/lib/dovecot/dovecot-lda`.
    pub path: PathBuf,
    /// Extra arguments, with the same templates as `pipe`.
    pub args: Vec<String>,
    /// Default 60 s.
    pub timeout: Duration,
}

/// `[dns]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Nameservers to ask (a bare IP means port 53); empty means the
    /// system resolver.
    pub nameservers: Vec<SocketAddr>,
}

impl Config {
    /// The embedded default ([`DEFAULT_CONFIG`]), parsed.
    ///
    /// # Panics
    ///
    /// Never in a released build: a unit test parses the embedded file.
    pub fn embedded_default() -> Self {
        match parse(DEFAULT_CONFIG) {
            Ok(config) => config,
            Err(errors) => panic!("the embedded default configuration is invalid: {errors:?}"),
        }
    }

    /// What this configuration asks for that the daemon cannot do yet.
    ///
    /// The schema is ahead of the implementation (it carries the keys of
    /// later issues), so `parse` accepts these; `--check-config` and the
    /// daemon report them as errors rather than silently running without
    /// them. Remove an entry here when its feature lands.
    pub fn unsupported(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (name, edge) in &self.edges {
            if edge.kind != EdgeKind::Smtp {
                errors.push(ConfigError::new(
                    format!("edge.{name}.type"),
                    format!("\"{}\" edges are not supported yet", edge.kind.as_str()),
                ));
            }
        }
        for (name, relay) in &self.relays {
            let client = match relay {
                RelayConfig::Static(r) => Some(&r.client),
                RelayConfig::Mx(r) => Some(&r.client),
                RelayConfig::Blackhole => None,
                _ => {
                    errors.push(ConfigError::new(
                        format!("relay.{name}.type"),
                        format!("\"{}\" relays are not supported yet", relay.type_name()),
                    ));
                    None
                }
            };
            // Security promises must not be accepted and then ignored.
            if let Some(client) = client {
                if matches!(client.tls, TlsMode::Required | TlsMode::Immediate) {
                    errors.push(ConfigError::new(
                        format!("relay.{name}.tls"),
                        "TLS to relays is not supported yet",
                    ));
                }
                if client.credentials.is_some() {
                    errors.push(ConfigError::new(
                        format!("relay.{name}.credentials"),
                        "AUTH to relays is not supported yet",
                    ));
                }
            }
        }
        errors
    }
}

/// Parses and checks a configuration file's text.
///
/// # Errors
///
/// Every problem found, each with its key path: a TOML syntax error (then
/// only that one, as the rest cannot be read), or all wrong types, missing
/// required keys, unknown keys, bad values and references to sections that
/// do not exist.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let root: Table = text.parse().map_err(|e| vec![syntax_error(text, &e)])?;
    let mut errors = Errors::default();
    let config = read_config(&root, &mut errors);
    if errors.0.is_empty() {
        Ok(config)
    } else {
        Err(errors.0)
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
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

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }
}

/// One TOML table being read. It remembers which keys the schema asked for,
/// so whatever is left over can be reported as unknown.
struct Section<'a> {
    path: String,
    table: &'a Table,
    known: BTreeSet<&'static str>,
}

impl<'a> Section<'a> {
    fn new(path: String, table: &'a Table) -> Self {
        Self {
            path,
            table,
            known: BTreeSet::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.insert(key);
        self.table.get(key)
    }

    /// The value of `key` converted by `convert`; `None` when absent or bad
    /// (bad is recorded).
    fn opt<T>(
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

    fn or<T>(
        &mut self,
        errors: &mut Errors,
        key: &'static str,
        default: T,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> T {
        self.opt(errors, key, convert).unwrap_or(default)
    }

    fn required<T>(
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
    fn list<T>(
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
    fn table(&mut self, errors: &mut Errors, key: &'static str) -> Option<Section<'a>> {
        let value = self.take(key)?;
        match value {
            Value::Table(t) => Some(Section::new(self.key_path(key), t)),
            other => {
                errors.push(self.key_path(key), expected("a table", other));
                None
            }
        }
    }

    /// Reports every key the schema did not ask for. `elsewhere` are keys
    /// valid for other types of the same section, for a clearer message.
    fn finish(self, errors: &mut Errors, elsewhere: &[&str], kind: Option<&str>) {
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

fn expected(what: &str, found: &Value) -> String {
    format!("expected {what}, found {}", found.type_str())
}

fn string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(expected("a string", other)),
    }
}

fn non_empty_string(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s)
    }
}

fn boolean(value: &Value) -> Result<bool, String> {
    value.as_bool().ok_or_else(|| expected("a boolean", value))
}

/// An integer within `min..=max`.
fn integer(min: u64, max: u64) -> impl Fn(&Value) -> Result<u64, String> {
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

fn count(value: &Value) -> Result<usize, String> {
    // Counts are at least 1: a limit of zero would refuse everything.
    let n = integer(1, u32::MAX.into())(value)?;
    usize::try_from(n).map_err(|_| format!("too large: {n}"))
}

fn port(value: &Value) -> Result<u16, String> {
    integer(1, 65535)(value).map(|n| u16::try_from(n).unwrap_or(u16::MAX))
}

fn float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Float(f) => Ok(*f),
        // Integers are accepted for floats: `factor = 2` means 2.0.
        Value::Integer(i) => Ok(*i as f64),
        other => Err(expected("a number", other)),
    }
}

fn duration(value: &Value) -> Result<Duration, String> {
    let s = value
        .as_str()
        .ok_or_else(|| expected("a duration string such as \"300s\"", value))?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration \"{s}\" (expected e.g. \"300s\", \"5m\", \"5d\"): {e}")
    })
}

fn positive_duration(value: &Value) -> Result<Duration, String> {
    let d = duration(value)?;
    if d.is_zero() {
        Err("must be longer than zero".to_owned())
    } else {
        Ok(d)
    }
}

fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    let s = string(value)?;
    s.trim().parse().map_err(|_| {
        format!(
            "invalid socket address \"{s}\" (expected IP:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\")"
        )
    })
}

fn nameserver(value: &Value) -> Result<SocketAddr, String> {
    let s = string(value)?;
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse().map_err(|_| {
        format!("invalid nameserver \"{s}\" (expected IP or IP:PORT, e.g. \"127.0.0.1:5353\")")
    })
}

fn ip_addr(value: &Value) -> Result<IpAddr, String> {
    let s = string(value)?;
    s.trim()
        .parse()
        .map_err(|_| format!("invalid IP address \"{s}\""))
}

/// A domain or host name, lowercased and without a trailing dot.
fn domain(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    check_domain(&s).map_err(|why| format!("invalid domain \"{s}\": {why}"))
}

fn check_domain(s: &str) -> Result<String, &'static str> {
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

fn email_address(value: &Value) -> Result<String, String> {
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

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn log_level(value: &Value) -> Result<String, String> {
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

/// One of `choices`, reported with the list when wrong.
fn choice<'c>(choices: &'c [&'c str]) -> impl Fn(&Value) -> Result<&'c str, String> {
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

fn quoted(choices: &[&str]) -> String {
    choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn policy(value: &Value) -> Result<PolicyName, String> {
    let names = PolicyName::ALL.map(PolicyName::as_str);
    let name = choice(&names)(value)?;
    Ok(PolicyName::ALL
        .into_iter()
        .find(|p| p.as_str() == name)
        .unwrap_or(PolicyName::AddReceivedHeader))
}

const ROOT_KEYS: [&str; 5] = ["process", "edge", "queue", "relay", "dns"];

fn read_config(root: &Table, errors: &mut Errors) -> Config {
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
    debug_assert!(ROOT_KEYS.iter().all(|k| section.known.contains(k)));
    section.finish(errors, &[], None);

    if edge_tables.is_empty() {
        errors.push(
            "edge",
            "no edge configured: add an [edge.NAME] section so slimta listens somewhere",
        );
    }

    let relays: BTreeMap<String, RelayConfig> = relay_tables
        .iter()
        .filter_map(|(name, s)| {
            read_relay(Section::new(format!("relay.{name}"), s), errors).map(|r| (name.clone(), r))
        })
        .collect();

    let mut queues = BTreeMap::new();
    for (name, table) in &queue_tables {
        let section = Section::new(format!("queue.{name}"), table);
        if let Some(queue) = read_queue(section, errors, &relay_tables) {
            queues.insert(name.clone(), queue);
        }
    }
    check_spool_paths(&queues, errors);

    let mut edges = BTreeMap::new();
    for (name, table) in &edge_tables {
        let section = Section::new(format!("edge.{name}"), table);
        if let Some(edge) = read_edge(section, errors, &queue_tables) {
            edges.insert(name.clone(), edge);
        }
    }
    check_listen_addresses(&edges, errors);

    Config {
        process,
        edges,
        queues,
        relays,
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
) -> Option<EdgeConfig> {
    let kind = s.required(errors, "type", choice(&["smtp", "lmtp", "http"]));
    let listen = s.required(errors, "listen", |v| match v {
        Value::Array(items) if items.is_empty() => Err("must list at least one address".into()),
        _ => Ok(()),
    });
    // `listen` was only checked for emptiness above; read its items now.
    let addresses = if listen.is_some() {
        s.list(errors, "listen", socket_addr)
    } else {
        None
    };
    let queue = s.required(errors, "queue", non_empty_string);
    // Checked against the names present, even if that section has errors
    // of its own, so one mistake is not reported twice.
    if let Some(queue) = queue.as_ref().filter(|q| !queues.contains_key(*q)) {
        errors.push(s.key_path("queue"), format!("no queue named \"{queue}\""));
    }
    let accept_domains = s.list(errors, "accept_domains", domain).unwrap_or_default();
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
    s.finish(errors, &[], None);
    Some(EdgeConfig {
        kind: match kind? {
            "lmtp" => EdgeKind::Lmtp,
            "http" => EdgeKind::Http,
            _ => EdgeKind::Smtp,
        },
        listen: addresses?,
        queue: queue?,
        accept_domains,
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
    mut s: Section<'_>,
    errors: &mut Errors,
    relays: &BTreeMap<String, &Table>,
) -> Option<QueueConfig> {
    let kind = s.required(errors, "type", choice(&["memory", "disk"]));
    let storage = match kind {
        Some("disk") => s
            .required(errors, "path", non_empty_string)
            .map(|p| StorageConfig::Disk {
                path: PathBuf::from(p),
            }),
        Some(_) => Some(StorageConfig::Memory),
        None => None,
    };
    let relay = s.required(errors, "relay", non_empty_string);
    if let Some(relay) = relay.as_ref().filter(|r| !relays.contains_key(*r)) {
        errors.push(s.key_path("relay"), format!("no relay named \"{relay}\""));
    }
    let max_concurrency = s.or(errors, "max_concurrency", 100, count);
    let bounce_headers_only = s.or(errors, "bounce_headers_only", false, boolean);
    let postmaster = s.opt(errors, "postmaster", email_address);
    let policies = s.list(errors, "policies", policy).unwrap_or_default();
    let mut unique = BTreeSet::new();
    for (i, p) in policies.iter().enumerate() {
        if !unique.insert(*p) {
            errors.push(
                format!("{}[{i}]", s.key_path("policies")),
                format!("\"{}\" is listed twice", p.as_str()),
            );
        }
    }
    let retry = match s.table(errors, "retry") {
        Some(r) => read_retry(r, errors),
        None => RetryConfig::default(),
    };
    s.finish(errors, &["path"], kind);
    Some(QueueConfig {
        storage: storage?,
        relay: relay?,
        max_concurrency,
        bounce_headers_only,
        postmaster,
        policies,
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
    let mut seen: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    for (name, queue) in queues {
        if let StorageConfig::Disk { path } = &queue.storage {
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

const RELAY_TYPES: [&str; 8] = [
    "static",
    "mx",
    "blackhole",
    "lmtp",
    "http",
    "pipe",
    "maildrop",
    "dovecot",
];

/// Every key any relay type uses, for "unknown key for type" messages.
const RELAY_KEYS: [&str; 19] = [
    "host",
    "port",
    "force_mx",
    "path",
    "url",
    "timeout",
    "command",
    "per_recipient",
    "args",
    "ehlo_as",
    "connect_timeout",
    "command_timeout",
    "pool_size",
    "idle_timeout",
    "tls",
    "tls_verify",
    "credentials",
    "source_addresses",
    "type",
];

fn read_relay(mut s: Section<'_>, errors: &mut Errors) -> Option<RelayConfig> {
    let kind = s.required(errors, "type", choice(&RELAY_TYPES));
    let relay = match kind? {
        "static" => {
            let host = s.required(errors, "host", non_empty_string);
            let port = s.or(errors, "port", 25, port);
            let client = read_smtp_client(&mut s, errors, true);
            host.map(|host| RelayConfig::Static(StaticRelayConfig { host, port, client }))
        }
        "mx" => {
            let port = s.or(errors, "port", 25, port);
            let force_mx = s
                .table(errors, "force_mx")
                .map(|t| read_force_mx(&t, errors))
                .unwrap_or_default();
            let client = read_smtp_client(&mut s, errors, false);
            Some(RelayConfig::Mx(MxRelayConfig {
                port,
                force_mx,
                client,
            }))
        }
        "lmtp" => {
            let path = s.opt(errors, "path", non_empty_string);
            let host = s.opt(errors, "host", non_empty_string);
            let port = s.or(errors, "port", 24, port);
            let target = match (path, host) {
                (Some(path), None) => Some(LmtpTarget::Unix(PathBuf::from(path))),
                (None, Some(host)) => Some(LmtpTarget::Tcp { host, port }),
                (Some(_), Some(_)) => {
                    errors.push(s.key_path("path"), "give either path or host, not both");
                    None
                }
                (None, None) => {
                    errors.push(
                        s.key_path("path"),
                        "missing required key (an LMTP relay needs path or host)",
                    );
                    None
                }
            };
            let client = read_smtp_client(&mut s, errors, true);
            target.map(|target| RelayConfig::Lmtp(LmtpRelayConfig { target, client }))
        }
        "http" => {
            let url = s.required(errors, "url", |v| {
                let u = string(v)?;
                if u.starts_with("http://") || u.starts_with("https://") {
                    Ok(u)
                } else {
                    Err(format!(
                        "invalid URL \"{u}\" (expected http:// or https://)"
                    ))
                }
            });
            let timeout = s.or(
                errors,
                "timeout",
                Duration::from_secs(60),
                positive_duration,
            );
            let ehlo_as = s.opt(errors, "ehlo_as", domain);
            url.map(|url| {
                RelayConfig::Http(HttpRelayConfig {
                    url,
                    timeout,
                    ehlo_as,
                })
            })
        }
        "pipe" => {
            let command = s.required(errors, "command", |v| match v {
                Value::Array(items) if items.is_empty() => {
                    Err("must name at least the program".to_owned())
                }
                _ => Ok(()),
            });
            let command = if command.is_some() {
                s.list(errors, "command", non_empty_string)
            } else {
                None
            };
            let per_recipient = s.or(errors, "per_recipient", false, boolean);
            let timeout = s.or(
                errors,
                "timeout",
                Duration::from_secs(60),
                positive_duration,
            );
            command.map(|command| {
                RelayConfig::Pipe(PipeRelayConfig {
                    command,
                    per_recipient,
                    timeout,
                })
            })
        }
        kind @ ("maildrop" | "dovecot") => {
            let default = if kind == "maildrop" {
                "/usr/bin/maildrop"
            } else {
                "/usr/lib/dovecot/dovecot-lda"
            };
            let path = s
                .or(errors, "path", default.to_owned(), non_empty_string)
                .into();
            let args = s.list(errors, "args", string).unwrap_or_default();
            let timeout = s.or(
                errors,
                "timeout",
                Duration::from_secs(60),
                positive_duration,
            );
            let config = CommandRelayConfig {
                path,
                args,
                timeout,
            };
            Some(if kind == "maildrop" {
                RelayConfig::Maildrop(config)
            } else {
                RelayConfig::Dovecot(config)
            })
        }
        _ => Some(RelayConfig::Blackhole),
    };
    s.finish(errors, &RELAY_KEYS, kind);
    relay
}

fn read_smtp_client(s: &mut Section<'_>, errors: &mut Errors, verify: bool) -> SmtpClientConfig {
    let ehlo_as = s.opt(errors, "ehlo_as", domain);
    let connect_timeout = s.or(
        errors,
        "connect_timeout",
        Duration::from_secs(30),
        positive_duration,
    );
    let command_timeout = s.or(
        errors,
        "command_timeout",
        Duration::from_secs(300),
        positive_duration,
    );
    let pool_size = s.or(errors, "pool_size", 10, count);
    let idle_timeout = s.or(
        errors,
        "idle_timeout",
        Duration::from_secs(10),
        positive_duration,
    );
    let tls = match s.opt(
        errors,
        "tls",
        choice(&["off", "opportunistic", "required", "immediate"]),
    ) {
        Some("off") => TlsMode::Off,
        Some("required") => TlsMode::Required,
        Some("immediate") => TlsMode::Immediate,
        _ => TlsMode::Opportunistic,
    };
    let tls_verify = s.or(errors, "tls_verify", verify, boolean);
    let credentials = s
        .table(errors, "credentials")
        .and_then(|c| read_credentials(c, errors));
    let source_addresses = s
        .list(errors, "source_addresses", ip_addr)
        .unwrap_or_default();
    SmtpClientConfig {
        ehlo_as,
        connect_timeout,
        command_timeout,
        pool_size,
        idle_timeout,
        tls,
        tls_verify,
        credentials,
        source_addresses,
    }
}

fn read_credentials(mut s: Section<'_>, errors: &mut Errors) -> Option<Credentials> {
    let username = s.required(errors, "username", non_empty_string);
    let password = s.required(errors, "password", string);
    s.finish(errors, &[], None);
    Some(Credentials {
        username: username?,
        password: password?,
    })
}

fn read_force_mx(s: &Section<'_>, errors: &mut Errors) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in s.table {
        let path = s.key_path(&format!("\"{key}\""));
        let domain = match check_domain(key) {
            Ok(d) => d,
            Err(why) => {
                errors.push(path, format!("invalid domain \"{key}\": {why}"));
                continue;
            }
        };
        match non_empty_string(value) {
            Ok(host) => {
                out.insert(domain, host);
            }
            Err(message) => errors.push(path, message),
        }
    }
    out
}

#[cfg(test)]
mod tests;
