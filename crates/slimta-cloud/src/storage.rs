//! [`CloudStorage`]: the queue's [`QueueStorage`] in an object store, over
//! any [`ObjectBackend`] (S3, Swift, or the in-memory one of the tests).
//!
//! Key layout (under the configured prefix):
//! - `{prefix}env/{id}`: [`codec::encode_envelope`], created once when the
//!   message is queued, never changed.
//! - `{prefix}meta/{id}/{seq:010}-{due:020}`: [`codec::encode_meta`], where
//!   `seq` counts the record's versions and `due` is the due time in
//!   nanoseconds since the Unix epoch. Created, never overwritten: the
//!   highest `seq` is current.
//!
//! Decisions:
//! - A change of the metadata (an attempt's outcome, an operator's "retry
//!   now") reads the current version, applies the change and creates
//!   `seq + 1`. Two processes changing one message at once both try to
//!   create the same name; the store lets exactly one win, and the loser
//!   (`AlreadyExists`) re-reads the winner's version and applies its change
//!   on top, a bounded number of times. Nothing is silently overwritten.
//!   Older versions are deleted afterwards, best effort; a leftover is
//!   harmless (the highest wins) and is deleted by the next change.
//! - Start-up lists `{prefix}meta/` and `{prefix}env/` and learns every id
//!   and due time from the key names alone, with no GET per message.
//! - A new message: with a notifier, its notice is announced *first*
//!   (invisible for the first lease, see `dispatch.rs`), then the envelope
//!   and its first metadata version are created side by side; `write`
//!   answers `Ok` only when all three are durable. A crash in between
//!   leaves either a notice for a message that does not exist (its taker
//!   finds nothing and finishes it) or an unacknowledged message that has
//!   a notice (delivered; the client, which saw no `250`, may send it again).
//!   Announcing after the writes would instead leave an unannounced message
//!   after such a crash, which no other process would ever attempt.
//! - Removal deletes the envelope first, then the metadata versions. A
//!   crash between them leaves metadata without an envelope, which is not a
//!   message (`get` says `NotFound`, `load` skips it and deletes it): a
//!   removed message never comes back. The other order could leave an
//!   envelope without metadata, which reads as a new message due now and
//!   would be delivered again to recipients already done.
//! - Metadata without an envelope whose first version is the only one
//!   (`seq` 0) may be a write still under way in another process, so
//!   `load` deletes it only once its due time is [`ORPHAN_AGE`] old.
//! - An envelope without metadata (a crash between the two creates of an
//!   unacknowledged write) is due now, with no attempts.
//! - Every remote call has a timeout ([`CloudStorage::with_timeout`]); a
//!   call that runs out fails with [`io::ErrorKind::TimedOut`], so the edge
//!   answers `451 4.3.0` and the queue retries its record later.
//! - Ids start with the receive time, so [`QueueStorage::summary`] (the
//!   queue's periodic statistics) is two LISTs, not a GET per message.
//! - Applying an outcome needs the stored recipient count (indices beyond
//!   it are ignored); it is remembered per id from `write` and `get`, and
//!   read from the envelope only when this process has never seen it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use slimta::Envelope;
use slimta::queue::codec;
use slimta::queue::storage::LOAD_BATCH;
use slimta::queue::{
    AttemptOutcome, LoadBatch, QueueMeta, QueueStorage, StorageSummary, StoredEnvelope,
};

use crate::notify::Notifier;
use crate::object::ObjectBackend;

/// How old (past its due time) metadata without an envelope and with a
/// single version must be before [`QueueStorage::load`] deletes it.
pub const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// How many times a change that lost a race re-reads and tries again.
const RACE_RETRIES: usize = 16;

/// The default timeout of one remote call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Queue storage in an object store; cheap to clone (clones share
/// everything).
pub struct CloudStorage<O: ObjectBackend> {
    inner: Arc<Inner<O>>,
}

impl<O: ObjectBackend> Clone for CloudStorage<O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<O> {
    objects: O,
    prefix: String,
    timeout: Duration,
    notify: Option<(Arc<dyn Notifier>, Duration)>,
    recipients: Mutex<HashMap<String, usize>>,
}

/// One metadata version, from its key name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaKey {
    /// The message id.
    pub id: String,
    /// The version number.
    pub seq: u64,
    /// The due time in the record.
    pub due: SystemTime,
    /// The whole key.
    pub key: String,
}

