//! [`SqsNotifier`]: the [`Notifier`] over Amazon SQS (or moto, or any SQS
//! API), through `aws-sdk-sqs` with a client configured by hand (static
//! keys, region, endpoint: no `aws-config` and its credential chain).
//!
//! Decisions:
//! - A notice is one SQS message whose body is the storage id; its receipt
//!   handle is the notice's receipt. Announce is `SendMessage` with
//!   `DelaySeconds` (SQS allows up to 15 minutes: a longer delay is cut to
//!   that, and the early notice is postponed again by its taker).
//! - The lease is the visibility timeout: `ReceiveMessage` with
//!   `VisibilityTimeout` and long polling (`WaitTimeSeconds`, up to 20 s),
//!   postpone is `ChangeMessageVisibility` (up to 12 hours), finish is
//!   `DeleteMessage`. Where SQS refuses a postpone (the 12-hour limit of an
//!   in-flight message, or a receipt that went stale), the notice is sent
//!   again with the delay and the old one deleted: nothing is lost, at
//!   worst a duplicate notice (harmless, see `dispatch.rs`).
//! - Delays and leases are whole seconds, rounded up, so that a short
//!   postpone never becomes "visible now" (a busy loop).
//! - Each call is bounded by the configured timeout (long polls by their
//!   wait on top), and the SDK retries once; a failure to connect is
//!   `ConnectionRefused`, a timeout `TimedOut`.

use std::io;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::SdkError;

use crate::credentials::AwsKeys;
use crate::notify::{Notice, Notifier, NotifyFuture};

/// SQS's longest `DelaySeconds`.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// SQS's longest visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// Where and how to reach the queue.
#[derive(Clone, Debug)]
pub struct SqsSettings {
    /// The queue's URL (`http://127.0.0.1:5000/123456789012/slimta`).
    pub queue_url: String,
    /// The endpoint of an SQS-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The keys.
    pub keys: AwsKeys,
    /// The timeout of one call (a long poll gets its wait on top).
    pub timeout: Duration,
}

/// A queue on SQS.
#[derive(Clone, Debug)]
pub struct SqsNotifier {
    client: Client,
    queue_url: String,
    timeout: Duration,
}

fn client(settings: &SqsSettings) -> Client {
    let keys = &settings.keys;
    let credentials = Credentials::new(
        keys.access_key_id.clone(),
        keys.secret_access_key.expose().to_owned(),
        keys.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "slimta-static",
    );
    let mut config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials)
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

/// Whole seconds, rounded up, at most `max`.
fn seconds(d: Duration, max: Duration) -> i32 {
    let d = d.min(max);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// The io kind the queue acts on for an SDK failure.
fn to_io<E, R>(what: &str, e: &SdkError<E, R>) -> io::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let kind = match e {
        SdkError::TimeoutError(_) => io::ErrorKind::TimedOut,
        SdkError::DispatchFailure(f) if f.is_timeout() => io::ErrorKind::TimedOut,
        SdkError::DispatchFailure(f) if f.is_io() => io::ErrorKind::ConnectionRefused,
        SdkError::DispatchFailure(_) => io::ErrorKind::NotConnected,
        SdkError::ResponseError(_) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(
        kind,
        format!("sqs {what}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)),
    )
}

impl SqsNotifier {
    /// A client for the queue (no request is made yet).
    pub fn new(settings: &SqsSettings) -> Self {
        Self {
            client: client(settings),
            queue_url: settings.queue_url.clone(),
            timeout: settings.timeout,
        }
    }

    /// Creates the queue `name` (or finds it) and returns its URL; for
    /// set-up scripts and tests (`queue_url` in `settings` is not used).
    ///
    /// # Errors
    ///
    /// When SQS cannot be reached or refuses.
    pub async fn create_queue(settings: &SqsSettings, name: &str) -> io::Result<String> {
        let created = client(settings)
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| to_io("CreateQueue", &e))?;
        created
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| io::Error::other("sqs CreateQueue: no queue URL in the answer"))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        extra: Duration,
        fut: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        tokio::time::timeout(self.timeout + extra, fut)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("sqs {what} timed out"),
                ))
            })
    }

    async fn send(&self, id: &str, delay: Duration) -> io::Result<()> {
        self.bounded("SendMessage", Duration::ZERO, async {
            self.client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(id)
                .delay_seconds(seconds(delay, MAX_DELAY))
                .send()
                .await
                .map_err(|e| to_io("SendMessage", &e))?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, notice: &Notice) -> io::Result<()> {
        self.bounded("DeleteMessage", Duration::ZERO, async {
            self.client
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(&notice.receipt)
                .send()
                .await
                .map_err(|e| to_io("DeleteMessage", &e))?;
            Ok(())
        })
        .await
    }
}

impl Notifier for SqsNotifier {
    fn announce<'a>(&'a self, id: &'a str, delay: Duration) -> NotifyFuture<'a, ()> {
        Box::pin(self.send(id, delay))
    }

    fn take(&self, max: usize, lease: Duration, wait: Duration) -> NotifyFuture<'_, Vec<Notice>> {
        Box::pin(async move {
            let wait = wait.min(Duration::from_secs(20));
            let answer = self
                .bounded("ReceiveMessage", wait, async {
                    self.client
                        .receive_message()
                        .queue_url(&self.queue_url)
                        .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
                        .visibility_timeout(seconds(lease, MAX_VISIBILITY).max(1))
                        .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20))
                        .send()
                        .await
                        .map_err(|e| to_io("ReceiveMessage", &e))
                })
                .await?;
            Ok(answer
                .messages()
                .iter()
                .filter_map(|m| {
                    Some(Notice {
                        id: m.body()?.to_owned(),
                        receipt: m.receipt_handle()?.to_owned(),
                    })
                })
                .collect())
        })
    }

    fn postpone<'a>(&'a self, notice: &'a Notice, delay: Duration) -> NotifyFuture<'a, ()> {
        Box::pin(async move {
            let changed = self
                .bounded("ChangeMessageVisibility", Duration::ZERO, async {
                    self.client
                        .change_message_visibility()
                        .queue_url(&self.queue_url)
                        .receipt_handle(&notice.receipt)
                        .visibility_timeout(seconds(delay, MAX_VISIBILITY))
                        .send()
                        .await
                        .map_err(|e| to_io("ChangeMessageVisibility", &e))
                })
                .await;
            match changed {
                Ok(_) => Ok(()),
                // Refused by SQS (not a connection failure): a new notice.
                Err(e) if e.kind() == io::ErrorKind::Other && delay > Duration::ZERO => {
                    tracing::debug!(id = %notice.id, error = %e, "postponed as a new notice");
                    self.send(&notice.id, delay).await?;
                    let _ = self.delete(notice).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn finish<'a>(&'a self, notice: &'a Notice) -> NotifyFuture<'a, ()> {
        Box::pin(self.delete(notice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_cap() {
        assert_eq!(seconds(Duration::ZERO, MAX_DELAY), 0);
        assert_eq!(seconds(Duration::from_millis(1), MAX_DELAY), 1);
        assert_eq!(seconds(Duration::from_millis(2500), MAX_DELAY), 3);
        assert_eq!(seconds(Duration::from_secs(5000), MAX_DELAY), 900);
    }
}
