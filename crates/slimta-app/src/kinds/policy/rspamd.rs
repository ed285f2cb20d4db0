//! `type = "rspamd"`: asks rspamd (`POST /checkv2`) about every message
//! before it is stored, and does what its action says
//! (`slimta::policy::rspamd`). Keys: `url` (the normal worker, default
//! `http://127.0.0.1:11333`, rspamd's own default), `timeout` (default
//! 10 s), `on_error` (`"accept"`, the default, or `"tempfail"`). There is
//! no `reject` key: rspamd's action decides. The URL is checked (and the
//! HTTP client built) when the file is read, so a bad one is a
//! `--check-config` error.

use std::sync::Arc;
use std::time::Duration;

use slimta::policy::DynQueuePolicy;
use slimta::policy::rspamd::{DEFAULT_TIMEOUT, Rspamd};

use super::on_error::on_error;
use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{Errors, Section, positive_duration, string};

/// rspamd's normal worker on its default port, on this machine.
const DEFAULT_URL: &str = "http://127.0.0.1:11333";

#[derive(Debug)]
struct Settings {
    policy: Rspamd,
}

impl PolicySettings for Settings {
    fn queue_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(self.policy.clone()))
    }
}

fn read(s: &mut Section<'_>, errors: &mut Errors) -> Option<Arc<dyn PolicySettings>> {
    let url = s.opt(errors, "url", |v| {
        let url = string(v)?;
        Rspamd::new(&url)
            .map(|_| url.clone())
            .map_err(|e| format!("invalid URL ({e}; expected e.g. \"{DEFAULT_URL}\")"))
    });
    let timeout: Duration = s.or(errors, "timeout", DEFAULT_TIMEOUT, positive_duration);
    let on_error = s.or(errors, "on_error", Default::default(), on_error);
    if s.table.contains_key("url") && url.is_none() {
        return None;
    }
    let url = url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    let policy = Rspamd::new(&url).ok()?.timeout(timeout).on_error(on_error);
    Some(Arc::new(Settings { policy }))
}

pub(super) const RSPAMD: PolicyKind = PolicyKind {
    name: "rspamd",
    stages: &[Stage::Queue],
    bare: false,
    read: Some(read),
};

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const QUEUE: &str = "[edge.in]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"\n\
        [queue.main]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"scan\"]\n\
        [relay.out]\ntype = \"blackhole\"\n";

    fn settings(section: &str) -> Result<String, Vec<String>> {
        let text = format!("{QUEUE}[policy.scan]\ntype = \"rspamd\"\n{section}");
        parse(&text)
            .map(|c| format!("{:?}", c.policies["scan"].settings))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    /// The parts of the Debug output that are ours (reqwest's client prints
    /// its own fields between them).
    fn summary(debug: &str) -> Vec<&str> {
        ["port: ", "path: ", "timeout: ", "on_error: "]
            .iter()
            .filter_map(|k| debug.find(k).map(|i| &debug[i..]))
            .map(|rest| rest.split([',', '}']).next().unwrap_or(rest).trim())
            .collect()
    }

    #[test]
    fn reads_every_key_and_the_defaults() {
        assert_eq!(
            summary(&settings("").unwrap()),
            [
                "port: Some(11333)",
                "path: \"/checkv2\"",
                "timeout: 10s",
                "on_error: Accept"
            ]
        );
        let set = settings(
            "url = \"http://127.0.0.1:11433/\"\ntimeout = \"2s\"\non_error = \"tempfail\"\n",
        )
        .unwrap();
        assert_eq!(
            summary(&set),
            [
                "port: Some(11433)",
                "path: \"/checkv2\"",
                "timeout: 2s",
                "on_error: Tempfail"
            ]
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_keys() {
        assert_eq!(
            settings(
                "url = \"127.0.0.1:11333\"\ntimeout = \"soon\"\non_error = 1\nreject = true\n"
            )
            .unwrap_err(),
            [
                "policy.scan.url: invalid URL (127.0.0.1:11333: relative URL without a base; expected e.g. \"http://127.0.0.1:11333\")",
                "policy.scan.timeout: invalid duration \"soon\" (expected e.g. \"300s\", \"5m\", \"5d\"): expected number at 0",
                "policy.scan.on_error: expected a string, found integer",
                "policy.scan.reject: unknown key for type \"rspamd\"",
            ]
        );
        assert_eq!(
            settings("url = \"ftp://scan.test\"\n").unwrap_err(),
            [
                "policy.scan.url: invalid URL (ftp://scan.test: not an http(s) URL; expected e.g. \"http://127.0.0.1:11333\")"
            ]
        );
    }
}
