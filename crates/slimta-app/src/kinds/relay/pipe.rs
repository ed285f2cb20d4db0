//! `type = "pipe"`: a local program per message, or per recipient
//! (`per_recipient`, default false), given as `command` (program and
//! arguments with `{sender}`, `{recipient}`, ... templates; required,
//! non-empty), with `timeout` (default 60 s).

use std::sync::Arc;
use std::time::Duration;

use slimta::DynRelay;
use slimta::relay::pipe::PipeRelay;
use toml::Value;

use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section, boolean, non_empty_string, positive_duration};

/// `[relay.NAME]` keys of a pipe relay.
#[derive(Debug, PartialEq, Eq)]
struct Pipe {
    command: Vec<String>,
    per_recipient: bool,
    timeout: Duration,
}

impl RelaySettings for Pipe {
    fn build(&self, _: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        Ok(Arc::new(
            PipeRelay::new(self.command.clone())
                .per_recipient(self.per_recipient)
                .timeout(self.timeout),
        ))
    }
}

pub(super) const PIPE: RelayKind = RelayKind {
    name: "pipe",
    dns: false,
    pooled: false,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
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
            Arc::new(Pipe {
                command,
                per_recipient,
                timeout,
            }) as Arc<dyn RelaySettings>
        })
    },
};
