//! [`CloudDispatch`]: the queue's dispatcher for many processes sharing
//! one cloud store, over any [`Notifier`] (SQS, Zaqar).
//!
//! Decisions:
//! - Every acknowledged message has a notice: [`CloudStorage::write`]
//!   announces it before it answers `Ok` (see `storage.rs`), invisible for
//!   one lease. The process that took the message in attempts it first at
//!   once, from its own queue ([`Dispatch::add`] with a destination: a new
//!   message), without waiting for the notice and without reading it back
//!   from the store. If that process dies, the notice becomes visible when
//!   the lease runs out and another process takes the message over; if it
//!   finished, whoever takes the notice finds the message gone (or not due
//!   yet) and finishes (or postpones) it. Announcing in `Dispatch::add`
//!   instead would leave a message acknowledged but unannounced if the
//!   process died between the storage's `Ok` and the add.
//! - A background task takes notices (long polling: no busy loop), asks the
//!   store when each message is due (key names only, no GET), finishes the
//!   notices of messages that are gone, postpones those not due yet until
//!   they are, and queues the due ones for [`Dispatch::next_due`]. The
//!   notice's visibility timeout (or claim) is the lease: it is renewed
//!   when the message is handed out and every third of a lease while the
//!   attempt runs, so a long attempt keeps it; a dead process stops renewing
//!   and the notice reappears.
//! - [`AttemptEnd::RetryAt`] postpones the notice to the retry time (a
//!   notifier caps delays at its maximum; a notice back early is postponed
//!   again), `Done` and `Gone` finish it.
//! - An operator's "retry now" ([`CloudStorage`]'s `set_timestamp`)
//!   announces a new notice, so it takes effect whichever process holds the
//!   old one. Duplicate notices are harmless: one for a message not due is
//!   postponed, one for a message gone is finished, and one for a message
//!   this process already attempts is finished (or adopted, if the attempt
//!   had none).
//! - Start-up adds nothing: the notices of stored messages are in the
//!   message queue already ([`Dispatch::add`] without a destination is a
//!   message found in storage, and is ignored).
//! - What is not covered: two processes attempt one message at once only
//!   if an attempt outlives its lease without renewing it (a process that
//!   froze, not one that died) or when a first attempt runs longer than the
//!   lease (its notice is not held by the attempting process); the
//!   storage's create-only records keep the message's state right even
//!   then, but a recipient may get it twice. A first attempt that ends
//!   with a retry sooner than the lease waits for its notice (the lease).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use slimta::queue::{AttemptEnd, Dispatch, Lease, Placement};
use slimta::relay::Destination;
use tokio::sync::{Notify, mpsc};

use crate::notify::{Notice, Notifier, NotifyFuture};
use crate::object::ObjectBackend;
use crate::storage::CloudStorage;

/// When a stored message is due, for the dispatcher (the object-safe view
/// of [`CloudStorage::due`]).
pub trait DueTimes: Send + Sync + 'static {
    /// `None`: no such message.
    fn due_time<'a>(&'a self, id: &'a str) -> NotifyFuture<'a, Option<SystemTime>>;
}

impl<O: ObjectBackend> DueTimes for CloudStorage<O> {
    fn due_time<'a>(&'a self, id: &'a str) -> NotifyFuture<'a, Option<SystemTime>> {
        Box::pin(self.due(id))
    }
}

/// How many notices one take asks for.
const TAKE_BATCH: usize = 10;

/// A dispatcher over a notifier, shared by every process on the store.
pub struct CloudDispatch<N: Notifier + ?Sized> {
    inner: Arc<Inner<N>>,
}

struct Inner<N: ?Sized> {
    notifier: Arc<N>,
    store: Arc<dyn DueTimes>,
    lease: Duration,
    state: Mutex<State>,
    /// A new local message (or a request) arrived.
    wake: Notify,
    due_rx: tokio::sync::Mutex<mpsc::Receiver<Notice>>,
    due_tx: mpsc::Sender<Notice>,
    started: OnceLock<()>,
}

#[derive(Default)]
struct State {
    /// New messages of this process, for their first attempt.
    local: VecDeque<(String, Option<Destination>)>,
    /// Handed out and not ended: the notice held for it (none for a first
    /// attempt whose notice is still invisible) and when it was renewed.
    held: HashMap<String, (Option<Notice>, Instant)>,
    retry_requests: HashSet<String>,
}

