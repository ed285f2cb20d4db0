//! The TOML schema of the `slimta` executable, and its checker.
//!
//! The file has the four sections of python-slimta's app (`[process]`,
//! `[edge.NAME]`, `[queue.NAME]`, `[relay.NAME]`) plus `[dns]` and
//! `[policy.NAME]` and `[check.NAME]` (named, parameterised queue policies and
//! edge checks: `kinds/policy/`, `kinds/check/`). Each configurable `type`
//! (storage, relay, policy, check) reads its own keys in its file under
//! `kinds/`. It is parsed
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
//! - A key may enter the schema before the daemon implements it: it
//!   parses, so the schema stays stable, and [`Config::unsupported`] names
//!   it so that `--check-config` and the daemon refuse it instead of
//!   half-running. (Every key of the schema is implemented today.)
//! - Names of edges, queues and relays are free-form TOML keys; errors quote
//!   them as written.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

pub use crate::kinds::check::CheckConfig;
pub use crate::kinds::policy::PolicyConfig;
pub use crate::kinds::relay::RelayConfig;
pub use crate::kinds::storage::StorageConfig;

use read::{read_config, syntax_error};

pub(crate) mod fields;
mod read;

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
    /// `[policy.NAME]`, by name (those a queue uses are also in its
    /// `policies` / `relay_policies`).
    pub policies: BTreeMap<String, PolicyConfig>,
    /// `[check.NAME]`, by name (those an edge uses are also in its
    /// `checks`).
    pub checks: BTreeMap<String, CheckConfig>,
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
    /// Checks run after the relay-control rule, in order (`checks`:
    /// `[check.NAME]` names). Default none.
    pub checks: Vec<CheckConfig>,
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
    /// Unix-socket paths to listen on (`listen = ["unix:/path"]`).
    pub listen_unix: Vec<PathBuf>,
    /// `tls = { cert = "...", key = "..." }`: PEM files for STARTTLS,
    /// implicit TLS and HTTPS.
    pub tls: Option<EdgeTlsConfig>,
    /// `tls_immediately`: TLS on connect (port 465 style). Default false.
    pub tls_immediately: bool,
    /// `proxy_protocol`: `"off"` (default), `"v1"`, `"v2"` or `"auto"`.
    pub proxy_protocol: ProxyProtocol,
    /// `[edge.NAME.auth]`: SMTP AUTH / HTTP Basic; `None` when absent.
    pub auth: Option<EdgeAuthConfig>,
    /// `reverse_dns`: look up the client's forward-confirmed PTR name.
    /// Default true.
    pub reverse_dns: bool,
}

/// `edge.NAME.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTlsConfig {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// `edge.NAME.proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// No PROXY header is expected; a `PROXY` line is a bad command.
    #[default]
    Off,
    /// HAProxy PROXY v1 (text).
    V1,
    /// HAProxy PROXY v2 (binary).
    V2,
    /// Either version.
    Auto,
}

/// `[edge.NAME.auth]`.
#[derive(Clone, PartialEq, Eq)]
pub struct EdgeAuthConfig {
    /// SASL mechanisms offered, upper case. Default PLAIN, LOGIN, CRAM-MD5.
    pub mechanisms: Vec<String>,
    /// Offer PLAIN/LOGIN before TLS. Default false.
    pub allow_plaintext: bool,
    /// Refuse MAIL until AUTH succeeded. Default false.
    pub required: bool,
    /// User name to Dovecot-style scheme-prefixed secret.
    pub users: BTreeMap<String, String>,
}

impl std::fmt::Debug for EdgeAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeAuthConfig")
            .field("mechanisms", &self.mechanisms)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("required", &self.required)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `edge.NAME.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// `"smtp"`.
    Smtp,
    /// `"lmtp"`: LHLO, one reply per recipient (TCP or `unix:` paths).
    Lmtp,
    /// `"http"`: POST message/rfc822 with envelope headers.
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
    /// Where messages are kept: `type` and that kind's keys
    /// (`kinds/storage/`).
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
    /// Send one delay warning (`Action: delayed`) to the sender of a
    /// message still undelivered this long after it arrived
    /// (`delay_warning`). Default: none.
    pub delay_warning: Option<Duration>,
    /// Log the queue's size and oldest age this often (`stats_interval`,
    /// default 60 s; `"0s"` turns it off).
    pub stats_interval: Option<Duration>,
    /// Queue policies applied in order before a message is stored
    /// (`policies`: `[policy.NAME]` names or bare kinds). Default none.
    pub policies: Vec<PolicyConfig>,
    /// Relay policies applied in order on a copy before every delivery
    /// attempt (`relay_policies`). Default none.
    pub relay_policies: Vec<PolicyConfig>,
    /// `[queue.NAME.retry]`.
    pub retry: RetryConfig,
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
        // Nothing at the moment (privilege dropping, the last entry, is
        // done: `privileges.rs`).
        Vec::new()
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
    let mut errors = fields::Errors::default();
    let config = read_config(&root, &mut errors);
    if errors.0.is_empty() {
        Ok(config)
    } else {
        Err(errors.0)
    }
}

#[cfg(test)]
mod tests;
