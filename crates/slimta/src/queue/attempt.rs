//! One delivery attempt and the bookkeeping after it.
//!
//! The order of the steps after the relay answers is the point of this file:
//!
//! 1. Record the delivered recipients ([`QueueStorage::set_recipients_delivered`]).
//!    Nothing else comes first, so a crash at any later step cannot make the
//!    next attempt send to them again. Exception: when every attempted
//!    recipient was delivered (no transient, no permanent failure), the
//!    message is removed at once instead ([`QueueStorage::remove`], which is
//!    durable), and the removal is the record. Recording first would cost a
//!    durable write (an `fdatasync` on disk) that the removal makes moot; a
//!    crash before either is durable delivers again in both designs.
//! 2. Transient failures: count the attempt, ask the [`Backoff`]
//!    (`None` turns them into permanent failures).
//! 3. Permanent failures: queue a bounce for them ([`crate::bounce`]), then
//!    record them as done (the storage's "delivered" set means "never attempt again").
//!    A failed message from `<>` gets no bounce; with a postmaster
//!    configured it gets a notice to the postmaster instead, unless it *was*
//!    a notice to the postmaster (then it is logged and dropped: no loop).
//! 4. Reschedule the transient ones, or remove the message when nothing is
//!    pending. With `delay_warning` set, the first failed attempt past that
//!    age also queues one `Action: delayed` report to the sender, recorded
//!    in storage (`set_delay_warned`) so a restart does not send it again.
//!    The warning is checked only at attempts, so it goes out at the first
//!    retry after the threshold (at most one backoff delay late), which
//!    costs no timer per message.
//!
//! A failing storage step is logged and the message is retried later; the
//! queue errs towards delivering twice rather than losing mail.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::bounce::{self, FailedRecipient};
use crate::relay::{Relay, RelayError};
use crate::reply::Reply;

use super::storage::{QueueMeta, QueueStorage, StoredEnvelope};
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
struct Reschedule<'a, S, R> {
    queue: &'a Queue<S, R>,
    id: &'a str,
    armed: bool,
}

impl<S, R> Drop for Reschedule<'_, S, R> {
    fn drop(&mut self) {
        if self.armed {
            let at = tokio::time::Instant::now() + STORAGE_RETRY;
            self.queue.inner.schedule.reschedule(self.id.to_owned(), at);
        }
    }
}

