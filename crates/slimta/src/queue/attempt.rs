//! One delivery attempt and the bookkeeping after it.
//!
//! The order of the steps after the relay answers is the point of this file.
//! Everything an attempt changes is recorded in one durable step
//! ([`QueueStorage::record`] with an [`AttemptOutcome`]: finished recipients,
//! attempt count, next due time, last error, delay warning), so a deferred
//! attempt costs one durable write (one `fdatasync` on disk, one round trip
//! to a remote store), and a crash leaves the state before the attempt or
//! after it, never half of it.
//!
//! 1. Every attempted recipient delivered: the message is removed at once
//!    ([`QueueStorage::remove`], which is durable), and the removal is the
//!    record. (If the removal fails, the delivered recipients are recorded
//!    instead, and the removal is tried again later.)
//! 2. Transient failures: ask the [`Backoff`] about the new attempt count
//!    (`None` turns them into permanent failures).
//! 3. If a bounce or a delay warning must be queued and some recipients
//!    were delivered, those are recorded first: the report is a durable
//!    write of its own, and a crash between it and the outcome must not
//!    make the retry send to them again. (One more record, only on attempts
//!    that both deliver and bounce or warn.)
//! 4. Permanent failures: queue a bounce for them ([`crate::bounce`]); they
//!    are finished (the storage's "delivered" set means "never attempt
//!    again"). A failed message from `<>` gets no bounce; with a postmaster
//!    configured it gets a notice to the postmaster instead, unless it *was*
//!    a notice to the postmaster (then it is logged and dropped: no loop).
//! 5. Nothing pending any more: remove the message (the removal is the
//!    record). Else, with `delay_warning` set, the first failed attempt past
//!    that age queues one `Action: delayed` report to the sender; then the
//!    outcome is recorded (with the warning flag, so a restart does not
//!    send it again) and the message rescheduled. The warning is checked
//!    only at attempts, so it goes out at the first retry after the
//!    threshold (at most one backoff delay late), which costs no timer per
//!    message.
//!
//! A failing storage step is logged and the message is retried later; the
//! queue errs towards delivering twice rather than losing mail.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::bounce::{self, FailedRecipient};
use crate::relay::{Delivery, Destination, Relay, RelayError};
use crate::reply::Reply;

use super::dispatch::{Admission, AttemptEnd, Contact, Dispatch, Lease};
use super::storage::{AttemptOutcome, QueueMeta, QueueStorage, StoredEnvelope};
use super::{Queue, clock};

/// How long to wait before trying again when storage itself failed (there
/// is no envelope to ask the backoff about).
const STORAGE_RETRY: Duration = Duration::from_secs(60);

/// The outcome for one attempted recipient.
enum Outcome {
    Delivered(Reply),
    Transient(RelayError),
    Permanent(RelayError),
}

/// One permanently failed recipient, as the bounce hook receives it.
pub(crate) struct Failure {
    /// The index in the stored recipient list.
    pub(crate) index: usize,
    /// The recipient address.
    pub(crate) recipient: String,
    /// Why it failed.
    pub(crate) error: RelayError,
}

/// Puts the id back into the schedule if the attempt task ends without
/// deciding (a panic in a relay or policy), so the message is not stranded
/// until the next restart.
struct Reschedule<'a, S: QueueStorage, R: Relay, D: Dispatch> {
    queue: &'a Queue<S, R, D>,
    id: &'a str,
    armed: bool,
}

impl<S: QueueStorage, R: Relay, D: Dispatch> Drop for Reschedule<'_, S, R, D> {
    fn drop(&mut self) {
        if self.armed {
            // Drop cannot wait for the dispatcher: a task tells it.
            let (queue, id) = (self.queue.clone(), self.id.to_owned());
            let due = clock::now() + STORAGE_RETRY;
            tokio::spawn(async move { queue.reschedule_at(&id, due).await });
        }
    }
}

