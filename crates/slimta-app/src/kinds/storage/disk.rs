//! `type = "disk"`: a durable spool directory (`path`, required), with
//! small new messages going through the spool's shared journal
//! (`journal_max_message`, default 1 MiB; 0 turns the journal off).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slimta::queue::DynStorage;
use slimta::queue::disk::{DiskOptions, DiskStorage};

use super::{StorageKind, StorageSettings};
use crate::config::fields::{Errors, Section, integer, non_empty_string};

/// `[queue.NAME]` keys of a disk queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Disk {
    /// The spool directory (`path`).
    pub(crate) path: PathBuf,
    /// New messages up to this many bytes go through the journal.
    pub(crate) journal_max_message: u64,
}

impl StorageSettings for Disk {
    fn open(&self, section: &str) -> Result<Arc<dyn DynStorage>, String> {
        let options = DiskOptions {
            journal_max_message: usize::try_from(self.journal_max_message).unwrap_or(usize::MAX),
            ..DiskOptions::default()
        };
        let storage = DiskStorage::open_with(&self.path, options).map_err(|e| {
            format!(
                "{section}.path: cannot open the spool {}: {e}",
                self.path.display()
            )
        })?;
        Ok(Arc::new(storage))
    }

    fn durable(&self) -> bool {
        true
    }

    fn spool(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

pub(super) const DISK: StorageKind = StorageKind {
    name: "disk",
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let path = s.required(errors, "path", non_empty_string);
        let journal_max_message =
            s.or(errors, "journal_max_message", 1 << 20, integer(0, u64::MAX));
        path.map(|p| {
            Arc::new(Disk {
                path: PathBuf::from(p),
                journal_max_message,
            }) as Arc<dyn StorageSettings>
        })
    },
};
