//! swaks, the scriptable SMTP client, as an independent sender: a test
//! that sends with swaks checks our server against someone else's client.

use std::net::SocketAddr;
use std::process::{Command, Output};

use crate::require;

/// Runs `swaks --server SERVER --port PORT --timeout 30 ARGS...` (e.g.
/// `["--from", "a@x.test", "--to", "b@y.test"]`) and returns its output once
/// it exits; `status.success()` means every reply was the expected one.
///
/// # Panics
///
/// If swaks is not installed or cannot be started.
pub fn swaks(server: SocketAddr, args: &[&str]) -> Output {
    let program = require("swaks", "swaks");
    Command::new(program)
        .arg("--server")
        .arg(server.ip().to_string())
        .arg("--port")
        .arg(server.port().to_string())
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .expect("run swaks")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::SmtpSink;

    #[test]
    fn swaks_delivers_to_smtp_sink() {
        let sink = SmtpSink::start(&[], true);
        let out = super::swaks(
            sink.addr(),
            &["--from", "a@x.test", "--to", "b@y.test", "--body", "hello"],
        );
        assert!(out.status.success(), "{out:?}");
        let got = sink.wait_for_messages(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rcpt_args, vec!["<b@y.test>"]);
    }
}
