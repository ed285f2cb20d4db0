//! `type = "cloud"`: the queue in an object store (`store = "s3"`, or
//! `"swift"` where built in), optionally shared by many processes through
//! a message queue (`notify = { type = "sqs", ... }`, or `"zaqar"`) that
//! announces work; see the crate `slimta-cloud`.
//!
//! Keys: `store`, `bucket` (required), `prefix` (default `"queue/"`, a
//! `/` is added if missing), `endpoint`, `region` (default `us-east-1`),
//! `credentials_file` (else the `AWS_*` environment variables), `timeout`
//! of every remote call (default 30 s), `lease` of a shared queue's
//! attempt (default 5 min: longer than any attempt; a dead process's
//! messages are taken over after it), `notify`.
//!
//! With `store = "swift"`: `endpoint` is the v1 auth URL (required),
//! `bucket` the container, `credentials_file` holds `swift_user` and
//! `swift_key` (else `OS_USERNAME`, `OS_PASSWORD`). `notify = { type =
//! "zaqar", url, queue }` needs a `lease` of at least 60 s (Zaqar's
//! shortest claim).
//!
//! Decision: the store, the notifier and the dispatcher are built once,
//! at the first of `open` and `dispatch` (the storage announces new
//! messages on the same notifier the dispatcher takes them from).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use slimta::queue::{DestinationSettings, DynDispatch, DynStorage, LocalDispatch};
use slimta_cloud::credentials::AwsKeys;
use slimta_cloud::dispatch::DueTimes;
use slimta_cloud::{
    CloudDispatch, CloudStorage, Notifier, ObjectBackend, S3Backend, S3Settings, SqsNotifier,
    SqsSettings, SwiftBackend, SwiftCredentials, ZaqarNotifier,
};

use super::{StorageKind, StorageSettings};
use crate::config::fields::{Errors, Section, choice, non_empty_string, positive_duration};

/// `[queue.NAME]` keys of a cloud queue.
#[derive(Debug)]
pub(crate) struct Cloud {
    pub(crate) store: Store,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) endpoint: Option<String>,
    pub(crate) region: String,
    pub(crate) credentials_file: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) notify: Option<Notify>,
    built: OnceLock<Built>,
}

/// Where the objects are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Store {
    S3,
    Swift,
}

/// Who announces work.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Notify {
    Sqs {
        queue_url: String,
        endpoint: Option<String>,
    },
    Zaqar {
        url: String,
        queue: String,
    },
}

struct Built {
    storage: Arc<dyn DynStorage>,
    due: Arc<dyn DueTimes>,
    notifier: Option<Arc<dyn Notifier>>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Built")
    }
}

impl Cloud {
    fn keys(&self, section: &str) -> Result<AwsKeys, String> {
        AwsKeys::load(self.credentials_file.as_deref()).map_err(|e| {
            let key = if self.credentials_file.is_some() {
                "credentials_file"
            } else {
                "credentials_file (or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            };
            format!("{section}.{key}: {e}")
        })
    }

    fn notifier(&self, section: &str) -> Result<Option<Arc<dyn Notifier>>, String> {
        match &self.notify {
            None => Ok(None),
            Some(Notify::Sqs {
                queue_url,
                endpoint,
            }) => {
                let settings = SqsSettings {
                    queue_url: queue_url.clone(),
                    endpoint: endpoint.clone(),
                    region: self.region.clone(),
                    keys: self.keys(section)?,
                    timeout: self.timeout,
                };
                Ok(Some(Arc::new(SqsNotifier::new(&settings))))
            }
            Some(Notify::Zaqar { url, queue }) => {
                let zaqar = ZaqarNotifier::builder(url.as_str(), queue.as_str())
                    .timeout(self.timeout)
                    .build()
                    .map_err(|e| format!("{section}.notify.url: {e}"))?;
                Ok(Some(Arc::new(zaqar)))
            }
        }
    }

    fn over<O: ObjectBackend>(&self, objects: O, notifier: Option<Arc<dyn Notifier>>) -> Built {
        let mut storage =
            CloudStorage::new(objects, self.prefix.clone()).with_timeout(self.timeout);
        if let Some(notifier) = &notifier {
            storage = storage.with_notifier(notifier.clone(), self.lease);
        }
        Built {
            storage: Arc::new(storage.clone()),
            due: Arc::new(storage),
            notifier,
        }
    }

    fn build(&self, section: &str) -> Result<&Built, String> {
        if let Some(built) = self.built.get() {
            return Ok(built);
        }
        let notifier = self.notifier(section)?;
        let built = match self.store {
            Store::S3 => {
                let settings = S3Settings {
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                    region: self.region.clone(),
                    keys: self.keys(section)?,
                    timeout: self.timeout,
                };
                let s3 =
                    S3Backend::new(&settings).map_err(|e| format!("{section}.endpoint: {e}"))?;
                self.over(s3, notifier)
            }
            Store::Swift => {
                let auth_url = self.endpoint.as_deref().ok_or_else(|| {
                    format!("{section}.endpoint: swift needs its auth URL (…/auth/v1.0)")
                })?;
                let credentials = match &self.credentials_file {
                    Some(path) => SwiftCredentials::from_file(path)
                        .map_err(|e| format!("{section}.credentials_file: {e}"))?,
                    None => SwiftCredentials::from_env().map_err(|e| {
                        format!("{section}.credentials_file (or OS_USERNAME, OS_PASSWORD): {e}")
                    })?,
                };
                let swift = SwiftBackend::builder(auth_url, self.bucket.as_str(), credentials)
                    .timeout(self.timeout)
                    .build()
                    .map_err(|e| format!("{section}.endpoint: {e}"))?;
                self.over(swift, notifier)
            }
        };
        // A race between two first calls keeps one of two equal builds.
        let _ = self.built.set(built);
        Ok(self.built.get().expect("set above"))
    }
}

impl StorageSettings for Cloud {
    fn open(&self, section: &str) -> Result<Arc<dyn DynStorage>, String> {
        Ok(self.build(section)?.storage.clone())
    }

