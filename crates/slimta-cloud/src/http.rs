//! What the HTTP-speaking backends (Swift, Zaqar) share: turning reqwest's
//! failures and unexpected statuses into the [`io::Error`] kinds the queue
//! acts on.
//!
//! Decision: a server that cannot be reached (refused, reset, timed out)
//! keeps its connection kind, so the edge answers a new message
//! `451 4.3.0`; an answer the client did not expect is `Other` (or
//! `StorageFull` for 507), which the edge answers `452 4.3.1`.

use std::io;

/// The connection kinds [`io_error`] keeps from the underlying failure.
fn is_connection_kind(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

/// `e` (a request that failed without an answer) as an I/O error of a
/// connection kind: the underlying socket error's own kind when there is
/// one, else `TimedOut` for a timeout and `ConnectionRefused` for a failed
/// connect, else `ConnectionAborted` (the exchange broke off).
pub(crate) fn io_error(what: &str, e: &reqwest::Error) -> io::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && is_connection_kind(io.kind())
        {
            return io::Error::new(io.kind(), format!("{what}: {e}"));
        }
        source = err.source();
    }
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else if e.is_connect() {
        io::ErrorKind::ConnectionRefused
    } else {
        io::ErrorKind::ConnectionAborted
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

/// An answer with a status the caller does not handle.
pub(crate) fn status_error(what: &str, status: reqwest::StatusCode, body: &str) -> io::Error {
    let kind = if status == reqwest::StatusCode::INSUFFICIENT_STORAGE {
        io::ErrorKind::StorageFull
    } else {
        io::ErrorKind::Other
    };
    let body: String = body.chars().take(200).collect();
    io::Error::new(kind, format!("{what}: HTTP {status}: {}", body.trim()))
}

/// Percent-encodes `s` for a URL path, keeping `/` when `keep_slash`
/// (object names are paths in Swift; a container or queue name is one
/// segment).
pub(crate) fn encode_path(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Refuses a `url` that is not http(s), naming `what` (the backend).
pub(crate) fn require_http_url(what: &str, url: &str) -> io::Result<()> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: URL {url:?} is not http(s)"),
        ))
    }
}

/// The HTTP client of a backend: every request bounded by `timeout`, every
/// connect by `connect_timeout`.
pub(crate) fn client(
    what: &str,
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
) -> io::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| io::Error::other(format!("{what}: HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn encodes_everything_but_unreserved() {
        assert_eq!(
            encode_path("queue/a b/é?#%", true),
            "queue/a%20b/%C3%A9%3F%23%25"
        );
        assert_eq!(encode_path("a/b", false), "a%2Fb");
        assert_eq!(encode_path("A-z.0_9~", false), "A-z.0_9~");
    }
}