impl<O: ObjectBackend> CloudStorage<O> {
    /// A storage keeping its objects under `prefix` (e.g. `"queue/"`;
    /// may be empty) in `objects`, with no notifier and the default
    /// timeout.
    pub fn new(objects: O, prefix: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                objects,
                prefix: prefix.into(),
                timeout: DEFAULT_TIMEOUT,
                notify: None,
                recipients: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner<O> {
        Arc::get_mut(&mut self.inner).expect("configured before it is cloned")
    }

    /// Sets the timeout of every remote call.
    ///
    /// # Panics
    ///
    /// When called on a storage already cloned.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().timeout = timeout;
        self
    }

    /// Announces every new message on `notifier`, invisible for
    /// `first_lease` (the writing process attempts it first; others take
    /// it over if it has not finished by then), and every operator's
    /// [`QueueStorage::set_timestamp`] at the new due time.
    ///
    /// # Panics
    ///
    /// When called on a storage already cloned.
    #[must_use]
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>, first_lease: Duration) -> Self {
        self.inner_mut().notify = Some((notifier, first_lease));
        self
    }

    /// The object store.
    pub fn objects(&self) -> &O {
        &self.inner.objects
    }

    async fn call<T>(&self, what: &str, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "object store: {what} timed out after {:?}",
                    self.inner.timeout
                ),
            )),
        }
    }

    fn env_key(&self, id: &str) -> String {
        format!("{}env/{id}", self.inner.prefix)
    }

    fn meta_dir(&self, id: &str) -> String {
        format!("{}meta/{id}/", self.inner.prefix)
    }

    fn meta_key(&self, id: &str, seq: u64, due: SystemTime) -> String {
        format!("{}{seq:010}-{:020}", self.meta_dir(id), unix_nanos(due))
    }

    /// Parses a metadata key of this storage.
    fn parse_meta_key(&self, key: &str) -> Option<MetaKey> {
        let rest = key
            .strip_prefix(&self.inner.prefix)?
            .strip_prefix("meta/")?;
        let (id, version) = rest.split_once('/')?;
        let (seq, due) = version.split_once('-')?;
        let due: u128 = due.parse().ok()?;
        let due = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(due / 1_000_000_000).ok()?,
                u32::try_from(due % 1_000_000_000).ok()?,
            );
        Some(MetaKey {
            id: id.to_owned(),
            seq: seq.parse().ok()?,
            due,
            key: key.to_owned(),
        })
    }

    /// Every metadata version of `id`, highest `seq` last.
    ///
    /// # Errors
    ///
    /// The store's, when it cannot be listed.
    pub async fn versions(&self, id: &str) -> io::Result<Vec<MetaKey>> {
        let dir = self.meta_dir(id);
        let keys = self.call("list", self.inner.objects.list(&dir)).await?;
        let mut versions: Vec<MetaKey> = keys
            .iter()
            .filter_map(|k| self.parse_meta_key(k))
            .filter(|m| m.id == id)
            .collect();
        versions.sort_by_key(|m| m.seq);
        Ok(versions)
    }

    /// Whether the envelope of `id` is stored.
    async fn has_envelope(&self, id: &str) -> io::Result<bool> {
        match self
            .call("get", self.inner.objects.get(&self.env_key(id)))
            .await
        {
            Ok(bytes) => {
                if let Ok(stored) = codec::decode(&bytes) {
                    self.remember(id, stored.envelope.recipients.len());
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// When `id` is due, from its key names (no GET unless it has no
    /// metadata); `None`: no such message.
    ///
    /// # Errors
    ///
    /// The store's, when it cannot be reached.
    pub async fn due(&self, id: &str) -> io::Result<Option<SystemTime>> {
        if let Some(current) = self.versions(id).await?.pop() {
            return Ok(Some(current.due));
        }
        Ok(self.has_envelope(id).await?.then(SystemTime::now))
    }

    /// The current metadata of `id` and its `seq` (`None` for an envelope
    /// without metadata: `seq` 0 is next).
    async fn current(&self, id: &str) -> io::Result<(Option<u64>, QueueMeta, Vec<MetaKey>)> {
        for _ in 0..RACE_RETRIES {
            let versions = self.versions(id).await?;
            let Some(latest) = versions.last() else {
                if self.has_envelope(id).await? {
                    return Ok((None, QueueMeta::default(), versions));
                }
                return Err(not_found(id));
            };
            match self.call("get", self.inner.objects.get(&latest.key)).await {
                Ok(bytes) => {
                    let meta = codec::decode_meta(&bytes)?;
                    return Ok((Some(latest.seq), meta, versions));
                }
                // Replaced by a newer version meanwhile (whose writer
                // deleted this one), or the message was removed: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Err(raced(id))
    }

    fn remember(&self, id: &str, recipients: usize) {
        self.inner
            .recipients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), recipients);
    }

    fn forget(&self, id: &str) {
        self.inner
            .recipients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    async fn recipient_count(&self, id: &str) -> io::Result<usize> {
        let known = self
            .inner
            .recipients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied();
        if let Some(count) = known {
            return Ok(count);
        }
        Ok(self.get(id).await?.envelope.recipients.len())
    }

    /// Reads the current metadata of `id`, changes it with `change` and
    /// creates the next version; on a lost race, again from the winner's.
    /// Returns the new due time.
    async fn change(
        &self,
        id: &str,
        change: impl Fn(&mut QueueMeta),
    ) -> io::Result<Option<SystemTime>> {
        for _ in 0..RACE_RETRIES {
            let (seq, mut meta, versions) = self.current(id).await?;
            change(&mut meta);
            let next = seq.map_or(0, |s| s + 1);
            let due = meta.timestamp.unwrap_or(SystemTime::UNIX_EPOCH);
            let key = self.meta_key(id, next, due);
            match self
                .call(
                    "put",
                    self.inner.objects.put_new(&key, codec::encode_meta(&meta)),
                )
                .await
            {
                Ok(()) => {
                    for old in versions {
                        if let Err(e) = self
                            .call("delete", self.inner.objects.delete(&old.key))
                            .await
                        {
                            tracing::debug!(key = %old.key, error = %e, "old metadata version not deleted (harmless)");
                        }
                    }
                    return Ok(meta.timestamp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::debug!(
                        id,
                        seq = next,
                        "metadata changed by another process; applying again"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(raced(id))
    }

    async fn announce(&self, id: &str, delay: Duration) -> io::Result<()> {
        if let Some((notifier, _)) = &self.inner.notify {
            self.call("announce", notifier.announce(id, delay)).await?;
        }
        Ok(())
    }

    async fn write_new(&self, envelope: &Envelope, timestamp: SystemTime) -> io::Result<String> {
        let id = new_id(envelope.receive_time);
        if let Some((_, first_lease)) = &self.inner.notify {
            self.announce(&id, *first_lease).await?;
        }
        let meta = QueueMeta {
            timestamp: Some(timestamp),
            ..QueueMeta::default()
        };
        let env_key = self.env_key(&id);
        let meta_key = self.meta_key(&id, 0, timestamp);
        let (env, meta) = tokio::join!(
            self.call(
                "put",
                self.inner
                    .objects
                    .put_new(&env_key, codec::encode_envelope(envelope))
            ),
            self.call(
                "put",
                self.inner
                    .objects
                    .put_new(&meta_key, codec::encode_meta(&meta))
            ),
        );
        if let Err(e) = env.and(meta) {
            // Not acknowledged: take back what was made, best effort (a
            // leftover is an unacknowledged message, see the module docs).
            let _ = self
                .call("delete", self.inner.objects.delete(&env_key))
                .await;
            let _ = self
                .call("delete", self.inner.objects.delete(&meta_key))
                .await;
            return Err(e);
        }
        self.remember(&id, envelope.recipients.len());
        Ok(id)
    }
}

impl<O: ObjectBackend> QueueStorage for CloudStorage<O> {
    fn write(
        &self,
        envelope: &Envelope,
        timestamp: SystemTime,
    ) -> impl Future<Output = io::Result<String>> + Send {
        self.write_new(envelope, timestamp)
    }

    async fn set_timestamp(&self, id: &str, timestamp: SystemTime) -> io::Result<()> {
        self.change(id, |meta| meta.timestamp = Some(timestamp))
            .await?;
        // Another process may hold this message's notice postponed
        // until the old due time: a new notice at the new one makes the
        // change take effect anywhere (a duplicate notice is harmless,
        // see dispatch.rs).
        let delay = timestamp
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        self.announce(id, delay).await
    }

    async fn record(&self, id: &str, outcome: &AttemptOutcome) -> io::Result<()> {
        let recipients = self.recipient_count(id).await?;
        self.change(id, |meta| outcome.apply_to(meta, recipients))
            .await?;
        Ok(())
    }

    async fn load(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let meta_prefix = format!("{}meta/", self.inner.prefix);
        let env_prefix = format!("{}env/", self.inner.prefix);
        let (metas, envs) = tokio::join!(
            self.call("list", self.inner.objects.list(&meta_prefix)),
            self.call("list", self.inner.objects.list(&env_prefix)),
        );
        let mut current: HashMap<String, (MetaKey, Vec<String>)> = HashMap::new();
        for key in metas? {
            let Some(version) = self.parse_meta_key(&key) else {
                continue;
            };
            match current.get_mut(&version.id) {
                Some((latest, all)) => {
                    all.push(version.key.clone());
                    if version.seq > latest.seq {
                        *latest = version;
                    }
                }
                None => {
                    current.insert(version.id.clone(), (version.clone(), vec![version.key]));
                }
            }
        }
        let now = SystemTime::now();
        let mut found = Vec::new();
        for key in envs? {
            let Some(id) = key.strip_prefix(&env_prefix) else {
                continue;
            };
            match current.remove(id) {
                Some((latest, _)) => found.push((id.to_owned(), latest.due)),
                None => found.push((id.to_owned(), now)),
            }
        }
        // What is left has no envelope: half removed (or a write under
        // way elsewhere, if it has only its first version and is new).
        for (id, (latest, keys)) in current {
            let old = now.duration_since(latest.due).unwrap_or_default() > ORPHAN_AGE;
            if latest.seq > 0 || keys.len() > 1 || old {
                tracing::info!(id, "deleting the metadata of a removed message");
                for key in keys {
                    let _ = self.call("delete", self.inner.objects.delete(&key)).await;
                }
            }
        }
        Ok(found)
    }

    /// Like the default, but a store that cannot be reached at start-up
    /// is asked again (with a growing pause, up to a minute) until it
    /// answers, instead of leaving the stored messages unscheduled until
    /// the next start.
    async fn load_into(
        &self,
        batches: tokio::sync::mpsc::UnboundedSender<LoadBatch>,
    ) -> io::Result<usize> {
        let mut pause = Duration::from_secs(1);
        let all = loop {
            match self.load().await {
                Ok(all) => break all,
                Err(e) if is_unreachable(&e) && !batches.is_closed() => {
                    tracing::warn!(error = %e, retry_in = ?pause, "object store unreachable at start-up; listing again later");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
                Err(e) => return Err(e),
            }
        };
        let mut sent = 0;
        for batch in all.chunks(LOAD_BATCH) {
            sent += batch.len();
            if batches.send(batch.to_vec()).is_err() {
                break;
            }
        }
        Ok(sent)
    }

    async fn summary(&self) -> io::Result<StorageSummary> {
        let ids = self.load().await?;
        Ok(StorageSummary {
            messages: ids.len(),
            oldest_received: ids.iter().filter_map(|(id, _)| received_of(id)).min(),
        })
    }

    async fn get(&self, id: &str) -> io::Result<StoredEnvelope> {
        let env_key = self.env_key(id);
        let (env, current) = tokio::join!(
            self.call("get", self.inner.objects.get(&env_key)),
            self.current(id),
        );
        let bytes = env.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                not_found(id)
            } else {
                e
            }
        })?;
        let mut stored = codec::decode(&bytes)?;
        self.remember(id, stored.envelope.recipients.len());
        let (seq, meta, _) = current?;
        stored.meta = meta;
        if seq.is_none() {
            stored.meta.timestamp = Some(SystemTime::now());
        }
        Ok(stored)
    }

    async fn remove(&self, id: &str) -> io::Result<()> {
        let versions = self.versions(id).await?;
        // The envelope first: see the module docs.
        self.call("delete", self.inner.objects.delete(&self.env_key(id)))
            .await?;
        for version in versions {
            self.call("delete", self.inner.objects.delete(&version.key))
                .await?;
        }
        self.forget(id);
        Ok(())
    }
}

/// A new id: the receive time (nanoseconds since the Unix epoch, 16 hex
/// digits) and 64 random bits, so that statistics learn the oldest
/// message's age from the key names, without a GET per message. The
/// create-only put refuses the (astronomically unlikely) repeat.
fn new_id(received: SystemTime) -> String {
    let nanos = u64::try_from(unix_nanos(received)).unwrap_or(u64::MAX);
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    format!("{nanos:016x}{random:016x}")
}

/// The receive time in an id made by [`new_id`].
fn received_of(id: &str) -> Option<SystemTime> {
    let nanos = u64::from_str_radix(id.get(..16)?, 16).ok()?;
    (id.len() == 32).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// The failure kinds of a store that cannot be reached.
fn is_unreachable(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

fn not_found(id: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no queued message {id}"))
}

fn raced(id: &str) -> io::Error {
    io::Error::other(format!(
        "message {id}: its metadata kept changing under this process ({RACE_RETRIES} tries)"
    ))
}
