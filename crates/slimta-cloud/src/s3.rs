//! [`S3Backend`]: the [`ObjectBackend`] over S3 (AWS, SeaweedFS, moto, any
//! S3 API), through the `object_store` crate's `AmazonS3`.
//!
//! Decisions:
//! - Create-only puts are `PutMode::Create` (`If-None-Match: *`), which AWS
//!   S3 and SeaweedFS enforce; both `AlreadyExists` and `Precondition`
//!   answers mean the race was lost.
//! - Path-style requests to an explicit endpoint (a local server), virtual
//!   hosts only for AWS itself (no endpoint given).
//! - Failures fast enough for an edge waiting to answer: a connect timeout
//!   of a few seconds, a request timeout, and few client-side retries, all
//!   bounded by the configured timeout; a failure to connect becomes
//!   `ConnectionRefused`, a timeout `TimedOut` (the queue answers new mail
//!   `451 4.3.0` and retries its records later).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use crate::credentials::AwsKeys;
use crate::object::{ObjectBackend, ObjectFuture};

/// Where and how to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The endpoint of an S3-compatible server (`http://127.0.0.1:8333`);
    /// `None`: AWS.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` for most local servers).
    pub region: String,
    /// The keys.
    pub keys: AwsKeys,
    /// The timeout of one request, retries included.
    pub timeout: Duration,
}

/// A bucket on S3.
#[derive(Clone, Debug)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
}

impl S3Backend {
    /// A client for the bucket (no request is made yet).
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the settings are not usable (a bad endpoint URL).
    pub fn new(settings: &S3Settings) -> io::Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.keys.access_key_id)
            .with_secret_access_key(settings.keys.secret_access_key.expose())
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(settings.timeout)
                    .with_connect_timeout(settings.timeout.min(Duration::from_secs(3)))
                    .with_allow_http(true),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: settings.timeout,
            });
        if let Some(token) = &settings.keys.session_token {
            builder = builder.with_token(token.expose());
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let store = builder
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
        })
    }
}

/// The io kind the queue acts on for an `object_store` failure.
fn to_io(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        _ => transport_kind(&e).unwrap_or(io::ErrorKind::Other),
    };
    io::Error::new(kind, e)
}

/// A connection failure somewhere in `e`'s causes.
fn transport_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(http) = c.downcast_ref::<HttpError>() {
            match http.kind() {
                HttpErrorKind::Connect => return Some(io::ErrorKind::ConnectionRefused),
                HttpErrorKind::Timeout => return Some(io::ErrorKind::TimedOut),
                HttpErrorKind::Interrupted | HttpErrorKind::Request => {
                    return Some(io::ErrorKind::ConnectionReset);
                }
                _ => {}
            }
        }
        if let Some(io) = c.downcast_ref::<io::Error>()
            && io.kind() != io::ErrorKind::Other
        {
            return Some(io.kind());
        }
        cause = c.source();
    }
    None
}

/// The directory part of `prefix` (`object_store` lists whole path
/// segments) and whether keys must be filtered by the rest.
fn list_dir(prefix: &str) -> Option<Path> {
    let dir = match prefix.rfind('/') {
        Some(at) => &prefix[..at],
        None => "",
    };
    (!dir.is_empty()).then(|| Path::from(dir))
}

impl ObjectBackend for S3Backend {
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            self.store
                .put_opts(&Path::from(key), PutPayload::from(body), options)
                .await
                .map_err(to_io)?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let got = self.store.get(&Path::from(key)).await.map_err(to_io)?;
            Ok(got.bytes().await.map_err(to_io)?.to_vec())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            match self.store.delete(&Path::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<String>> {
        Box::pin(async move {
            let dir = list_dir(prefix);
            let metas: Vec<_> = self
                .store
                .list(dir.as_ref())
                .try_collect()
                .await
                .map_err(to_io)?;
            Ok(metas
                .into_iter()
                .map(|m| m.location.to_string())
                .filter(|k| k.starts_with(prefix))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_by_the_directory_of_the_prefix() {
        assert_eq!(list_dir("queue/meta/"), Some(Path::from("queue/meta")));
        assert_eq!(list_dir("queue/meta/ab"), Some(Path::from("queue/meta")));
        assert_eq!(list_dir("meta"), None);
        assert_eq!(list_dir(""), None);
    }
}
