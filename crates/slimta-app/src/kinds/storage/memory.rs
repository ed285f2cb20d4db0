//! `type = "memory"`: messages in a `HashMap`, lost on restart; for tests
//! and throwaway relays. No keys.

use std::sync::Arc;

use slimta::queue::DynStorage;
use slimta::queue::memory::MemoryStorage;

use super::{StorageKind, StorageSettings};
use crate::config::fields::{Errors, Section};

/// No settings.
#[derive(Debug)]
pub(crate) struct Memory;

impl StorageSettings for Memory {
    fn open(&self, _: &str) -> Result<Arc<dyn DynStorage>, String> {
        Ok(Arc::new(MemoryStorage::new()))
    }

    fn durable(&self) -> bool {
        false
    }
}

pub(super) const MEMORY: StorageKind = StorageKind {
    name: "memory",
    read: |_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(Memory)),
};
