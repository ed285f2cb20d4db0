//! [`FileReloads`]: what SIGHUP re-reads besides the configuration file:
//! the files that checks and policies load their data from (alias files,
//! address lists).
//!
//! A kind that reads a file registers a reload function when it is built;
//! every SIGHUP runs each one. Decisions:
//! - A file that cannot be read or parsed on a reload changes nothing: the
//!   check or policy keeps what it had, and the error is logged with the
//!   file's name (the same rule as the configuration file itself).
//! - Files are re-read on every SIGHUP, changed or not: cheap for the
//!   sizes involved, and no modification-time trap (an edit within the same
//!   second, a file replaced by an older copy).

use std::sync::{Arc, Mutex, PoisonError};

type Reload = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The reload functions registered so far; clones share them.
#[derive(Clone, Default)]
pub struct FileReloads {
    reloads: Arc<Mutex<Vec<(String, Reload)>>>,
}

impl std::fmt::Debug for FileReloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reloads = self.reloads.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(reloads.iter().map(|(what, _)| what))
            .finish()
    }
}

impl FileReloads {
    /// Registers `reload` under `what` (for the log: `check.rcpt.file`).
    /// It returns a summary for the log ("42 addresses") or the error;
    /// on an error it must leave the old contents in place.
    pub fn register(
        &self,
        what: impl Into<String>,
        reload: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) {
        self.reloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((what.into(), Box::new(reload)));
    }

    /// Runs every registered reload; returns how many failed.
    pub fn reload_all(&self) -> usize {
        let reloads = self.reloads.lock().unwrap_or_else(PoisonError::into_inner);
        let mut failed = 0;
        for (what, reload) in reloads.iter() {
            match reload() {
                Ok(summary) => tracing::info!(file = %what, loaded = %summary, "file reloaded"),
                Err(error) => {
                    failed += 1;
                    tracing::error!(file = %what, error = %error, "file not reloaded; keeping what was loaded");
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_reload_runs_and_failures_are_counted() {
        let files = FileReloads::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        files.register("a", move || {
            r.fetch_add(1, Ordering::Relaxed);
            Ok("1 entry".into())
        });
        files.register("b", || Err("no such file".into()));
        let shared = files.clone();
        assert_eq!(shared.reload_all(), 1);
        assert_eq!(files.reload_all(), 1);
        assert_eq!(runs.load(Ordering::Relaxed), 2);
    }
}