impl<S: QueueStorage, R: Relay, D: Dispatch> Queue<S, R, D> {
    /// Attempts delivery of the stored message `id` to its pending
    /// recipients and records the outcome.
    pub(super) async fn attempt(&self, lease: Lease) {
        let id = lease.id;
        let mut guard = Reschedule {
            queue: self,
            id: &id,
            armed: true,
        };
        // The first attempt uses the envelope the hand-off kept; its storage
        // record is still as written (see the module docs of `queue`).
        let first = self.take_first_attempt(&id).map(|envelope| StoredEnvelope {
            envelope,
            meta: QueueMeta::default(),
        });
        let stored = match first {
            Some(stored) => stored,
            None => match self.inner.storage.get(&id).await {
                Ok(stored) => stored,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(id = %id, "queued message vanished before its attempt");
                    self.inner.dispatch.ended(&id, AttemptEnd::Gone).await;
                    guard.armed = false;
                    return;
                }
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "cannot read queued message; retrying later");
                    return;
                }
            },
        };
        let defer = match (lease.destination, lease.defer) {
            (_, Some(error)) => Some(error),
            (Some(_), None) => None,
            // Found in storage at start-up: the dispatcher learns where it
            // goes now, and may hold it back for that destination's limits.
            (None, None) => match self.destination_of_pending(&stored) {
                None => None,
                Some(destination) => match self.inner.dispatch.admit(&id, destination).await {
                    Admission::Attempt => None,
                    Admission::Defer(error) => Some(error),
                    Admission::Later => {
                        guard.armed = false;
                        return;
                    }
                },
            },
        };
        self.deliver(&id, &stored, defer).await;
        guard.armed = false;
    }

    /// The destination of a stored message's first pending recipient.
    fn destination_of_pending(&self, stored: &StoredEnvelope) -> Option<Destination> {
        let pending = stored.pending_recipients();
        let &(_, recipient) = pending.first()?;
        Some(self.inner.relay.destination(recipient))
    }

    /// Attempts the pending recipients, or, with `defer` (the destination
    /// is dead), records that transient failure for them without a
    /// connection.
    async fn deliver(&self, id: &str, stored: &StoredEnvelope, defer: Option<RelayError>) {
        let pending = stored.pending_recipients();
        if pending.is_empty() {
            self.finish(id, None).await;
            return;
        }
        let attempt = stored.meta.attempts.saturating_add(1);
        let indices: Vec<usize> = pending.iter().map(|&(i, _)| i).collect();
        let recipients: Vec<String> = pending.iter().map(|&(_, r)| r.to_owned()).collect();

        let relayed = match defer {
            Some(error) => Err(error),
            None => {
                let relayed = self.relay(stored, &recipients, attempt).await;
                if let Some(contact) = contact_of(&relayed, recipients.len()) {
                    self.inner.dispatch.contact(id, contact).await;
                }
                relayed
            }
        };
        let results = match relayed {
            Ok(delivery) => (0..indices.len())
                .map(|k| match delivery.result_for(k) {
                    Ok(reply) => Outcome::Delivered(reply.clone()),
                    Err(e) if e.is_permanent() => Outcome::Permanent(e),
                    Err(e) => Outcome::Transient(e),
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                let outcome = |_| {
                    if e.is_permanent() {
                        Outcome::Permanent(e.clone())
                    } else {
                        Outcome::Transient(e.clone())
                    }
                };
                (0..indices.len()).map(outcome).collect()
            }
        };
        log_attempt(id, attempt, &recipients, &results);

        let mut delivered = Vec::new();
        let mut transient = Vec::new();
        let mut permanent = Vec::new();
        for ((index, recipient), outcome) in indices.into_iter().zip(recipients).zip(results) {
            match outcome {
                Outcome::Delivered(_) => delivered.push(index),
                Outcome::Transient(error) => transient.push(Failure {
                    index,
                    recipient,
                    error,
                }),
                Outcome::Permanent(error) => permanent.push(Failure {
                    index,
                    recipient,
                    error,
                }),
            }
        }

        if transient.is_empty() && permanent.is_empty() {
            // Everything delivered: the durable removal is the record.
            let outcome = AttemptOutcome {
                attempts: attempt,
                finished: delivered,
                ..AttemptOutcome::default()
            };
            self.finish(id, Some(outcome)).await;
            return;
        }

        let mut retry_in = None;
        if !transient.is_empty() {
            let backoff = self.config(|c| c.backoff.clone());
            match backoff.delay(&stored.envelope, attempt) {
                Some(delay) => retry_in = Some(delay),
                None => {
                    tracing::warn!(id = %id, attempts = attempt, "giving up on transient failures");
                    permanent.extend(transient.drain(..).map(|f| Failure {
                        error: RelayError::permanent(gave_up(f.error.reply(), attempt)),
                        ..f
                    }));
                }
            }
        }
        let warning_due = retry_in.is_some() && self.warning_due(stored, &transient);

        // A bounce or a delay warning is queued before the outcome is
        // recorded; the recipients delivered just now are recorded before
        // it, so a crash in between cannot make the retry send to them again.
        if !delivered.is_empty() && (!permanent.is_empty() || warning_due) {
            let early = AttemptOutcome {
                attempts: attempt,
                finished: delivered.clone(),
                ..AttemptOutcome::default()
            };
            if !self.record(id, &early, "delivered recipients").await {
                return;
            }
        }

        let mut finished = delivered;
        if !permanent.is_empty() {
            if let Err(e) = self.bounce(id, stored, &permanent).await {
                tracing::error!(id = %id, error = %e, "cannot queue the bounce; retrying later");
                self.reschedule_at(id, clock::now() + STORAGE_RETRY).await;
                return;
            }
            finished.extend(permanent.iter().map(|f| f.index));
        }

        let Some(delay) = retry_in else {
            // Nothing is pending any more: the removal is the record.
            let outcome = AttemptOutcome {
                attempts: attempt,
                finished,
                ..AttemptOutcome::default()
            };
            self.finish(id, Some(outcome)).await;
            return;
        };
        let delay_warned = warning_due && self.queue_warning(id, stored, &transient).await;
        let due = self.due_after(id, delay).await;
        let outcome = AttemptOutcome {
            attempts: attempt,
            finished,
            next_attempt: Some(due),
            last_error: transient.last().map(|f| f.error.to_string()),
            delay_warned,
        };
        if self.record(id, &outcome, "the attempt's outcome").await {
            self.reschedule_at(id, due).await;
        }
    }

    /// Hands the pending `recipients` of `stored` to the relay: the stored
    /// envelope itself when they are all of its recipients and no relay
    /// policy is configured (no copy of the message), else a copy with only
    /// them, changed by the relay policies.
    async fn relay(
        &self,
        stored: &StoredEnvelope,
        recipients: &[String],
        attempt: u32,
    ) -> Result<crate::relay::Delivery, RelayError> {
        let policies = self.config(|c| c.relay_policies.clone());
        if policies.is_empty() && stored.envelope.recipients == recipients {
            return self.inner.relay.attempt(&stored.envelope, attempt).await;
        }
        let mut copy = stored.envelope.with_recipients(recipients.to_vec());
        let count = copy.recipients.len();
        for policy in policies.iter() {
            policy.apply_boxed(&mut copy).await?;
        }
        if copy.recipients.len() != count {
            tracing::error!(
                before = count,
                after = copy.recipients.len(),
                "a relay policy changed the number of recipients"
            );
            return Err(RelayError::transient(Reply::new(
                451,
                "4.3.0",
                "Local configuration error: relay policy changed the recipients",
            )));
        }
        self.inner.relay.attempt(&copy, attempt).await
    }

    /// Whether a storage error says the message is gone: an operator
    /// deleted it during the attempt. Nothing is left to record or retry,
    /// so the schedule forgets it. (A delete that comes after the relay
    /// refused a recipient for good, before the bounce is queued, does not
    /// stop that bounce: the verdict was in before the delete.)
    async fn deleted_meanwhile(&self, id: &str, error: &io::Error) -> bool {
        if error.kind() != io::ErrorKind::NotFound {
            return false;
        }
        tracing::info!(id = %id, "message deleted during its delivery attempt");
        self.inner.dispatch.ended(id, AttemptEnd::Gone).await;
        true
    }

    /// Records `outcome` in one durable step. `false` if the message is
    /// gone (deleted meanwhile: forgotten) or the record failed (logged,
    /// attempted again after [`STORAGE_RETRY`]; recipients delivered in
    /// this attempt may then get the message again: at-least-once beats
    /// losing mail).
    async fn record(&self, id: &str, outcome: &AttemptOutcome, what: &str) -> bool {
        match self.inner.storage.record(id, outcome).await {
            Ok(()) => true,
            Err(e) if self.deleted_meanwhile(id, &e).await => false,
            Err(e) => {
                tracing::error!(id = %id, error = %e, "cannot record {what}; retrying later");
                self.reschedule_at(id, clock::now() + STORAGE_RETRY).await;
                false
            }
        }
    }

    /// When the next attempt is due after `delay`; an operator's "retry
    /// now" during this attempt wins over the delay.
    async fn due_after(&self, id: &str, delay: Duration) -> std::time::SystemTime {
        if self.inner.dispatch.take_retry_request(id).await {
            clock::now()
        } else {
            clock::now() + delay
        }
    }

    /// Tells the dispatcher to attempt `id` again at `due` (recorded in
    /// storage already, or the storage failed and memory retries).
    async fn reschedule_at(&self, id: &str, due: std::time::SystemTime) {
        self.inner
            .dispatch
            .ended(id, AttemptEnd::RetryAt(due))
            .await;
    }

    /// Removes a message nothing is pending for: the durable removal is the
    /// record of its last attempt. If the removal fails, `outcome` (what
    /// the last attempt finished) is recorded instead, so the retry does not
    /// send to those recipients again, and the removal is tried again
    /// later: the next attempt finds either the message (and delivers to
    /// the recipients not recorded as done) or nothing.
    pub(super) async fn finish(&self, id: &str, outcome: Option<AttemptOutcome>) {
        match self.inner.storage.remove(id).await {
            Ok(()) => self.inner.dispatch.ended(id, AttemptEnd::Done).await,
            Err(e) => {
                tracing::error!(id = %id, error = %e, "cannot remove a finished message");
                if let Some(outcome) = outcome
                    && !self.record(id, &outcome, "finished recipients").await
                {
                    return;
                }
                self.reschedule_at(id, clock::now() + STORAGE_RETRY).await;
            }
        }
    }

    /// The bounce hook: takes the permanently failed recipients of a stored
    /// message and returns once their report is durably queued (or is not
    /// to be sent: see [`crate::bounce`] on `<>` and the postmaster).
    async fn bounce(
        &self,
        id: &str,
        stored: &StoredEnvelope,
        failures: &[Failure],
    ) -> io::Result<()> {
        for f in failures {
            tracing::warn!(
                id = %id,
                sender = %stored.envelope.sender,
                recipient = %f.recipient,
                reply = %f.error.reply(),
                "permanent delivery failure"
            );
        }
        let failed = failed_recipients(failures);
        let (hostname, headers_only, postmaster) = self.config(|c| {
            (
                c.hostname.clone(),
                c.bounce_headers_only,
                c.postmaster.clone(),
            )
        });
        let options = bounce::ReportOptions {
            reporting_mta: &hostname,
            headers_only,
            now: clock::now(),
        };
        let (report, to) = if stored.envelope.sender.is_empty() {
            let Some(postmaster) = postmaster else {
                tracing::warn!(id = %id, "a message from <> failed and no postmaster is configured; dropped");
                return Ok(());
            };
            match bounce::postmaster_report(&stored.envelope, &failed, &postmaster, &options) {
                Some(report) => (report, postmaster.to_string()),
                None => {
                    tracing::warn!(id = %id, postmaster = %postmaster, "a notice to the postmaster failed; dropped");
                    return Ok(());
                }
            }
        } else {
            match bounce::report(&stored.envelope, &failed, &options) {
                Some(report) => (report, stored.envelope.sender.clone()),
                None => return Ok(()),
            }
        };
        match self.store(Arc::new(report)).await {
            Ok(bounce_id) => {
                tracing::info!(id = %id, bounce = %bounce_id, to = %to, "bounce queued");
                Ok(())
            }
            Err(reply) => Err(io::Error::other(reply.to_string())),
        }
    }

    /// Whether the one delay warning of a message whose `transient`
    /// failures are being retried is configured, due and not yet sent.
    fn warning_due(&self, stored: &StoredEnvelope, transient: &[Failure]) -> bool {
        let Some(after) = self.config(|c| c.delay_warning) else {
            return false;
        };
        let age = clock::now()
            .duration_since(stored.envelope.receive_time)
            .unwrap_or_default();
        !stored.meta.delay_warned && age >= after && !transient.is_empty()
    }

    /// Queues the delay warning; `true` once it is durably queued (or there
    /// is nothing to warn about), so the outcome records it as sent. Best
    /// effort: a failure is logged, and the next attempt tries again.
    async fn queue_warning(
        &self,
        id: &str,
        stored: &StoredEnvelope,
        transient: &[Failure],
    ) -> bool {
        let hostname = self.config(|c| c.hostname.clone());
        let options = bounce::ReportOptions {
            reporting_mta: &hostname,
            // A warning returns only the headers whatever bounce_headers_only
            // says: the message is still on its way, a copy helps nobody.
            headers_only: true,
            now: clock::now(),
        };
        let delayed = failed_recipients(transient);
        let Some(warning) = bounce::delay_warning(&stored.envelope, &delayed, None, &options)
        else {
            return true;
        };
        match self.store(Arc::new(warning)).await {
            Ok(warning_id) => {
                tracing::info!(id = %id, warning = %warning_id, to = %stored.envelope.sender, "delay warning queued");
                true
            }
            Err(reply) => {
                tracing::warn!(id = %id, error = %reply, "cannot queue the delay warning");
                false
            }
        }
    }
}

