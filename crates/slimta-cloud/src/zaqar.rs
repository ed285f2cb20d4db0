//! [`ZaqarNotifier`]: a [`Notifier`] on an OpenStack Zaqar queue (Rackspace
//! Cloud Queues' open implementation), over Zaqar's v2 HTTP API.
//!
//! Every request carries `Client-ID` (a UUID per notifier) and
//! `X-Project-ID`. Decisions, each checked against Zaqar 23.0.1 with its
//! Redis message store:
//! - A notice is a message whose body is `{"id": "<storage id>"}`, posted
//!   with a long TTL (14 days, Zaqar's default maximum) and a `delay`.
//!   Zaqar honours a message's `delay` only on a queue whose metadata has a
//!   non-zero `_default_message_delay` (without one the field is silently
//!   dropped), so the notifier creates the queue with
//!   `_default_message_delay = 1` or adds it to an existing queue (at
//!   [`ZaqarBuilder::open`], or before the first operation of one made
//!   with [`ZaqarBuilder::build`]). Every
//!   notice states its own delay, so the default never applies to ours.
//!   Delays are capped at 900 s (Zaqar's `max_message_delay`); an early
//!   notice is postponed again.
//! - A take is a claim (`POST .../claims`) per notice, each with
//!   `limit=1`. Zaqar's Redis claim script scans the queue in order and,
//!   from the first claimable message on, claims every following message
//!   *without checking* whether it is still delayed or held by another
//!   live claim: a claim for several messages hands out notices that
//!   another taker holds (seen here: an expired claim ahead of a live one).
//!   With `limit=1` it claims exactly the first message that is neither
//!   claimed nor delayed. A claim's TTL is the lease; Zaqar's minimum is
//!   60 s, so a shorter lease is 60 s, and its maximum 12 hours. Grace is
//!   Zaqar's minimum, 60 s (it only keeps the message alive past the
//!   claim).
//! - Long polling is emulated: Zaqar answers a claim at once, so `take`
//!   claims again after a short sleep (250 ms by default) until it has a
//!   notice or `wait` has passed.
//! - `postpone` keeps the notice in Zaqar's hands in three ways: a delay of
//!   60 s or more updates the claim's TTL (`PATCH`; the claim holds only
//!   this notice, and the taker still holds it, so a long attempt extends
//!   its lease this way); a zero delay releases the claim (`DELETE`), so the
//!   notice is visible at once; a delay under 60 s, shorter than any claim,
//!   posts a new notice with that delay and deletes the taken one (the
//!   taker then no longer holds it). So a lease renewal (a postpone by the
//!   lease) keeps the notice held only with leases of 60 s or more; the
//!   app's cloud kind refuses a shorter lease with Zaqar.
//! - `finish` deletes the message with its claim id. When the lease ran out
//!   and nobody claimed it since, it is deleted without one; when another
//!   taker claimed it since, `finish` fails with `PermissionDenied` and
//!   leaves it to that taker.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::http::{encode_path, io_error, status_error};
use crate::notify::{Notice, Notifier, NotifyFuture};

/// Zaqar's shortest claim TTL and grace (`MIN_CLAIM_TTL`, `MIN_CLAIM_GRACE`).
const MIN_CLAIM: Duration = Duration::from_secs(60);
/// Zaqar's default `max_claim_ttl`.
const MAX_CLAIM: Duration = Duration::from_secs(43_200);

/// How to reach a Zaqar queue; [`ZaqarBuilder::open`] makes the notifier.
#[derive(Debug, Clone)]
pub struct ZaqarBuilder {
    url: String,
    queue: String,
    project: String,
    timeout: Duration,
    connect_timeout: Duration,
    message_ttl: Duration,
    max_delay: Duration,
    poll_interval: Duration,
}

