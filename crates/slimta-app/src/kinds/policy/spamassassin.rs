//! `type = "spamassassin"`: asks spamd about every message before it is
//! stored (`slimta::policy::spamassassin`). Keys: `address` (IP:PORT,
//! default `127.0.0.1:783`, spamd's own default), `timeout` (default 10 s),
//! `reject` (default false: spam is marked `X-Spam-Status: YES` and
//! stored; true: refused with 554 5.7.1), `on_error` (`"accept"`, the
//! default, or `"tempfail"`: 451 4.7.1 while spamd cannot be asked),
//! `max_size` (bytes, default 512000 as spamc; larger messages are stored
//! unscanned and marked so; 0 scans everything).
//! A queue policy only: the verdict belongs in the stored message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use slimta::policy::DynQueuePolicy;
use slimta::policy::spamassassin::{DEFAULT_MAX_SIZE, DEFAULT_TIMEOUT, SpamAssassin};

use super::on_error::on_error;
use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{Errors, Section, boolean, integer, positive_duration, socket_addr};

/// spamd's own default port, on this machine.
const DEFAULT_ADDRESS: &str = "127.0.0.1:783";

#[derive(Debug)]
struct Settings {
    policy: SpamAssassin,
}

impl PolicySettings for Settings {
    fn queue_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(self.policy.clone()))
    }
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Arc<dyn PolicySettings>> {
    let default: SocketAddr = DEFAULT_ADDRESS.parse().ok()?;
    let address = s.or(errors, "address", default, socket_addr);
    let timeout: Duration = s.or(errors, "timeout", DEFAULT_TIMEOUT, positive_duration);
    let reject = s.or(errors, "reject", false, boolean);
    let on_error = s.or(errors, "on_error", Default::default(), on_error);
    let max_size = s.or(errors, "max_size", DEFAULT_MAX_SIZE, |v| {
        usize::try_from(integer(0, u64::from(u32::MAX))(v)?).map_err(|e| e.to_string())
    });
    let policy = SpamAssassin::new(address)
        .timeout(timeout)
        .reject(reject)
        .on_error(on_error)
        .max_size(max_size);
    Some(Arc::new(Settings { policy }))
}

pub(super) const SPAMASSASSIN: PolicyKind = PolicyKind {
    name: "spamassassin",
    stages: &[Stage::Queue],
    bare: false,
    read: Some(read),
};

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const QUEUE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
        [queue.main]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"spam\"]\n\
        [relay.out]\ntype = \"blackhole\"\n";

    fn settings(section: &str) -> Result<String, Vec<String>> {
        let text = format!("{QUEUE}[policy.spam]\ntype = \"spamassassin\"\n{section}");
        parse(&text)
            .map(|c| format!("{:?}", c.policies["spam"].settings))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn reads_every_key_and_the_defaults() {
        assert_eq!(
            settings("").unwrap(),
            "Settings { policy: SpamAssassin { addr: 127.0.0.1:783, timeout: 10s, reject: false, on_error: Accept, max_size: 512000 } }"
        );
        assert_eq!(
            settings(
                "address = \"127.0.0.1:7830\"\ntimeout = \"3s\"\nreject = true\non_error = \"tempfail\"\n"
            )
            .unwrap(),
            "Settings { policy: SpamAssassin { addr: 127.0.0.1:7830, timeout: 3s, reject: true, on_error: Tempfail, max_size: 512000 } }"
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_keys() {
        assert_eq!(
            settings(
                "address = \"localhost\"\ntimeout = \"0s\"\nreject = \"yes\"\non_error = \"drop\"\nurl = \"http://x\"\n"
            )
            .unwrap_err(),
            [
                "policy.spam.address: invalid socket address \"localhost\" (expected IP:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\")",
                "policy.spam.timeout: must be longer than zero",
                "policy.spam.reject: expected a boolean, found string",
                "policy.spam.on_error: unknown value \"drop\" (expected one of: \"accept\", \"tempfail\")",
                "policy.spam.url: unknown key for type \"spamassassin\"",
            ]
        );
        assert_eq!(
            settings("colour = 1\n").unwrap_err(),
            [
                "policy.spam.colour: unknown key (expected one of: address, max_size, on_error, reject, timeout, type)"
            ]
        );
    }
}