/// What an attempt's result says about its destination: unreachable when
/// the whole attempt (or every recipient) failed to reach it, reached when
/// a server answered; nothing for a failure before any connection (a local
/// or DNS error), which says nothing about the destination's servers.
fn contact_of(relayed: &Result<Delivery, RelayError>, recipients: usize) -> Option<Contact> {
    match relayed {
        Err(e) if e.is_unreachable() => Some(Contact::Unreachable(e.clone())),
        Err(e) if e.remote_mta().is_some() => Some(Contact::Reached),
        Err(_) => None,
        Ok(delivery) => {
            let mut first_unreachable = None;
            for k in 0..recipients {
                match delivery.result_for(k) {
                    Err(e) if e.is_unreachable() => {
                        first_unreachable.get_or_insert(e);
                    }
                    _ => return Some(Contact::Reached),
                }
            }
            first_unreachable.map(Contact::Unreachable)
        }
    }
}

fn failed_recipients(failures: &[Failure]) -> Vec<FailedRecipient> {
    failures
        .iter()
        .map(|f| FailedRecipient {
            recipient: f.recipient.clone(),
            reply: f.error.reply().clone(),
            remote_mta: f.error.remote_mta().map(str::to_owned),
        })
        .collect()
}

/// The reply recorded for a recipient whose transient failures outlived the
/// backoff: the last remote reply, marked as permanent.
fn gave_up(last: &Reply, attempts: u32) -> Reply {
    let mut reply = last.clone();
    reply.set_code(if last.is_permanent() {
        last.code()
    } else {
        554
    });
    if reply.enhanced().is_none() {
        reply.set_enhanced("5.4.7");
    }
    reply.set_text(format!(
        "{} (gave up after {attempts} attempts)",
        last.text()
    ));
    reply
}

fn log_attempt(id: &str, attempt: u32, recipients: &[String], results: &[Outcome]) {
    let mut summary = String::new();
    for (recipient, outcome) in recipients.iter().zip(results) {
        let (what, reply) = match outcome {
            Outcome::Delivered(r) => ("delivered", r),
            Outcome::Transient(e) => ("transient", e.reply()),
            Outcome::Permanent(e) => ("permanent", e.reply()),
        };
        if !summary.is_empty() {
            summary.push_str("; ");
        }
        let _ = write!(summary, "<{recipient}> {what}: {reply}");
    }
    tracing::info!(id = %id, attempt, results = %summary, "delivery attempt");
}