impl ZaqarBuilder {
    /// The `X-Project-ID` of every request (`slimta` by default).
    #[must_use]
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = project.into();
        self
    }

    /// The time any one request may take (30 s by default).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The time a connection may take to open (5 s by default).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a notice lives unclaimed (14 days, Zaqar's default
    /// `max_message_ttl`, by default; Zaqar's minimum is 60 s).
    #[must_use]
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = ttl.max(MIN_CLAIM);
        self
    }

    /// The longest delay a notice is posted with (900 s, Zaqar's default
    /// `max_message_delay`, by default).
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The sleep between two claims while `take` waits (250 ms by default).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The notifier, without a request yet: the queue is made ready (see
    /// [`open`](Self::open)) before its first operation (for callers that
    /// cannot wait, such as a configuration being read).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL that is not http(s); `Other` when the HTTP
    /// client cannot be made.
    pub fn build(self) -> io::Result<ZaqarNotifier> {
        crate::http::require_http_url("zaqar", &self.url)?;
        let http = crate::http::client("zaqar", self.timeout, self.connect_timeout)?;
        let queue_url = format!(
            "{}/v2/queues/{}",
            self.url.trim_end_matches('/'),
            encode_path(&self.queue, false)
        );
        Ok(ZaqarNotifier {
            http,
            queue_url,
            queue: self.queue,
            project: self.project,
            client_id: uuid::Uuid::new_v4().to_string(),
            message_ttl: self.message_ttl,
            max_delay: self.max_delay,
            poll_interval: self.poll_interval,
            queue_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// [`build`](Self::build), then creates the queue (with the metadata
    /// delays need, see the module docs) or adds that metadata to an
    /// existing queue, so a bad setting shows at once.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); the connection kinds when Zaqar cannot be
    /// reached; `Other` for an unexpected answer.
    pub async fn open(self) -> io::Result<ZaqarNotifier> {
        let notifier = self.build()?;
        notifier.ready().await?;
        Ok(notifier)
    }
}

/// A [`Notifier`] on one Zaqar queue (see the module docs).
pub struct ZaqarNotifier {
    http: reqwest::Client,
    queue_url: String,
    queue: String,
    project: String,
    client_id: String,
    message_ttl: Duration,
    max_delay: Duration,
    poll_interval: Duration,
    queue_ready: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for ZaqarNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZaqarNotifier")
            .field("queue_url", &self.queue_url)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

/// The answer to a claim.
#[derive(Deserialize)]
struct Claimed {
    messages: Vec<ClaimedMessage>,
}

#[derive(Deserialize)]
struct ClaimedMessage {
    id: String,
    href: String,
    body: serde_json::Value,
}

/// A notice's receipt: the message id and the claim id.
fn receipt(message: &str, claim: &str) -> String {
    format!("{message} {claim}")
}

fn parse_receipt(notice: &Notice) -> io::Result<(&str, &str)> {
    notice.receipt.split_once(' ').ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("zaqar: {:?} is not a Zaqar receipt", notice.receipt),
        )
    })
}

fn secs(d: Duration) -> u64 {
    // Zaqar counts whole seconds; a part second rounds up, so a delay or a
    // lease is never shorter than asked.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ZaqarNotifier {
    /// A builder for the queue `queue` of the Zaqar at `url` (e.g.
    /// `http://127.0.0.1:8888`).
    pub fn builder(url: impl Into<String>, queue: impl Into<String>) -> ZaqarBuilder {
        ZaqarBuilder {
            url: url.into(),
            queue: queue.into(),
            project: "slimta".to_owned(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            message_ttl: Duration::from_secs(1_209_600),
            max_delay: Duration::from_secs(900),
            poll_interval: Duration::from_millis(250),
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("Client-ID", &self.client_id)
            .header("X-Project-ID", &self.project)
    }

    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> io::Result<Answer> {
        let response = request.send().await.map_err(|e| io_error(what, &e))?;
        let status = response.status();
        let location = response
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(|e| io_error(what, &e))?;
        Ok(Answer {
            status,
            location,
            body: body.to_vec(),
        })
    }

    /// Makes sure the queue exists with its metadata (once per notifier).
    async fn ready(&self) -> io::Result<()> {
        self.queue_ready
            .get_or_try_init(|| self.create_queue())
            .await?;
        Ok(())
    }

    async fn create_queue(&self) -> io::Result<()> {
        let what = format!("zaqar: create queue {:?}", self.queue);
        let answer = self
            .send(
                &what,
                self.request(reqwest::Method::PUT, &self.queue_url)
                    .header("Content-Type", "application/json")
                    .body(json!({ "_default_message_delay": 1 }).to_string()),
            )
            .await?;
        match answer.status {
            StatusCode::CREATED => return Ok(()),
            StatusCode::NO_CONTENT => {}
            status => return Err(answer.error(&what, status)),
        }
        // The queue was there: a PUT does not change its metadata.
        let answer = self
            .send(&what, self.request(reqwest::Method::GET, &self.queue_url))
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error(&what, answer.status));
        }
        let metadata: serde_json::Value = answer.json(&what)?;
        if metadata
            .get("_default_message_delay")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|d| d > 0)
        {
            return Ok(());
        }
        let patch = json!([{
            "op": "add",
            "path": "/metadata/_default_message_delay",
            "value": 1,
        }]);
        let answer = self
            .send(
                &what,
                self.request(reqwest::Method::PATCH, &self.queue_url)
                    .header(
                        "Content-Type",
                        "application/openstack-messaging-v2.0-json-patch",
                    )
                    .body(patch.to_string()),
            )
            .await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            status => Err(answer.error(&what, status)),
        }
    }

    async fn post_notice(&self, id: &str, delay: Duration) -> io::Result<()> {
        self.ready().await?;
        let what = format!("zaqar: announce {id:?}");
        let delay = secs(delay.min(self.max_delay));
        let body = json!({
            "messages": [{
                "ttl": secs(self.message_ttl),
                "delay": delay,
                "body": { "id": id },
            }]
        });
        let answer = self
            .send(
                &what,
                self.request(
                    reqwest::Method::POST,
                    &format!("{}/messages", self.queue_url),
                )
                .header("Content-Type", "application/json")
                .body(body.to_string()),
            )
            .await?;
        match answer.status {
            StatusCode::CREATED => Ok(()),
            status => Err(answer.error(&what, status)),
        }
    }

    /// One claim of at most one notice.
    async fn claim_one(&self, lease: Duration) -> io::Result<Option<Notice>> {
        self.ready().await?;
        let what = "zaqar: claim";
        let lease = secs(lease.clamp(MIN_CLAIM, MAX_CLAIM));
        let body = json!({ "ttl": lease, "grace": secs(MIN_CLAIM) });
        let answer = self
            .send(
                what,
                self.request(
                    reqwest::Method::POST,
                    &format!("{}/claims?limit=1", self.queue_url),
                )
                .header("Content-Type", "application/json")
                .body(body.to_string()),
            )
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT => return Ok(None),
            StatusCode::CREATED => {}
            status => return Err(answer.error(what, status)),
        }
        let claimed: Claimed = answer.json(what)?;
        let Some(message) = claimed.messages.into_iter().next() else {
            return Ok(None);
        };
        let claim = claim_id(&message.href, answer.location.as_deref()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: no claim id in {:?}", message.href),
            )
        })?;
        let Some(id) = message.body.get("id").and_then(serde_json::Value::as_str) else {
            // Not a notice of ours: remove it rather than meet it again.
            tracing::warn!(queue = %self.queue, message = %message.id, "zaqar: a message without an id, deleted");
            self.delete_message(&message.id, Some(&claim)).await?;
            return Ok(None);
        };
        Ok(Some(Notice {
            id: id.to_owned(),
            receipt: receipt(&message.id, &claim),
        }))
    }

    async fn take_notices(
        &self,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> io::Result<Vec<Notice>> {
        let deadline = Instant::now() + wait;
        let mut notices = Vec::new();
        loop {
            while notices.len() < max {
                match self.claim_one(lease).await? {
                    Some(notice) => notices.push(notice),
                    None => break,
                }
            }
            let now = Instant::now();
            if !notices.is_empty() || max == 0 || now >= deadline {
                return Ok(notices);
            }
            tokio::time::sleep(self.poll_interval.min(deadline - now)).await;
        }
    }

    /// Deletes a message, with its claim when `claim` is given. The status.
    async fn delete_message(&self, message: &str, claim: Option<&str>) -> io::Result<StatusCode> {
        let what = format!("zaqar: delete message {message:?}");
        let mut url = format!(
            "{}/messages/{}",
            self.queue_url,
            encode_path(message, false)
        );
        if let Some(claim) = claim {
            url.push_str("?claim_id=");
            url.push_str(&encode_path(claim, false));
        }
        let answer = self
            .send(&what, self.request(reqwest::Method::DELETE, &url))
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT
            | StatusCode::OK
            | StatusCode::BAD_REQUEST
            | StatusCode::FORBIDDEN => Ok(answer.status),
            status => Err(answer.error(&what, status)),
        }
    }

    async fn finish_notice(&self, notice: &Notice) -> io::Result<()> {
        self.ready().await?;
        let (message, claim) = parse_receipt(notice)?;
        let status = match self.delete_message(message, Some(claim)).await? {
            // Zaqar answers 400 when our claim is gone and the message is
            // unclaimed (the lease ran out): remove it without a claim.
            StatusCode::BAD_REQUEST => self.delete_message(message, None).await?,
            status => status,
        };
        if status.is_success() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "zaqar: notice of {:?} was claimed by another taker after its lease ran out; \
                 left to that taker",
                notice.id
            ),
        ))
    }

    async fn postpone_notice(&self, notice: &Notice, delay: Duration) -> io::Result<()> {
        self.ready().await?;
        let (message, claim) = parse_receipt(notice)?;
        let claim_url = format!("{}/claims/{}", self.queue_url, encode_path(claim, false));
        if delay.is_zero() {
            let what = format!("zaqar: release the claim on {:?}", notice.id);
            let answer = self
                .send(&what, self.request(reqwest::Method::DELETE, &claim_url))
                .await?;
            return match answer.status {
                StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
                status => Err(answer.error(&what, status)),
            };
        }
        if delay < MIN_CLAIM {
            self.post_notice(&notice.id, delay).await?;
            // A notice we no longer hold (the lease ran out) stays with
            // whoever has it: a second notice of one message is harmless.
            self.delete_message(message, Some(claim)).await?;
            return Ok(());
        }
        let what = format!("zaqar: postpone {:?}", notice.id);
        let body = json!({ "ttl": secs(delay.min(MAX_CLAIM)), "grace": secs(MIN_CLAIM) });
        let answer = self
            .send(
                &what,
                self.request(reqwest::Method::PATCH, &claim_url)
                    .header("Content-Type", "application/json")
                    .body(body.to_string()),
            )
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{what}: the claim is gone (its lease ran out)"),
            )),
            status => Err(answer.error(&what, status)),
        }
    }
}

