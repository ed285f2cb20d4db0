//! The SMTP client keys the `static`, `mx` and `lmtp` relays share
//! (`ehlo_as`, timeouts, `tls*`, `credentials`, pool, `chunking`, source
//! addresses), read once into the library's [`ClientOptions`].
//!
//! Decisions worth knowing:
//! - The configuration holds the library's own type, so a relay is built by
//!   handing it over: a key added here reaches the three relays at once.
//! - The application's defaults are applied here, not left to the library's:
//!   20 sessions kept 10 s (the library's are 20 and no reuse), and TLS
//!   opportunistic for every kind, LMTP included. `tls_verify` defaults to
//!   what the caller says (true for static and lmtp, false for mx).
//! - `ehlo_as` stays unset when absent: the builder fills in
//!   `process.hostname`.

use std::path::PathBuf;
use std::time::Duration;

use slimta::relay::smtp::{ClientOptions, Credentials, SourceSelection, TlsMode};

use crate::config::fields::{
    Errors, Section, boolean, choice, count, domain, ip_addr, non_empty_string, positive_duration,
    string,
};

/// Sessions per host when `pool_size` is unset: as many as a destination
/// may have attempts in flight by default (`kinds/relay/destinations.rs`).
pub(super) const POOL_SIZE: usize = 20;

/// Reads the client keys of the relay section `s`; `verify` is the
/// `tls_verify` default of the relay's kind.
pub(super) fn read_smtp_client(
    s: &mut Section<'_>,
    errors: &mut Errors,
    verify: bool,
) -> ClientOptions {
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
    let pool_size = s.or(errors, "pool_size", POOL_SIZE, count);
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
    let source_selection = if s.or(
        errors,
        "source_selection",
        "round_robin",
        choice(&["round_robin", "random"]),
    ) == "random"
    {
        SourceSelection::Random
    } else {
        SourceSelection::RoundRobin
    };
    let tls_ca_file = s.opt(errors, "tls_ca_file", |v| {
        let path = PathBuf::from(non_empty_string(v)?);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("no such file: {}", path.display()))
        }
    });
    let allow_plaintext_auth = s.or(errors, "allow_plaintext_auth", false, boolean);
    let chunking = s.or(errors, "chunking", true, boolean);
    let mut options = ClientOptions::new()
        .connect_timeout(connect_timeout)
        .command_timeout(command_timeout)
        .pool_size(pool_size)
        .idle_timeout(idle_timeout)
        .tls(tls)
        .tls_verify(tls_verify)
        .allow_plaintext_auth(allow_plaintext_auth)
        .chunking(chunking)
        .source_addresses(source_addresses)
        .source_selection(source_selection);
    if let Some(name) = ehlo_as {
        options = options.ehlo_as(name);
    }
    if let Some(file) = tls_ca_file {
        options = options.tls_ca_file(file);
    }
    if let Some(credentials) = credentials {
        options = options.credentials(credentials);
    }
    options
}

/// `credentials = { username = "..", password = ".." }`.
fn read_credentials(mut s: Section<'_>, errors: &mut Errors) -> Option<Credentials> {
    let username = s.required(errors, "username", non_empty_string);
    let password = s.required(errors, "password", string);
    s.finish(errors, &[], None);
    Some(Credentials::new(username?, password?))
}

/// A relay's configured client settings, greeting as `hostname` unless
/// `ehlo_as` was given.
pub(super) fn with_hostname(client: &ClientOptions, hostname: &str) -> ClientOptions {
    match client.get_ehlo_as() {
        Some(_) => client.clone(),
        None => client.clone().ehlo_as(hostname),
    }
}
