//! [`SwiftBackend`]: an [`ObjectBackend`] on an OpenStack Swift container
//! (Rackspace Cloud Files' open implementation), over Swift's HTTP API.
//!
//! Decisions:
//! - Authentication is Swift's v1 protocol (tempauth, swauth, and Cloud
//!   Files' v1.0 endpoint): `GET` the auth URL with `X-Auth-User` and
//!   `X-Auth-Key`, which answers the account's `X-Storage-Url` and an
//!   `X-Auth-Token`. A token that expires is noticed by a `401`: the
//!   backend authenticates again, once, and repeats the request. Keystone
//!   (v2.0/v3 URLs) is not built; such an auth URL is refused when the
//!   backend is built, with an error that says so.
//! - The container is created when missing, at [`SwiftBuilder::open`] or,
//!   for a backend made with [`SwiftBuilder::build`] (no I/O, for callers
//!   that cannot wait), before its first operation. A `PUT` on an existing
//!   container changes nothing.
//! - `put_new` is a `PUT` with `If-None-Match: *`: Swift answers `412` when
//!   the object exists (checked against Swift 2.30). The object server
//!   checks before it receives the body and does not lock, so two creates
//!   of the same name *at the same moment* can both succeed (the later
//!   timestamp wins; 1 to 8 of 8 concurrent creates got `201` in the
//!   tests here): on Swift the notifier's lease, not the store, keeps
//!   two writers of one record apart. A `409` (a newer copy already landed)
//!   is `AlreadyExists` too.
//! - Every request has a timeout ([`SwiftBackend::builder`]'s `timeout`);
//!   connection failures keep their connection kinds (see `http.rs`).
//! - The key never appears in a log line or a `Debug` output.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::http::{encode_path, io_error, status_error};
use crate::object::{ObjectBackend, ObjectFuture};

/// Who the backend authenticates as: a v1 user (`account:user` for
/// tempauth) and its key.
#[derive(Clone)]
pub struct SwiftCredentials {
    user: String,
    key: String,
}

impl fmt::Debug for SwiftCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftCredentials")
            .field("user", &self.user)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SwiftCredentials {
    /// A user and key given directly.
    pub fn new(user: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            key: key.into(),
        }
    }

    /// `swift_user` and `swift_key` from the project's credentials file
    /// (a flat TOML table of strings shared with the other stores' keys,
    /// not readable by group or others: see `credentials.rs`).
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is refused (`PermissionDenied` for
    /// a wide mode, `InvalidData` when it is not such a table), or a key is
    /// missing (`NotFound`); no message quotes the key.
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let mut entries = crate::credentials::read_file(path)
            .map_err(|e| io::Error::new(e.kind(), format!("swift credentials: {e}")))?;
        let mut take = |name: &str| {
            entries.remove(name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("swift credentials: no {name} in {}", path.display()),
                )
            })
        };
        let user = take("swift_user")?;
        let key = take("swift_key")?;
        Ok(Self::new(user.expose(), key.expose()))
    }

    /// `OS_USERNAME` and `OS_PASSWORD` from the environment.
    ///
    /// # Errors
    ///
    /// `NotFound` when either is unset.
    pub fn from_env() -> io::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("swift credentials: {name} is not set (nor a credentials_file)"),
                )
            })
        };
        Ok(Self::new(var("OS_USERNAME")?, var("OS_PASSWORD")?))
    }

    /// The user name (never the key).
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// How to reach a Swift container; [`SwiftBuilder::open`] makes the
/// backend.
#[derive(Debug, Clone)]
pub struct SwiftBuilder {
    auth_url: String,
    container: String,
    credentials: SwiftCredentials,
    timeout: Duration,
    connect_timeout: Duration,
    list_page: usize,
}

impl SwiftBuilder {
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

    /// How many names one listing request asks for (Swift's own maximum,
    /// 10,000, by default; the tests page with a small one).
    #[must_use]
    pub fn list_page(mut self, names: usize) -> Self {
        self.list_page = names.max(1);
        self
    }

