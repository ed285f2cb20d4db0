//! The sections every test config repeats, one function per section.
//!
//! A test joins the sections it needs (`[a, b, c].concat()`) and passes
//! its own keys as `extra` lines, so each config still reads as TOML in the
//! test while the common keys (listen address, queue and relay names) are
//! written once. The result keeps the `{port}` (and, for a disk queue in a
//! test daemon's directory, `{dir}`) placeholders that the test harnesses
//! replace.

use std::net::SocketAddr;

/// `[process]` with `hostname` and `extra` lines (`log_level = "info"`).
pub fn process(hostname: &str, extra: &str) -> String {
    format!("\n[process]\nhostname = \"{hostname}\"\n{extra}\n")
}

/// `[edge.in]`: SMTP on `127.0.0.1:{port}` into queue `main`, accepting
/// `domains` (a TOML array body such as `"example.test"`), then `extra`.
pub fn smtp_edge(domains: &str, extra: &str) -> String {
    smtp_edge_on(
        "\"127.0.0.1:{port}\"",
        &format!("accept_domains = [{domains}]\n{extra}"),
    )
}

/// `[edge.in]`: SMTP on `listen` (a TOML array body such as
/// `"127.0.0.1:0"`) into queue `main`, then `extra`.
pub fn smtp_edge_on(listen: &str, extra: &str) -> String {
    format!("\n[edge.in]\ntype = \"smtp\"\nlisten = [{listen}]\nqueue = \"main\"\n{extra}\n")
}

/// `[queue.main]`: a memory queue relaying with `out`, then `extra`.
pub fn memory_queue(extra: &str) -> String {
    memory_queue_via("out", extra)
}

/// `[queue.main]`: a memory queue relaying with `relay`, then `extra`.
pub fn memory_queue_via(relay: &str, extra: &str) -> String {
    format!("\n[queue.main]\ntype = \"memory\"\nrelay = \"{relay}\"\n{extra}\n")
}

/// `[queue.main]`: a disk queue at `path` relaying with `out`, then `extra`.
/// `"{dir}/spool"` is the test daemon's own directory.
pub fn disk_queue(path: &str, extra: &str) -> String {
    format!("\n[queue.main]\ntype = \"disk\"\npath = \"{path}\"\nrelay = \"out\"\n{extra}\n")
}

/// `[queue.main.retry]` with `initial_delay` and, when given, `max_delay`.
pub fn retry(initial_delay: &str, max_delay: Option<&str>) -> String {
    let max = max_delay
        .map(|d| format!("max_delay = \"{d}\"\n"))
        .unwrap_or_default();
    format!("\n[queue.main.retry]\ninitial_delay = \"{initial_delay}\"\n{max}")
}

/// `[relay.out]`: a static relay to `to`, then `extra`.
pub fn static_relay(to: SocketAddr, extra: &str) -> String {
    format!(
        "\n[relay.out]\ntype = \"static\"\nhost = \"{}\"\nport = {}\n{extra}\n",
        to.ip(),
        to.port()
    )
}

/// `[relay.out]`: an MX relay on `port` with example.test forced to
/// 127.0.0.2 and x.test to 127.0.0.3, and a `[dns]` that is never asked
/// (every domain is forced) but is never the machine's resolver either.
pub fn forced_mx_relay(port: u16) -> String {
    format!(
        "\n[relay.out]\ntype = \"mx\"\nport = {port}\n\
         force_mx = {{ \"example.test\" = \"127.0.0.2\", \"x.test\" = \"127.0.0.3\" }}\n\
         \n[dns]\nnameservers = [\"127.0.0.1:9\"]\n"
    )
}

/// `[relay.out]` of type `blackhole` (accepts and drops every message).
pub fn blackhole_relay() -> String {
    relay("blackhole", "")
}

/// `[relay.out]` of type `kind` with `extra` lines (its own keys).
pub fn relay(kind: &str, extra: &str) -> String {
    format!("\n[relay.out]\ntype = \"{kind}\"\n{extra}")
}
