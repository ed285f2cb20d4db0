//! `slimta queue list|show|retry|delete|stats`: operating a queue.
//!
//! A storage shared by several processes (`StorageSettings::shared`:
//! Redis, a cloud store with a notify queue) is operated on the store
//! itself: every process sees the change there (a due time, a removal),
//! so no daemon needs to be asked and none needs to run.
//!
//! Decision (see `control.rs` for the daemon's side): the command first
//! asks the running daemon through `<spool>/control.sock`. If no daemon
//! answers, it opens the spool itself with [`DiskStorage::open`], which
//! takes the spool's lock, so it can never edit a spool a daemon is using;
//! a daemon that starts meanwhile fails to open the spool until the command
//! is done (milliseconds). Offline, `retry` rewrites the stored due time to
//! now, so the next daemon start attempts the message at once.
//!
//! Exit codes: 0 done, 1 the message does not exist or the operation
//! failed, 2 a configuration or usage problem (as for the daemon).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use slimta::queue::{DiskStorage, QueueStorage};

use crate::config::Config;
use crate::control::{self, Request, Response};

/// `slimta queue ...`: list, show, retry or delete queued messages.
#[derive(Debug, Args)]
pub struct QueueCommand {
    /// The configuration the daemon runs with (default: the embedded one).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Which `[queue.NAME]` (default: the only disk queue).
    #[arg(long, value_name = "NAME", global = true)]
    pub queue: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub action: QueueAction,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// One line per message: id, sender, pending recipients, attempts, next
    /// attempt, last error.
    List,
    /// The envelope and headers of one message.
    Show {
        /// The message id (from `list`).
        id: String,
    },
    /// Make a message (or every message) due now.
    Retry {
        /// The message id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Delete a message without delivering or bouncing it.
    Delete {
        /// The message id.
        id: String,
    },
    /// Counts: messages, waiting, the oldest's age (and fsyncs, from a daemon).
    Stats,
}

impl QueueAction {
    fn request(&self) -> Request {
        match self {
            Self::List => Request::List,
            Self::Show { id } => Request::Show(id.clone()),
            Self::Retry { id: Some(id), .. } => Request::Retry(id.clone()),
            Self::Retry { id: None, .. } => Request::RetryAll,
            Self::Delete { id } => Request::Delete(id.clone()),
            Self::Stats => Request::Stats,
        }
    }
}

const EXIT_CONFIG: u8 = 2;

/// Runs the command against `config` (already loaded and checked).
pub fn run(config: &Config, queue: Option<&str>, action: &QueueAction) -> ExitCode {
    let target = match pick(config, queue) {
        Ok(target) => target,
        Err(message) => {
            eprintln!("slimta queue: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("slimta queue: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = action.request();
    let response = runtime.block_on(async {
        match target {
            Target::Spool(spool) => {
                match control::request(&control::socket_path(&spool), &request).await? {
                    Some(response) => Ok(response),
                    None => offline(&spool, &request).await,
                }
            }
            Target::Shared(section, storage) => {
                let storage = storage.open(&section)?;
                Ok(operate(&storage, &request, "").await)
            }
        }
    });
    match response {
        Ok(Response::Ok(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Response::NotFound(why)) => {
            eprintln!("slimta queue: {why}");
            ExitCode::FAILURE
        }
        Ok(Response::Err(why)) | Err(why) => {
            eprintln!("slimta queue: {why}");
            ExitCode::FAILURE
        }
    }
}

/// What `slimta queue` operates on.
enum Target<'a> {
    /// A disk spool: through its daemon's control socket, or opened here.
    Spool(PathBuf),
    /// A store shared by processes (its `queue.NAME` section), opened here.
    Shared(String, &'a crate::config::StorageConfig),
}

fn operable(storage: &crate::config::StorageConfig) -> bool {
    storage.spool().is_some() || storage.shared()
}

fn target_of<'a>(name: &str, storage: &'a crate::config::StorageConfig) -> Option<Target<'a>> {
    if let Some(spool) = storage.spool() {
        Some(Target::Spool(spool.to_path_buf()))
    } else if storage.shared() {
        Some(Target::Shared(format!("queue.{name}"), storage))
    } else {
        None
    }
}

fn pick<'a>(config: &'a Config, queue: Option<&str>) -> Result<Target<'a>, String> {
    let operable_queues: Vec<&String> = config
        .queues
        .iter()
        .filter(|(_, q)| operable(&q.storage))
        .map(|(name, _)| name)
        .collect();
    match queue {
        Some(name) => match config.queues.get(name).map(|q| &q.storage) {
            Some(storage) => target_of(name, storage).ok_or_else(|| {
                format!(
                    "queue \"{name}\" is a {} queue, which keeps nothing to operate on",
                    storage.kind.name
                )
            }),
            None => Err(format!("no queue named \"{name}\"")),
        },
        None => match operable_queues.as_slice() {
            [name] => Ok(target_of(name, &config.queues[name.as_str()].storage)
                .expect("filtered as operable")),
            [] => Err("the configuration has no disk or shared queue".into()),
            _ => Err(format!(
                "several queues ({}); choose one with --queue",
                operable_queues
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    }
}

/// The request carried out on the spool itself, with no daemon running.
async fn offline(spool: &Path, request: &Request) -> Result<Response, String> {
    if !spool.join("msg").is_dir() {
        return Err(format!("{} is not a spool (no msg/)", spool.display()));
    }
    let path = spool.to_owned();
    let storage = tokio::task::spawn_blocking(move || DiskStorage::open(path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                format!(
                    "the spool {} is locked by a daemon that does not answer on {}",
                    spool.display(),
                    control::SOCKET_NAME
                )
            } else {
                format!("cannot open the spool {}: {e}", spool.display())
            }
        })?;
    Ok(operate(&storage, request, " (at the next start)").await)
}

/// Carries out `request` on `storage` itself; `due_suffix` tells when a
/// retried message will be attempted.
async fn operate<S: QueueStorage>(storage: &S, request: &Request, due_suffix: &str) -> Response {
    let result = match request {
        Request::List => storage.list().await.map(control::format_list),
        Request::Show(id) => storage.get(id).await.map(|s| control::format_show(id, &s)),
        Request::Retry(id) => storage
            .set_timestamp(id, SystemTime::now())
            .await
            .map(|()| format!("{id}: due now{due_suffix}\n")),
        Request::RetryAll => async {
            let entries = storage.list().await?;
            for e in &entries {
                storage.set_timestamp(&e.id, SystemTime::now()).await?;
            }
            Ok(entries.len())
        }
        .await
        .map(|n| format!("{n} messages due now{due_suffix}\n")),
        Request::Delete(id) => match storage.get(id).await {
            Ok(_) => storage
                .remove(id)
                .await
                .map(|()| format!("{id}: deleted\n")),
            Err(e) => Err(e),
        },
        Request::Stats => storage.list().await.map(|entries| {
            let stats = slimta::queue::QueueStats {
                messages: entries.len(),
                waiting: entries.len(),
                oldest: entries.iter().map(|e| e.received).min(),
                // Destinations are judged by a running queue only.
                dead: Vec::new(),
            };
            control::format_stats(&stats, &storage.counters())
        }),
    };
    match result {
        Ok(text) => Response::Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Response::NotFound(e.to_string()),
        Err(e) => Response::Err(e.to_string()),
    }
}
