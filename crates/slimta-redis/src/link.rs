//! The connection to Redis that the storage and the dispatcher share: the
//! options, a lazily made [`ConnectionManager`] (it reconnects by itself
//! after Redis restarts), a timeout on every call, and the mapping of the
//! client's errors to the [`io::ErrorKind`]s the queue answers by.
//!
//! Decision: the manager is made on first use, not when the options are
//! opened. Opening is synchronous in the app (config checks happen before
//! any runtime work), and a slimta started while Redis is down should come
//! up and answer `451 4.3.0` until Redis is back, like one whose Redis went
//! away later.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError, ServerErrorKind};

/// How to reach Redis and what to keep there.
#[derive(Clone)]
pub struct RedisOptions {
    url: String,
    password: Option<String>,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    ca: Option<Vec<u8>>,
}

impl fmt::Debug for RedisOptions {
    // The password never reaches a log, whether from the URL or a file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("ca", &self.ca.as_ref().map(|_| "<PEM>"))
            .finish()
    }
}

/// `url` with its userinfo (user and password) replaced, for messages and
/// logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<hidden>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Why [`RedisOptions`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisOptionsError {
    /// The URL is not a Redis URL (`redis://`, `rediss://`, `unix://`).
    Url(String),
    /// A password was given twice: in the URL and separately.
    PasswordTwice,
    /// The key prefix is empty.
    EmptyPrefix,
}

impl fmt::Display for RedisOptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(why) => write!(f, "not a usable Redis URL: {why}"),
            Self::PasswordTwice => {
                f.write_str("a password in the URL and a separate password: give one")
            }
            Self::EmptyPrefix => f.write_str("the key prefix is empty"),
        }
    }
}

impl std::error::Error for RedisOptionsError {}

impl RedisOptions {
    /// Options for the Redis at `url` (`redis://host:port/db`, `rediss://`
    /// for TLS, a password as `redis://:PASSWORD@host`), with prefix
    /// `slimta:`, a 10 s timeout per call and 5 min leases.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            prefix: "slimta:".into(),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(300),
            ca: None,
        }
    }

    /// For `rediss://`: trust the CA certificates in `pem` (a private CA)
    /// instead of the system's roots.
    pub fn tls_ca(mut self, pem: Vec<u8>) -> Self {
        self.ca = Some(pem);
        self
    }

    /// The password, when it is not in the URL (read from a file by the app).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The prefix of every key (several queues share one Redis database
    /// with different prefixes).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one call to Redis (connecting included) may take before it
    /// fails with [`io::ErrorKind::TimedOut`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a process holds a message it took for an attempt before
    /// another process may take it (see [`crate::RedisDispatch`]); longer
    /// than an attempt can take.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The lease time.
    pub fn lease_time(&self) -> Duration {
        self.lease
    }

    /// Checks the options without connecting (a config reader's check).
    ///
    /// # Errors
    ///
    /// See [`RedisOptionsError`].
    pub fn check(&self) -> Result<(), RedisOptionsError> {
        self.link().map(drop)
    }

    /// Checks the options and makes the (not yet connected) link.
    pub(crate) fn link(&self) -> Result<Link, RedisOptionsError> {
        if self.prefix.is_empty() {
            return Err(RedisOptionsError::EmptyPrefix);
        }
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisOptionsError::Url(format!("{}: {e}", redact(&self.url))))?;
        if let Some(password) = &self.password {
            if info.redis_settings().password().is_some() {
                return Err(RedisOptionsError::PasswordTwice);
            }
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &self.ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| RedisOptionsError::Url(format!("{}: {e}", redact(&self.url))))?;
        Ok(Link {
            client,
            manager: Arc::new(tokio::sync::OnceCell::new()),
            timeout: self.timeout,
            keys: Keys::new(&self.prefix),
        })
    }
}

/// The names of the keys under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// The sorted set of every message by the time it may next be taken.
    pub(crate) due: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            due: format!("{prefix}due"),
        }
    }

    /// The hash of message `id`.
    pub(crate) fn message(&self, id: &str) -> String {
        format!("{}msg:{id}", self.prefix)
    }

    /// The part of a message key before the id (scripts build keys from
    /// ids they find in the due set).
    pub(crate) fn message_prefix(&self) -> String {
        format!("{}msg:", self.prefix)
    }

    /// The `SCAN MATCH` pattern of every message key: the prefix with its
    /// glob characters escaped.
    pub(crate) fn message_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 8);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("msg:*");
        pattern
    }

    /// The id in a message key found by `SCAN`.
    pub(crate) fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("msg:")
    }
}

/// A connection to one Redis, cheap to clone (clones share it).
#[derive(Clone)]
pub(crate) struct Link {
    client: redis::Client,
    manager: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    timeout: Duration,
    pub(crate) keys: Keys,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Link {
    async fn connection(&self) -> io::Result<ConnectionManager> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    // Reconnection backs off up to a second between tries,
                    // so a Redis that is down costs little, and one that is
                    // back is found within a second.
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .map_err(|e| io_error(&e))?;
        Ok(manager.clone())
    }

    /// Runs one command.
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> io::Result<T> {
        let mut con = self.connection().await?;
        self.timed(cmd.query_async(&mut con)).await
    }

    /// Runs a pipeline (atomic if it was made so), one round trip.
    pub(crate) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> io::Result<T> {
        let mut con = self.connection().await?;
        self.timed(pipe.query_async(&mut con)).await
    }

    /// Runs a script (`EVALSHA`, loading it first after a Redis restart
    /// emptied the script cache).
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> io::Result<T> {
        let mut con = self.connection().await?;
        self.timed(invocation.invoke_async(&mut con)).await
    }

    async fn timed<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> io::Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| io_error(&e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("redis: no answer within {:?}", self.timeout),
            )),
        }
    }
}

/// The queue's reading of a Redis failure: a server that cannot be reached
/// or is not ready (loading its data after a restart) is one of the
/// connection kinds (the edge answers `451 4.3.0`); anything else is
/// `Other`.
pub(crate) fn io_error(e: &RedisError) -> io::Error {
    use io::ErrorKind as K;
    let kind = if e.is_timeout() {
        K::TimedOut
    } else if e.is_connection_refusal() {
        K::ConnectionRefused
    } else if e.is_connection_dropped() || e.is_io_error() {
        K::ConnectionReset
    } else {
        match e.kind() {
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown,
            ) => K::NotConnected,
            _ => K::Other,
        }
    };
    io::Error::new(kind, format!("redis: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        let options = RedisOptions::new("redis://:s3cret@127.0.0.1:6379/0").password("other");
        assert!(!format!("{options:?}").contains("s3cret"));
        assert!(!format!("{options:?}").contains("other"));
        assert_eq!(
            options.link().unwrap_err(),
            RedisOptionsError::PasswordTwice
        );
        let bad = RedisOptions::new("http://:s3cret@x/").link().unwrap_err();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
        assert_eq!(
            redact("redis://user:pw@h:1/0"),
            "redis://<hidden>@h:1/0".to_owned()
        );
    }

    #[test]
    fn scan_pattern_escapes_the_prefix() {
        let keys = Keys::new("a*b[c]:");
        assert_eq!(keys.message_pattern(), "a\\*b\\[c\\]:msg:*");
        assert_eq!(keys.id_of("a*b[c]:msg:42"), Some("42"));
        assert_eq!(keys.id_of("other:msg:42"), None);
    }
}
