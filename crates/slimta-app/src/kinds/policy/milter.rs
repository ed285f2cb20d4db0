//! `type = "milter"`: runs every message past a mail filter (clamav-milter,
//! OpenDKIM, rspamd's milter proxy, ...) before it is stored
//! (`slimta::policy::milter`). Keys: `address` (required: `HOST:PORT` or
//! `unix:/path`), `timeout` (for each answer of the filter, default 30 s),
//! `on_error` (`"tempfail"`, the default: 451 4.7.1 while the filter cannot
//! be asked, or `"accept"`: store the message unchanged). Every milter
//! verdict and change is honoured (see the library's docs). The `j` macro
//! is `process.hostname`.
//!
//! A queue policy only: the filter sees the whole message, and its refusal
//! reaches the client at the end of DATA through any edge. The default
//! `on_error` differs from the spam scanners' (`accept`) because a milter is
//! often a virus scanner or a signer, where letting mail through unchecked
//! or unsigned is the worse failure.

use std::sync::Arc;
use std::time::Duration;

use slimta::policy::DynQueuePolicy;
use slimta::policy::milter::{DEFAULT_TIMEOUT, Milter, MilterAddress, OnError};
use toml::Value;

use super::on_error::on_error;
use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{Errors, Section, positive_duration, string};

#[derive(Debug)]
struct Settings {
    address: MilterAddress,
    timeout: Duration,
    on_error: OnError,
}

impl PolicySettings for Settings {
    fn queue_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(
            Milter::new(self.address.clone())
                .timeout(self.timeout)
                .on_error(self.on_error)
                .hostname(context.hostname),
        ))
    }
}

fn address(value: &Value) -> Result<MilterAddress, String> {
    string(value)?.parse()
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Arc<dyn PolicySettings>> {
    let address = s.required(errors, "address", address);
    let timeout = s.or(errors, "timeout", DEFAULT_TIMEOUT, positive_duration);
    let on_error = s.or(errors, "on_error", OnError::Tempfail, on_error);
    Some(Arc::new(Settings {
        address: address?,
        timeout,
        on_error,
    }))
}

pub(super) const MILTER: PolicyKind = PolicyKind {
    name: "milter",
    stages: &[Stage::Queue],
    bare: false,
    read: Some(read),
};

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const QUEUE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
        [queue.main]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"clam\"]\n\
        [relay.out]\ntype = \"blackhole\"\n";

    fn settings(section: &str) -> Result<String, Vec<String>> {
        let text = format!("{QUEUE}[policy.clam]\ntype = \"milter\"\n{section}");
        parse(&text)
            .map(|c| format!("{:?}", c.policies["clam"].settings))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn reads_every_key_and_the_defaults() {
        assert_eq!(
            settings("address = \"127.0.0.1:7357\"\n").unwrap(),
            "Settings { address: Tcp(\"127.0.0.1:7357\"), timeout: 30s, on_error: Tempfail }"
        );
        assert_eq!(
            settings(
                "address = \"unix:/run/clamav/milter.sock\"\ntimeout = \"5s\"\non_error = \"accept\"\n"
            )
            .unwrap(),
            "Settings { address: Unix(\"/run/clamav/milter.sock\"), timeout: 5s, on_error: Accept }"
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_keys() {
        assert_eq!(
            settings(
                "address = \"inet:7357@127.0.0.1\"\ntimeout = \"0s\"\non_error = \"drop\"\nreject = true\n"
            )
            .unwrap_err(),
            [
                "policy.clam.address: invalid milter address \"inet:7357@127.0.0.1\" (expected HOST:PORT, e.g. \"127.0.0.1:7357\", or \"unix:/path\")",
                "policy.clam.timeout: must be longer than zero",
                "policy.clam.on_error: unknown value \"drop\" (expected one of: \"accept\", \"tempfail\")",
                "policy.clam.reject: unknown key for type \"milter\"",
            ]
        );
        assert_eq!(
            settings("").unwrap_err(),
            ["policy.clam.address: missing required key"]
        );
        assert_eq!(
            settings("address = \"unix:milter.sock\"\n").unwrap_err(),
            [
                "policy.clam.address: invalid milter address \"unix:milter.sock\" (a unix socket needs an absolute path, e.g. \"unix:/run/milter.sock\")"
            ]
        );
    }

    #[test]
    fn runs_only_as_a_queue_policy() {
        let text = QUEUE.replace("policies = [\"clam\"]", "relay_policies = [\"clam\"]")
            + "[policy.clam]\ntype = \"milter\"\naddress = \"127.0.0.1:7357\"\n";
        let errors: Vec<String> = parse(&text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("cannot run in relay_policies")),
            "{errors:?}"
        );
    }
}