    /// The backend, without a request yet: it authenticates and creates
    /// the container when missing on first use (for callers that cannot
    /// wait, such as a configuration being read).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a Keystone auth URL (not built) or a URL that is
    /// not http(s); `Other` when the HTTP client cannot be made.
    pub fn build(self) -> io::Result<SwiftBackend> {
        crate::http::require_http_url("swift", &self.auth_url)?;
        let lower = self.auth_url.to_ascii_lowercase();
        if lower.trim_end_matches('/').ends_with("/v3")
            || lower.contains("/v3/")
            || lower.trim_end_matches('/').ends_with("/v2.0")
            || lower.contains("/v2.0/")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "swift: {:?} looks like a Keystone auth URL; only Swift's v1 \
                     authentication (tempauth, swauth, Cloud Files v1.0: \
                     X-Auth-User/X-Auth-Key) is built",
                    self.auth_url
                ),
            ));
        }
        let http = crate::http::client("swift", self.timeout, self.connect_timeout)?;
        Ok(SwiftBackend {
            http,
            auth_url: self.auth_url,
            container: self.container,
            credentials: self.credentials,
            list_page: self.list_page,
            session: tokio::sync::Mutex::new(None),
            container_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// [`build`](Self::build), then authenticates and creates the container
    /// when it is missing, so a bad setting shows at once.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); `PermissionDenied` when the credentials
    /// are refused; the connection kinds when Swift cannot be reached;
    /// `Other` for any other answer.
    pub async fn open(self) -> io::Result<SwiftBackend> {
        let backend = self.build()?;
        backend.ready().await?;
        Ok(backend)
    }
}

/// A token and the account URL it is good for.
struct Session {
    storage_url: String,
    token: String,
}

/// An [`ObjectBackend`] on one Swift container (see the module docs).
pub struct SwiftBackend {
    http: reqwest::Client,
    auth_url: String,
    container: String,
    credentials: SwiftCredentials,
    list_page: usize,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    container_ready: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for SwiftBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftBackend")
            .field("auth_url", &self.auth_url)
            .field("container", &self.container)
            .field("user", &self.credentials.user)
            .finish_non_exhaustive()
    }
}

/// One entry of a JSON container listing.
#[derive(Deserialize)]
struct ListedObject {
    name: String,
}

