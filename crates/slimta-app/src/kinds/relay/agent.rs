//! `type = "maildrop"` and `type = "dovecot"`: a local delivery agent run
//! once per recipient, Courier maildrop or dovecot-lda. Both take the same
//! keys: `path` (default `/usr/bin/maildrop` or
//! `/usr/lib/dovecot/dovecot-lda`), `args` (extra arguments with the
//! templates of `pipe`) and `timeout` (default 60 s). They share one file,
//! as they differ only in the default program and the library preset.
//!
//! Decision: explicit `args` replace the preset's arguments: the program is
//! then run as given, once per recipient, as a pipe relay (both programs
//! deliver to one user).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slimta::DynRelay;
use slimta::relay::pipe::{DovecotLdaRelay, MaildropRelay, PipeRelay};

use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section, non_empty_string, positive_duration, string};

/// Which agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Maildrop,
    Dovecot,
}

/// `[relay.NAME]` keys of a delivery agent relay.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Agent {
    program: Program,
    /// The program.
    pub(crate) path: PathBuf,
    /// Extra arguments.
    pub(crate) args: Vec<String>,
    pub(crate) timeout: Duration,
}

impl RelaySettings for Agent {
    fn build(&self, _: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        let path = self.path.display().to_string();
        if !self.args.is_empty() {
            let mut command = vec![path];
            command.extend(self.args.iter().cloned());
            return Ok(Arc::new(
                PipeRelay::new(command)
                    .per_recipient(true)
                    .timeout(self.timeout),
            ));
        }
        Ok(match self.program {
            Program::Maildrop => Arc::new(MaildropRelay::new().path(path).timeout(self.timeout)),
            Program::Dovecot => Arc::new(DovecotLdaRelay::new().path(path).timeout(self.timeout)),
        })
    }
}

fn read(
    program: Program,
    default: &str,
    s: &mut Section<'_>,
    errors: &mut Errors,
) -> Option<Arc<dyn RelaySettings>> {
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
    Some(Arc::new(Agent {
        program,
        path,
        args,
        timeout,
    }))
}

pub(super) const MAILDROP: RelayKind = RelayKind {
    name: "maildrop",
    dns: false,
    pooled: false,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        read(Program::Maildrop, "/usr/bin/maildrop", s, errors)
    },
};

pub(super) const DOVECOT: RelayKind = RelayKind {
    name: "dovecot",
    dns: false,
    pooled: false,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        read(Program::Dovecot, "/usr/lib/dovecot/dovecot-lda", s, errors)
    },
};
