//! `type = "redis"`: a queue in Redis (`slimta_redis`), shared by every
//! slimta process configured with the same Redis and prefix: intake on
//! any, delivery by any, `slimta queue` operating on the store itself.
//!
//! Keys: `url` (required; `redis://host:port/db`, `rediss://` for TLS, a
//! password in the URL or in `password_file`, never both), `prefix`
//! (default `"slimta:"`), `lease` (default `"5m"`: how long a process holds
//! a message it attempts before another may take it; longer than the
//! relay's timeouts allow an attempt to take, or a slow attempt is made
//! twice), `timeout` (default `"10s"`, every call to Redis), `tls_ca_file`
//! (optional: for `rediss://` with a private CA, the PEM file of the CAs
//! to trust instead of the system's).
//!
//! Decisions:
//! - Durable: Redis must run with `appendonly yes` and `appendfsync always`
//!   (see `slimta_redis`), which slimta cannot check on a managed server.
//! - The password is read when the storage is opened and never logged; the
//!   URL in messages has its userinfo hidden.
//! - The relay's per-destination limits (`destinations`) belong to the
//!   local dispatcher; the Redis dispatcher admits every message, bounded
//!   by each process's `max_concurrency`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slimta::queue::{DestinationSettings, DynDispatch, DynStorage};
use slimta_redis::{RedisDispatch, RedisOptions, RedisStorage, redact};

use super::{StorageKind, StorageSettings};
use crate::config::fields::{Errors, Section, non_empty_string, positive_duration};

/// `[queue.NAME]` keys of a Redis queue.
#[derive(PartialEq, Eq)]
pub(crate) struct Redis {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) lease: Duration,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.ca_file)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Redis {
    fn options(&self, section: &str) -> Result<RedisOptions, String> {
        let mut options = RedisOptions::new(&self.url)
            .prefix(&self.prefix)
            .lease(self.lease)
            .timeout(self.timeout);
        if let Some(path) = &self.password_file {
            let password = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "{section}.password_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            options = options.password(password.trim_end_matches(['\r', '\n']));
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                format!("{section}.tls_ca_file: cannot read {}: {e}", path.display())
            })?;
            options = options.tls_ca(pem);
        }
        options.check().map_err(|e| format!("{section}.url: {e}"))?;
        Ok(options)
    }
}

impl StorageSettings for Redis {
    fn open(&self, section: &str) -> Result<Arc<dyn DynStorage>, String> {
        let storage = RedisStorage::open(&self.options(section)?)
            .map_err(|e| format!("{section}.url: {e}"))?;
        Ok(Arc::new(storage))
    }

    fn durable(&self) -> bool {
        true
    }

    fn dispatch(
        &self,
        section: &str,
        destinations: DestinationSettings,
    ) -> Result<Arc<dyn DynDispatch>, String> {
        let _ = destinations;
        let dispatch = RedisDispatch::open(&self.options(section)?)
            .map_err(|e| format!("{section}.url: {e}"))?;
        Ok(dispatch)
    }

    fn shared(&self) -> bool {
        true
    }
}

pub(super) const REDIS: StorageKind = StorageKind {
    name: "redis",
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let url = s.required(errors, "url", non_empty_string);
        let prefix = s.or(errors, "prefix", "slimta:".to_owned(), non_empty_string);
        let password_file = s.opt(errors, "password_file", non_empty_string);
        let ca_file = s.opt(errors, "tls_ca_file", non_empty_string);
        let lease = s.or(errors, "lease", Duration::from_secs(300), positive_duration);
        let timeout = s.or(
            errors,
            "timeout",
            Duration::from_secs(10),
            positive_duration,
        );
        let url = url?;
        let mut check = RedisOptions::new(&url);
        if password_file.is_some() {
            // Any password: the check is that the URL has none.
            check = check.password("-");
        }
        if let Err(e) = check.check() {
            errors.push(s.key_path("url"), e.to_string());
            return None;
        }
        Some(Arc::new(Redis {
            url,
            prefix,
            password_file: password_file.map(PathBuf::from),
            ca_file: ca_file.map(PathBuf::from),
            lease,
            timeout,
        }) as Arc<dyn StorageSettings>)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn file(queue: &str) -> String {
        format!(
            r#"
[edge.in]
type = "smtp"
listen = ["127.0.0.1:2525"]
queue = "main"

[queue.main]
{queue}
relay = "out"

[relay.out]
type = "blackhole"
"#
        )
    }

    fn errors_of(queue: &str) -> Vec<String> {
        match crate::config::parse(&file(queue)) {
            Ok(config) => panic!("expected errors, parsed: {config:#?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn reads_every_key_with_defaults() {
        let config = crate::config::parse(&file(
            "type = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"",
        ))
        .unwrap();
        let storage = &config.queues["main"].storage;
        assert_eq!(
            storage.settings_as::<Redis>(),
            Some(&Redis {
                url: "redis://127.0.0.1:6379/0".into(),
                prefix: "slimta:".into(),
                password_file: None,
                ca_file: None,
                lease: Duration::from_secs(300),
                timeout: Duration::from_secs(10),
            })
        );
        assert!(storage.durable() && storage.shared());
        assert_eq!(storage.spool(), None);
        let config = crate::config::parse(&file(
            "type = \"redis\"\nurl = \"rediss://r.example.test:6380/2\"\nprefix = \"mx1:\"\n\
             password_file = \"/etc/slimta/redis.pw\"\nlease = \"3s\"\ntimeout = \"2s\"\n\
             tls_ca_file = \"/etc/slimta/redis-ca.pem\"",
        ))
        .unwrap();
        assert_eq!(
            config.queues["main"].storage.settings_as::<Redis>(),
            Some(&Redis {
                url: "rediss://r.example.test:6380/2".into(),
                prefix: "mx1:".into(),
                password_file: Some("/etc/slimta/redis.pw".into()),
                ca_file: Some("/etc/slimta/redis-ca.pem".into()),
                lease: Duration::from_secs(3),
                timeout: Duration::from_secs(2),
            })
        );
    }

    #[test]
    fn bad_keys_are_reported_and_passwords_never_shown() {
        assert_eq!(
            errors_of("type = \"redis\""),
            ["queue.main.url: missing required key"]
        );
        let twice = errors_of(
            "type = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1/0\"\npassword_file = \"/pw\"",
        );
        assert_eq!(
            twice,
            ["queue.main.url: a password in the URL and a separate password: give one"]
        );
        let bad = errors_of("type = \"redis\"\nurl = \"http://:hunter2@127.0.0.1/\"");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0]
                .starts_with("queue.main.url: not a usable Redis URL: http://<hidden>@127.0.0.1/"),
            "{bad:?}"
        );
        assert!(!bad[0].contains("hunter2"));
        let config = crate::config::parse(&file(
            "type = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1/0\"",
        ))
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(
            errors_of("type = \"redis\"\nurl = \"redis://h/0\"\nlease = \"0s\""),
            ["queue.main.lease: must be longer than zero"]
        );
    }

    #[test]
    fn an_unreadable_password_file_is_an_open_error() {
        let settings = Redis {
            url: "redis://127.0.0.1:1/0".into(),
            prefix: "p:".into(),
            password_file: Some("/nonexistent/redis.pw".into()),
            ca_file: None,
            lease: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let e = settings.open("queue.main").err().unwrap();
        assert!(
            e.starts_with("queue.main.password_file: cannot read /nonexistent/redis.pw"),
            "{e}"
        );
    }
}