impl SwiftBackend {
    /// A builder for the container `container` of the account that
    /// `credentials` authenticate to at `auth_url` (e.g.
    /// `http://127.0.0.1:8080/auth/v1.0`).
    pub fn builder(
        auth_url: impl Into<String>,
        container: impl Into<String>,
        credentials: SwiftCredentials,
    ) -> SwiftBuilder {
        SwiftBuilder {
            auth_url: auth_url.into(),
            container: container.into(),
            credentials,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            list_page: 10_000,
        }
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    async fn authenticate(&self) -> io::Result<Session> {
        let response = self
            .http
            .get(&self.auth_url)
            .header("X-Auth-User", &self.credentials.user)
            .header("X-Auth-Key", &self.credentials.key)
            .send()
            .await
            .map_err(|e| io_error("swift auth", &e))?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "swift auth: {} refused the credentials of {:?} (HTTP {status})",
                    self.auth_url, self.credentials.user
                ),
            ));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(status_error("swift auth", status, &body));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("swift auth: the answer has no {name}"),
                    )
                })
        };
        let storage_url = header("X-Storage-Url")?;
        let token = header("X-Auth-Token")?;
        tracing::debug!(user = %self.credentials.user, %storage_url, "swift: authenticated");
        Ok(Session {
            storage_url: storage_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The current session, authenticating first when there is none, or
    /// a fresh one when `stale` (a token just refused) is still current.
    async fn session(&self, stale: Option<&Arc<Session>>) -> io::Result<Arc<Session>> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref()
            && !stale.is_some_and(|s| Arc::ptr_eq(s, session))
        {
            return Ok(session.clone());
        }
        let session = Arc::new(self.authenticate().await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Sends the request `build` makes for a session; on `401` once more
    /// with a fresh token.
    async fn send(
        &self,
        what: &str,
        build: impl Fn(&Session) -> reqwest::RequestBuilder,
    ) -> io::Result<reqwest::Response> {
        let mut session = self.session(None).await?;
        let mut renewed = false;
        loop {
            let response = build(&session)
                .header("X-Auth-Token", &session.token)
                .send()
                .await
                .map_err(|e| io_error(what, &e))?;
            if response.status() == StatusCode::UNAUTHORIZED && !renewed {
                tracing::debug!("swift: token refused, authenticating again");
                session = self.session(Some(&session)).await?;
                renewed = true;
                continue;
            }
            return Ok(response);
        }
    }

    fn container_url(&self, session: &Session) -> String {
        format!(
            "{}/{}",
            session.storage_url,
            encode_path(&self.container, false)
        )
    }

    fn object_url(&self, session: &Session, key: &str) -> String {
        format!("{}/{}", self.container_url(session), encode_path(key, true))
    }

    /// Makes sure the container exists (once per backend).
    async fn ready(&self) -> io::Result<()> {
        self.container_ready
            .get_or_try_init(|| self.create_container())
            .await?;
        Ok(())
    }

    async fn create_container(&self) -> io::Result<()> {
        let what = format!("swift: create container {:?}", self.container);
        let response = self
            .send(&what, |s| {
                self.http
                    .put(self.container_url(s))
                    .header("Content-Length", 0)
            })
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::ACCEPTED | StatusCode::NO_CONTENT => Ok(()),
            status => Err(failure(&what, status, response).await),
        }
    }

    async fn put_new_object(&self, key: &str, body: Bytes) -> io::Result<()> {
        self.ready().await?;
        let what = format!("swift: put {key:?}");
        let response = self
            .send(&what, |s| {
                self.http
                    .put(self.object_url(s, key))
                    .header("If-None-Match", "*")
                    .header("Content-Type", "application/octet-stream")
                    // reqwest sends none for an empty body; Swift requires it.
                    .header("Content-Length", body.len())
                    .body(body.clone())
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{what}: the object exists"),
            )),
            status => Err(failure(&what, status, response).await),
        }
    }

    async fn get_object(&self, key: &str) -> io::Result<Vec<u8>> {
        self.ready().await?;
        let what = format!("swift: get {key:?}");
        let response = self
            .send(&what, |s| self.http.get(self.object_url(s, key)))
            .await?;
        match response.status() {
            StatusCode::OK => {
                let body = response.bytes().await.map_err(|e| io_error(&what, &e))?;
                Ok(body.to_vec())
            }
            StatusCode::NOT_FOUND => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{what}: no such object"),
            )),
            status => Err(failure(&what, status, response).await),
        }
    }

    async fn delete_object(&self, key: &str) -> io::Result<()> {
        self.ready().await?;
        let what = format!("swift: delete {key:?}");
        let response = self
            .send(&what, |s| self.http.delete(self.object_url(s, key)))
            .await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            status => Err(failure(&what, status, response).await),
        }
    }

    async fn list_objects(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.ready().await?;
        let what = format!("swift: list {prefix:?}");
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let query = format!(
                "?format=json&limit={}&prefix={}&marker={}",
                self.list_page,
                encode_path(prefix, false),
                encode_path(&marker, false)
            );
            let response = self
                .send(&what, |s| {
                    self.http.get(format!("{}{query}", self.container_url(s)))
                })
                .await?;
            let page: Vec<ListedObject> = match response.status() {
                StatusCode::OK => {
                    let body = response.bytes().await.map_err(|e| io_error(&what, &e))?;
                    serde_json::from_slice(&body).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{what}: not a JSON listing: {e}"),
                        )
                    })?
                }
                StatusCode::NO_CONTENT => Vec::new(),
                status => return Err(failure(&what, status, response).await),
            };
            let full = page.len() >= self.list_page;
            if let Some(last) = page.last() {
                marker.clone_from(&last.name);
            }
            names.extend(page.into_iter().map(|o| o.name));
            if !full {
                return Ok(names);
            }
        }
    }
}

/// The error for an answer with an unexpected `status`.
async fn failure(what: &str, status: StatusCode, response: reqwest::Response) -> io::Error {
    let body = response.text().await.unwrap_or_default();
    status_error(what, status, &body)
}

impl ObjectBackend for SwiftBackend {
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> ObjectFuture<'a, ()> {
        Box::pin(self.put_new_object(key, Bytes::from(body)))
    }

    fn get<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Vec<u8>> {
        Box::pin(self.get_object(key))
    }

    fn delete<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, ()> {
        Box::pin(self.delete_object(key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<String>> {
        Box::pin(self.list_objects(prefix))
    }
}