impl<N: Notifier + ?Sized> CloudDispatch<N> {
    /// A dispatcher taking notices from `notifier`, with leases of `lease`
    /// (the same as the storage's first lease), asking `store` when
    /// messages are due.
    pub fn new(notifier: Arc<N>, store: Arc<dyn DueTimes>, lease: Duration) -> Self {
        let (due_tx, due_rx) = mpsc::channel(TAKE_BATCH);
        Self {
            inner: Arc::new(Inner {
                notifier,
                store,
                lease,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                due_rx: tokio::sync::Mutex::new(due_rx),
                due_tx,
                started: OnceLock::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn start_tasks(&self) {
        if self.inner.started.set(()).is_err() {
            return;
        }
        tokio::spawn(take_notices(Arc::downgrade(&self.inner)));
        tokio::spawn(renew_leases(Arc::downgrade(&self.inner)));
    }

    fn lease_for(&self, id: String, destination: Option<Destination>) -> Lease {
        Lease {
            id,
            expires: Some(SystemTime::now() + self.inner.lease),
            destination,
            defer: None,
        }
    }

    /// Hands out a due notice, unless this process attempts its message
    /// already.
    async fn hand_out(&self, notice: Notice) -> Option<Lease> {
        enum Held {
            Adopt,
            Duplicate,
            New,
        }
        let held = match self.state().held.get_mut(&notice.id) {
            Some((held @ None, renewed)) => {
                *held = Some(notice.clone());
                *renewed = Instant::now();
                Held::Adopt
            }
            Some((Some(_), _)) => Held::Duplicate,
            None => Held::New,
        };
        match held {
            Held::Adopt => {
                let _ = self
                    .inner
                    .notifier
                    .postpone(&notice, self.inner.lease)
                    .await;
                None
            }
            Held::Duplicate => {
                let _ = self.inner.notifier.finish(&notice).await;
                None
            }
            Held::New => {
                // The lease starts now, not when the notice was taken.
                if let Err(e) = self
                    .inner
                    .notifier
                    .postpone(&notice, self.inner.lease)
                    .await
                {
                    tracing::warn!(id = %notice.id, error = %e, "notice lost its lease before its attempt; another process has it");
                    return None;
                }
                let id = notice.id.clone();
                self.state()
                    .held
                    .insert(id.clone(), (Some(notice), Instant::now()));
                Some(self.lease_for(id, None))
            }
        }
    }
}

/// Takes notices until the dispatcher is dropped: gone ones are finished,
/// early ones postponed, due ones queued for `next_due`.
async fn take_notices<N: Notifier + ?Sized>(inner: Weak<Inner<N>>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (notifier, store, lease, tx) = (
            strong.notifier.clone(),
            strong.store.clone(),
            strong.lease,
            strong.due_tx.clone(),
        );
        drop(strong);
        if tx.is_closed() {
            return;
        }
        let wait = (lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(20));
        let taken = match tokio::time::timeout(
            wait + Duration::from_secs(30),
            notifier.take(TAKE_BATCH, lease, wait),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "take timed out")),
        };
        let notices = match taken {
            Ok(notices) => {
                backoff = Duration::from_secs(1);
                notices
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot take notices");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        // The notices of one take are judged side by side: most are for
        // messages done long ago (a first attempt's notice), each a round
        // trip or two to the store.
        let judged = futures_util::future::join_all(
            notices
                .into_iter()
                .map(|notice| judge(&*notifier, &*store, notice)),
        )
        .await;
        for notice in judged.into_iter().flatten() {
            if tx.send(notice).await.is_err() {
                return;
            }
        }
    }
}

/// Finishes the notice of a message that is gone, postpones one whose
/// message is not due; returns it if its message is due.
async fn judge<N: Notifier + ?Sized>(
    notifier: &N,
    store: &dyn DueTimes,
    notice: Notice,
) -> Option<Notice> {
    match store.due_time(&notice.id).await {
        Err(e) => {
            tracing::warn!(id = %notice.id, error = %e, "cannot read when a message is due; its notice comes back");
            let _ = notifier.postpone(&notice, Duration::from_secs(5)).await;
            None
        }
        Ok(None) => {
            if let Err(e) = notifier.finish(&notice).await {
                tracing::debug!(id = %notice.id, error = %e, "notice of a gone message not finished");
            }
            None
        }
        Ok(Some(due)) => {
            let early = due.duration_since(SystemTime::now()).unwrap_or_default();
            if early > Duration::from_millis(500) {
                let _ = notifier
                    .postpone(&notice, early.max(Duration::from_secs(1)))
                    .await;
                None
            } else {
                Some(notice)
            }
        }
    }
}

/// Renews the leases of attempts in progress every third of a lease.
async fn renew_leases<N: Notifier + ?Sized>(inner: Weak<Inner<N>>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let lease = strong.lease;
        let notifier = strong.notifier.clone();
        let due: Vec<Notice> = {
            let mut state = strong.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            state
                .held
                .values_mut()
                .filter(|(_, renewed)| now.duration_since(*renewed) >= lease / 3)
                .filter_map(|(notice, renewed)| {
                    *renewed = now;
                    notice.clone()
                })
                .collect()
        };
        drop(strong);
        for notice in due {
            if let Err(e) = notifier.postpone(&notice, lease).await {
                tracing::warn!(id = %notice.id, error = %e, "lease not renewed");
            }
        }
        tokio::time::sleep((lease / 6).max(Duration::from_millis(200))).await;
    }
}

impl<N: Notifier + ?Sized> Dispatch for CloudDispatch<N> {
    async fn add(&self, id: String, due: SystemTime, destination: Option<Destination>) -> bool {
        let _ = due;
        // Without a destination: found in storage (start-up) or an
        // operator's retry; the notices in the message queue cover it.
        let Some(destination) = destination else {
            return true;
        };
        let mut state = self.state();
        if state.held.contains_key(&id) || state.local.iter().any(|(l, _)| *l == id) {
            return false;
        }
        state.local.push_back((id, Some(destination)));
        drop(state);
        self.inner.wake.notify_one();
        true
    }

    async fn next_due(&self) -> Lease {
        self.start_tasks();
        loop {
            let local = {
                let mut state = self.state();
                let next = state.local.pop_front();
                if let Some((id, _)) = &next {
                    state.held.insert(id.clone(), (None, Instant::now()));
                }
                next
            };
            if let Some((id, destination)) = local {
                return self.lease_for(id, destination);
            }
            let mut due = self.inner.due_rx.lock().await;
            tokio::select! {
                () = self.inner.wake.notified() => {}
                notice = due.recv() => {
                    drop(due);
                    if let Some(lease) = match notice {
                        Some(notice) => self.hand_out(notice).await,
                        None => None,
                    } {
                        return lease;
                    }
                }
            }
        }
    }

    async fn ended(&self, id: &str, end: AttemptEnd) {
        let held = self.state().held.remove(id);
        let Some((Some(notice), _)) = held else {
            // A first attempt: its notice, still invisible, comes back
            // after the lease and finds the message gone or not due.
            return;
        };
        let result = match end {
            AttemptEnd::RetryAt(at) => {
                let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
                self.inner.notifier.postpone(&notice, delay).await
            }
            AttemptEnd::Done | AttemptEnd::Gone => self.inner.notifier.finish(&notice).await,
        };
        if let Err(e) = result {
            tracing::warn!(id, error = %e, "notice not updated after the attempt; it comes back after the lease");
        }
    }

    async fn retry_now(&self, id: &str) -> Placement {
        let mut state = self.state();
        if state.held.contains_key(id) {
            state.retry_requests.insert(id.to_owned());
            Placement::InFlight
        } else if state.local.iter().any(|(l, _)| l == id) {
            Placement::Waiting
        } else {
            // The storage's set_timestamp announced a new notice.
            Placement::Unknown
        }
    }

    async fn take_retry_request(&self, id: &str) -> bool {
        self.state().retry_requests.remove(id)
    }

    async fn delete(&self, id: &str) -> Placement {
        let mut state = self.state();
        if state.held.contains_key(id) {
            Placement::InFlight
        } else if let Some(at) = state.local.iter().position(|(l, _)| l == id) {
            state.local.remove(at);
            Placement::Waiting
        } else {
            Placement::Unknown
        }
    }

    fn waiting(&self) -> usize {
        self.state().local.len()
    }
}
