//! Queue storages of the app: the `type` of a `[queue.NAME]` section and
//! the keys that go with it (the queue's own keys are read by the config
//! reader around it).
//!
//! Each kind is a [`StorageKind`] in [`KINDS`]: its `type` name and the
//! function that reads its keys into [`StorageSettings`], which later opens
//! the library storage as an `Arc<dyn DynStorage>`.
//!
//! Decisions:
//! - The app holds every queue as `Queue<Arc<dyn DynStorage>, _>`, whatever
//!   its kind: a kind is one file and one table line, with no enum of
//!   storage types to grow in the builder. The dynamic call per storage
//!   operation costs nothing measurable next to what the operation does
//!   (an fsync, a network round trip).
//! - What the app needs beyond the storage trait is asked of the settings,
//!   not of the running storage (no downcasting): whether messages survive
//!   a restart ([`StorageSettings::durable`], which decides how a queue
//!   stops) and the local spool directory, if any ([`StorageSettings::spool`]:
//!   given to `process.user`, home of the control socket, operated by
//!   `slimta queue`). Backend figures come through
//!   `QueueStorage::counters`.

mod cloud;
mod disk;
mod memory;
mod redis;

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use slimta::queue::{DestinationSettings, DynDispatch, DynStorage, LocalDispatch};

use crate::config::fields::{Errors, Section};

/// The settings one kind read from its queue section, able to open the
/// storage.
pub trait StorageSettings: Any + fmt::Debug + Send + Sync {
    /// Opens the storage; `section` is the queue's key path
    /// (`queue.NAME`), for the error message.
    ///
    /// # Errors
    ///
    /// A message with its key path when the storage cannot be opened.
    fn open(&self, section: &str) -> Result<Arc<dyn DynStorage>, String>;

    /// Whether stored messages survive a restart. A queue over a storage
    /// that does not keep them first gets a bounded time to deliver what it
    /// holds at shutdown; a durable one starts no new attempt.
    fn durable(&self) -> bool;

    /// The spool directory on this machine (the `path` key), if the storage
    /// keeps one: it is given to `process.user`, holds the queue's control
    /// socket, is operated by `slimta queue` and is never shared by two
    /// queues.
    fn spool(&self) -> Option<&Path> {
        None
    }

    /// The queue's dispatcher (who attempts what next; see
    /// `slimta::queue::dispatch`). The default is the in-process
    /// `LocalDispatch` with the relay's per-destination `destinations`
    /// settings; a storage shared by several processes brings its own
    /// (leases kept in the shared store).
    ///
    /// # Errors
    ///
    /// A message with its key path when the dispatcher cannot be set up.
    fn dispatch(
        &self,
        section: &str,
        destinations: DestinationSettings,
    ) -> Result<Arc<dyn DynDispatch>, String> {
        let _ = section;
        Ok(Arc::new(LocalDispatch::new(destinations)))
    }

    /// Whether several processes may share the store (Redis, a cloud store
    /// with a notify queue). `slimta queue` then operates on the store
    /// directly, with no daemon's control socket.
    fn shared(&self) -> bool {
        false
    }
}

/// Reads a kind's keys from its queue section (`type` is already taken).
type ReadSettings = super::sections::Reader<dyn StorageSettings>;

/// One `type` of queue storage.
pub struct StorageKind {
    /// The `type` in the file.
    pub name: &'static str,
    read: ReadSettings,
}

/// Every kind of storage the app knows.
pub const KINDS: &[StorageKind] = &[memory::MEMORY, disk::DISK, redis::REDIS, cloud::CLOUD];

/// A queue's configured storage: the queue's name, the kind and its keys.
pub type StorageConfig = super::sections::Configured<StorageKind>;

impl StorageConfig {
    /// See [`StorageSettings::open`].
    ///
    /// # Errors
    ///
    /// See [`StorageSettings::open`].
    pub fn open(&self, section: &str) -> Result<Arc<dyn DynStorage>, String> {
        self.settings.open(section)
    }

    /// See [`StorageSettings::durable`].
    pub fn durable(&self) -> bool {
        self.settings.durable()
    }

    /// See [`StorageSettings::spool`].
    pub fn spool(&self) -> Option<&Path> {
        self.settings.spool()
    }

    /// See [`StorageSettings::dispatch`].
    ///
    /// # Errors
    ///
    /// See [`StorageSettings::dispatch`].
    pub fn dispatch(
        &self,
        section: &str,
        destinations: DestinationSettings,
    ) -> Result<Arc<dyn DynDispatch>, String> {
        self.settings.dispatch(section, destinations)
    }

    /// See [`StorageSettings::shared`].
    pub fn shared(&self) -> bool {
        self.settings.shared()
    }

    /// The kind's settings as `T`, for tests of the reader.
    #[cfg(test)]
    pub(crate) fn settings_as<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.settings;
        any.downcast_ref()
    }
}

impl super::sections::Kind for StorageKind {
    type Settings = dyn StorageSettings;
    fn name(&self) -> &'static str {
        self.name
    }
}

impl super::sections::Readable for StorageKind {
    fn reader(&self) -> Option<ReadSettings> {
        Some(self.read)
    }
}

/// Reads the storage `type` of the queue section `s` and that kind's keys
/// (the queue's name is `name`). `None`: no usable `type` (reported);
/// `Some((kind, None))`: the kind's keys have errors (reported).
pub(crate) fn read(
    name: &str,
    s: &mut Section<'_>,
    errors: &mut Errors,
) -> Option<(&'static StorageKind, Option<StorageConfig>)> {
    let (kind, settings) = super::sections::read_kind("storage", KINDS, s, errors)?;
    let config = settings.map(|settings| StorageConfig {
        name: name.to_owned(),
        kind,
        settings,
    });
    Some((kind, config))
}

/// Every key some storage kind reads (see `sections::keys_of`).
pub(crate) fn keys() -> Vec<&'static str> {
    super::sections::keys_of(KINDS)
}

#[cfg(test)]
pub(crate) use disk::Disk;