/// The claim id of a claimed message: its href's `claim_id` parameter, or
/// the last segment of the claim's `Location`.
fn claim_id(href: &str, location: Option<&str>) -> Option<String> {
    let from_href = href
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("claim_id="))
        })
        .filter(|c| !c.is_empty());
    from_href
        .or_else(|| location.and_then(|l| l.rsplit('/').next()))
        .map(str::to_owned)
}

/// A whole answer (Zaqar's are small).
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn error(&self, what: &str, status: StatusCode) -> io::Error {
        status_error(what, status, &String::from_utf8_lossy(&self.body))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> io::Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: unexpected answer: {e}"),
            )
        })
    }
}

impl Notifier for ZaqarNotifier {
    fn announce<'a>(&'a self, id: &'a str, delay: Duration) -> NotifyFuture<'a, ()> {
        Box::pin(self.post_notice(id, delay))
    }

    fn take(&self, max: usize, lease: Duration, wait: Duration) -> NotifyFuture<'_, Vec<Notice>> {
        Box::pin(self.take_notices(max, lease, wait))
    }

    fn postpone<'a>(&'a self, notice: &'a Notice, delay: Duration) -> NotifyFuture<'a, ()> {
        Box::pin(self.postpone_notice(notice, delay))
    }

    fn finish<'a>(&'a self, notice: &'a Notice) -> NotifyFuture<'a, ()> {
        Box::pin(self.finish_notice(notice))
    }
}

#[cfg(test)]
mod tests {
    use super::{claim_id, secs};
    use std::time::Duration;

    #[test]
    fn claim_ids_come_from_the_href_or_the_location() {
        assert_eq!(
            claim_id("/v2/queues/q/messages/m1?claim_id=c1", None).as_deref(),
            Some("c1")
        );
        assert_eq!(
            claim_id("/v2/queues/q/messages/m1", Some("/v2/queues/q/claims/c2")).as_deref(),
            Some("c2")
        );
    }

    #[test]
    fn part_seconds_round_up() {
        assert_eq!(secs(Duration::from_millis(1500)), 2);
        assert_eq!(secs(Duration::from_secs(3)), 3);
        assert_eq!(secs(Duration::ZERO), 0);
    }
}