    fn durable(&self) -> bool {
        true
    }

    fn dispatch(
        &self,
        section: &str,
        destinations: DestinationSettings,
    ) -> Result<Arc<dyn DynDispatch>, String> {
        let built = self.build(section)?;
        match &built.notifier {
            Some(notifier) => Ok(Arc::new(CloudDispatch::new(
                notifier.clone(),
                built.due.clone(),
                self.lease,
            ))),
            None => Ok(Arc::new(LocalDispatch::new(destinations))),
        }
    }

    fn shared(&self) -> bool {
        self.notify.is_some()
    }
}

/// `store = "swift"` (its keys are the common ones).
fn swift_store(_: &Section<'_>, _: &mut Errors) -> Option<Store> {
    Some(Store::Swift)
}

/// `notify.type = "zaqar"`: `url` and `queue`.
fn zaqar_notify(n: &mut Section<'_>, errors: &mut Errors) -> Option<Notify> {
    let url = n.required(errors, "url", non_empty_string);
    let queue = n.required(errors, "queue", non_empty_string);
    Some(Notify::Zaqar {
        url: url?,
        queue: queue?,
    })
}

fn read_notify(mut n: Section<'_>, errors: &mut Errors) -> Option<Notify> {
    let notify = match n.required(errors, "type", choice(&["sqs", "zaqar"])) {
        Some("sqs") => {
            let queue_url = n.required(errors, "queue_url", non_empty_string);
            let endpoint = n.opt(errors, "endpoint", non_empty_string);
            queue_url.map(|queue_url| Notify::Sqs {
                queue_url,
                endpoint,
            })
        }
        Some(_) => zaqar_notify(&mut n, errors),
        None => None,
    };
    n.finish(errors, &[], None);
    notify
}

pub(super) const CLOUD: StorageKind = StorageKind {
    name: "cloud",
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let store = match s.required(errors, "store", choice(&["s3", "swift"])) {
            Some("s3") => Some(Store::S3),
            Some(_) => swift_store(s, errors),
            None => None,
        };
        let bucket = s.required(errors, "bucket", non_empty_string);
        let mut prefix = s.or(errors, "prefix", "queue/".to_owned(), non_empty_string);
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let endpoint = s.opt(errors, "endpoint", non_empty_string);
        let region = s.or(errors, "region", "us-east-1".to_owned(), non_empty_string);
        let credentials_file = s
            .opt(errors, "credentials_file", non_empty_string)
            .map(PathBuf::from);
        let timeout = s.or(
            errors,
            "timeout",
            Duration::from_secs(30),
            positive_duration,
        );
        let lease = s.or(errors, "lease", Duration::from_secs(300), positive_duration);
        let notify = match s.table(errors, "notify") {
            Some(n) => Some(read_notify(n, errors)?),
            None => None,
        };
        if matches!(notify, Some(Notify::Zaqar { .. })) && lease < Duration::from_secs(60) {
            errors.push(s.key_path("lease"), "zaqar's shortest claim is 60s");
        }
        Some(Arc::new(Cloud {
            store: store?,
            bucket: bucket?,
            prefix,
            endpoint,
            region,
            credentials_file,
            timeout,
            lease,
            notify,
            built: OnceLock::new(),
        }) as Arc<dyn super::StorageSettings>)
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn queue(keys: &str) -> String {
        format!(
            r#"
[edge.in]
type = "smtp"
listen = ["127.0.0.1:2525"]
queue = "main"

[queue.main]
type = "cloud"
relay = "out"
{keys}

[relay.out]
type = "blackhole"
"#
        )
    }

    fn errors_of(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn reads_every_key_of_the_issue() {
        let config = parse(&queue(
            r#"store = "s3"
bucket = "slimta-queue"
prefix = "queue"
endpoint = "http://127.0.0.1:8333"
region = "eu-west-1"
credentials_file = "/etc/slimta/cloud.toml"
timeout = "5s"
lease = "1m"
notify = { type = "sqs", queue_url = "http://127.0.0.1:5000/123456789012/slimta", endpoint = "http://127.0.0.1:5000" }"#,
        ))
        .unwrap();
        let storage = &config.queues["main"].storage;
        let cloud = storage.settings_as::<Cloud>().unwrap();
        assert_eq!(cloud.store, Store::S3);
        assert_eq!(cloud.bucket, "slimta-queue");
        assert_eq!(cloud.prefix, "queue/");
        assert_eq!(cloud.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(cloud.region, "eu-west-1");
        assert_eq!(
            cloud.credentials_file.as_deref(),
            Some(std::path::Path::new("/etc/slimta/cloud.toml"))
        );
        assert_eq!(
            (cloud.timeout, cloud.lease),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
        assert_eq!(
            cloud.notify,
            Some(Notify::Sqs {
                queue_url: "http://127.0.0.1:5000/123456789012/slimta".into(),
                endpoint: Some("http://127.0.0.1:5000".into()),
            })
        );
        assert!(storage.shared());
        assert!(storage.durable());
    }

    #[test]
    fn defaults_and_no_notify_is_a_single_process_store() {
        let config = parse(&queue("store = \"s3\"\nbucket = \"b\"")).unwrap();
        let storage = &config.queues["main"].storage;
        let cloud = storage.settings_as::<Cloud>().unwrap();
        assert_eq!(cloud.prefix, "queue/");
        assert_eq!(cloud.region, "us-east-1");
        assert_eq!(cloud.endpoint, None);
        assert_eq!(
            (cloud.timeout, cloud.lease),
            (Duration::from_secs(30), Duration::from_secs(300))
        );
        assert!(!storage.shared());
    }

    #[test]
    fn bad_files_say_which_key() {
        assert_eq!(
            errors_of(&queue("bucket = \"b\"")),
            ["queue.main.store: missing required key"]
        );
        assert_eq!(
            errors_of(&queue("store = \"s3\"")),
            ["queue.main.bucket: missing required key"]
        );
        assert_eq!(
            errors_of(&queue(
                "store = \"s3\"\nbucket = \"b\"\nnotify = { type = \"zaqar\", url = \"http://x\" }"
            )),
            ["queue.main.notify.queue: missing required key"]
        );
        assert_eq!(
            errors_of(&queue(
                "store = \"swift\"\nbucket = \"b\"\nlease = \"30s\"\nnotify = { type = \"zaqar\", url = \"http://x\", queue = \"q\" }"
            )),
            ["queue.main.lease: zaqar's shortest claim is 60s"]
        );
        assert_eq!(
            errors_of(&queue(
                "store = \"s3\"\nbucket = \"b\"\nnotify = { type = \"sqs\" }"
            )),
            ["queue.main.notify.queue_url: missing required key"]
        );
        let lease = errors_of(&queue("store = \"s3\"\nbucket = \"b\"\nlease = \"0s\""));
        assert!(lease[0].starts_with("queue.main.lease:"), "{lease:?}");
    }

    #[test]
    fn reads_swift_and_zaqar() {
        let config = parse(&queue(
            r#"store = "swift"
bucket = "slimta-queue"
endpoint = "http://127.0.0.1:8080/auth/v1.0"
notify = { type = "zaqar", url = "http://127.0.0.1:8889", queue = "slimta" }"#,
        ))
        .unwrap();
        let storage = &config.queues["main"].storage;
        let cloud = storage.settings_as::<Cloud>().unwrap();
        assert_eq!(cloud.store, Store::Swift);
        assert_eq!(
            cloud.notify,
            Some(Notify::Zaqar {
                url: "http://127.0.0.1:8889".into(),
                queue: "slimta".into(),
            })
        );
        assert!(storage.shared());
        // Without an auth URL it cannot open.
        let config = parse(&queue("store = \"swift\"\nbucket = \"b\"")).unwrap();
        let Err(e) = config.queues["main"].storage.open("queue.main") else {
            panic!("opened without an auth URL");
        };
        assert!(e.starts_with("queue.main.endpoint: "), "{e}");
    }

    #[test]
    fn missing_credentials_are_an_open_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("none.toml");
        let config = parse(&queue(&format!(
            "store = \"s3\"\nbucket = \"b\"\ncredentials_file = \"{}\"",
            file.display()
        )))
        .unwrap();
        let Err(e) = config.queues["main"].storage.open("queue.main") else {
            panic!("opened without credentials");
        };
        assert!(e.starts_with("queue.main.credentials_file: "), "{e}");
    }
}