impl<S: QueueStorage, R: Relay> Queue<S, R> {
    /// Attempts delivery of the stored message `id` to its pending
    /// recipients and records the outcome.
    pub(super) async fn attempt(&self, id: String) {
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
                    self.inner.schedule.forget(&id);
                    guard.armed = false;
                    return;
                }
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "cannot read queued message; retrying later");
                    return;
                }
            },
        };
        self.deliver(&id, &stored).await;
        guard.armed = false;
    }

    async fn deliver(&self, id: &str, stored: &StoredEnvelope) {
        let pending = stored.pending_recipients();
        if pending.is_empty() {
            self.finish(id).await;
            return;
        }
        let attempt = stored.meta.attempts.saturating_add(1);
        let indices: Vec<usize> = pending.iter().map(|&(i, _)| i).collect();
        let recipients: Vec<String> = pending.iter().map(|&(_, r)| r.to_owned()).collect();

        let results = match self.relay(stored, &recipients, attempt).await {
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
            match self.inner.storage.remove(id).await {
                Ok(()) => self.inner.schedule.forget(id),
                Err(e) => {
                    // Fall back to the record, so that a message whose
                    // removal failed is not delivered again by the retry.
                    tracing::error!(id = %id, error = %e, "cannot remove a delivered message");
                    if let Err(e) = self
                        .inner
                        .storage
                        .set_recipients_delivered(id, &delivered)
                        .await
                    {
                        tracing::error!(id = %id, error = %e, "cannot record delivered recipients");
                    }
                    self.retry_later(id, STORAGE_RETRY).await;
                }
            }
            return;
        }

        if !delivered.is_empty()
            && let Err(e) = self
                .inner
                .storage
                .set_recipients_delivered(id, &delivered)
                .await
        {
            if self.deleted_meanwhile(id, &e) {
                return;
            }
            // The relay delivered but storage cannot say so: the retry below
            // may deliver to them again (at-least-once beats losing mail).
            tracing::error!(id = %id, error = %e, "cannot record delivered recipients");
            self.retry_later(id, STORAGE_RETRY).await;
            return;
        }

        let mut retry_in = None;
        if !transient.is_empty() {
            let attempts = match self.inner.storage.increment_attempts(id).await {
                Ok(n) => n,
                Err(e) if self.deleted_meanwhile(id, &e) => return,
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "cannot count the attempt");
                    attempt
                }
            };
            let backoff = self.config(|c| c.backoff.clone());
            match backoff.delay(&stored.envelope, attempts) {
                Some(delay) => retry_in = Some(delay),
                None => {
                    tracing::warn!(id = %id, attempts, "giving up on transient failures");
                    permanent.extend(transient.drain(..).map(|f| Failure {
                        error: RelayError::permanent(gave_up(f.error.reply(), attempts)),
                        ..f
                    }));
                }
            }
        }

        if !permanent.is_empty() {
            if let Err(e) = self.bounce(id, stored, &permanent).await {
                tracing::error!(id = %id, error = %e, "cannot queue the bounce; retrying later");
                self.retry_later(id, STORAGE_RETRY).await;
                return;
            }
            let done: Vec<usize> = permanent.iter().map(|f| f.index).collect();
            if let Err(e) = self.inner.storage.set_recipients_delivered(id, &done).await {
                if self.deleted_meanwhile(id, &e) {
                    return;
                }
                tracing::error!(id = %id, error = %e, "cannot record bounced recipients");
                self.retry_later(id, STORAGE_RETRY).await;
                return;
            }
        }

        match retry_in {
            Some(delay) => {
                self.maybe_warn(id, stored, &transient).await;
                if let Some(last) = transient.last() {
                    // Best effort, for operators only.
                    let _ = self
                        .inner
                        .storage
                        .set_last_error(id, &last.error.to_string())
                        .await;
                }
                self.retry_later(id, delay).await;
            }
            None => self.finish(id).await,
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
    fn deleted_meanwhile(&self, id: &str, error: &io::Error) -> bool {
        if error.kind() != io::ErrorKind::NotFound {
            return false;
        }
        tracing::info!(id = %id, "message deleted during its delivery attempt");
        self.inner.schedule.forget(id);
        true
    }

    async fn retry_later(&self, id: &str, delay: Duration) {
        // An operator's "retry now" during this attempt wins over the delay.
        let due = if self.inner.schedule.take_retry_request(id) {
            clock::now()
        } else {
            clock::now() + delay
        };
        if let Err(e) = self.inner.storage.set_timestamp(id, due).await {
            if self.deleted_meanwhile(id, &e) {
                return;
            }
            // The in-memory schedule still retries; only a restart would use
            // the old due time (earlier, so nothing is lost).
            tracing::warn!(id = %id, error = %e, "cannot store the next attempt time");
        }
        self.inner
            .schedule
            .reschedule(id.to_owned(), clock::instant_at(due));
    }

    /// Removes a message nothing is pending for. If the removal fails it is
    /// tried again later: the next attempt finds either the message (and
    /// delivers to the recipients not recorded as done) or nothing.
    async fn finish(&self, id: &str) {
        match self.inner.storage.remove(id).await {
            Ok(()) => self.inner.schedule.forget(id),
            Err(e) => {
                tracing::error!(id = %id, error = %e, "cannot remove a finished message");
                self.inner.schedule.reschedule(
                    id.to_owned(),
                    clock::instant_at(clock::now() + STORAGE_RETRY),
                );
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

    /// Queues the one delay warning of a message whose `transient` failures
    /// are being retried, if it is configured, due and not yet sent. Best
    /// effort: a failure is logged, and the next attempt tries again.
    async fn maybe_warn(&self, id: &str, stored: &StoredEnvelope, transient: &[Failure]) {
        let Some(after) = self.config(|c| c.delay_warning) else {
            return;
        };
        let now = clock::now();
        let age = now
            .duration_since(stored.envelope.receive_time)
            .unwrap_or_default();
        if stored.meta.delay_warned || age < after || transient.is_empty() {
            return;
        }
        let hostname = self.config(|c| c.hostname.clone());
        let options = bounce::ReportOptions {
            reporting_mta: &hostname,
            // A warning returns only the headers whatever bounce_headers_only
            // says: the message is still on its way, a copy helps nobody.
            headers_only: true,
            now,
        };
        let delayed = failed_recipients(transient);
        if let Some(warning) = bounce::delay_warning(&stored.envelope, &delayed, None, &options) {
            match self.store(Arc::new(warning)).await {
                Ok(warning_id) => {
                    tracing::info!(id = %id, warning = %warning_id, to = %stored.envelope.sender, "delay warning queued");
                }
                Err(reply) => {
                    tracing::warn!(id = %id, error = %reply, "cannot queue the delay warning");
                    return;
                }
            }
        }
        if let Err(e) = self.inner.storage.set_delay_warned(id).await {
            tracing::warn!(id = %id, error = %e, "cannot record the delay warning; it may be sent again");
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
