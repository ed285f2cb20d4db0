//! [`MemoryObjects`]: an [`ObjectBackend`] in memory, for unit tests of
//! what is built on the trait (the storage's key layout, races, removal
//! order) without a server, and for the conformance suite's quick run.
//!
//! It keeps the one property the storage relies on, create-only puts,
//! and can be made unreachable to test the failure paths.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::object::{ObjectBackend, ObjectFuture};

/// Objects in memory; clones share them.
#[derive(Clone, Debug, Default)]
pub struct MemoryObjects {
    objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    unreachable: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl MemoryObjects {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every call fails with `ConnectionRefused`.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// Every key stored, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many calls were made (failed ones too).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "memory object store made unreachable",
            ));
        }
        Ok(())
    }
}

impl ObjectBackend for MemoryObjects {
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            self.check()?;
            let mut objects = self.lock();
            if objects.contains_key(key) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, key.to_owned()));
            }
            objects.insert(key.to_owned(), body);
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.check()?;
            self.lock()
                .get(key)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, key.to_owned()))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            self.check()?;
            self.lock().remove(key);
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .lock()
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect())
        })
    }
}
