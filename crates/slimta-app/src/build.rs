//! Turns a checked [`Config`] into running edges, queues and relays.
//!
//! This is the only place that knows both the config schema and the
//! library; everything here is wiring. Relays and storages are picked at
//! run time by their `type` and built by their kind (`kinds/relay/`,
//! `kinds/storage/`), so relays are `Arc<dyn DynRelay>` and every queue is
//! one type, [`AppQueue`] = `Queue<Arc<dyn DynStorage>, _, Arc<dyn
//! DynDispatch>>`, whatever its storage: a new storage kind needs no change
//! here. The dispatcher comes from the storage's kind too
//! (`StorageSettings::dispatch`): the in-process `LocalDispatch` unless the
//! storage is shared by several processes and brings its own leases. The price is one
//! dynamic call (and one boxed future) per storage operation, nothing
//! measurable next to what the operation does (an fsync, a network round
//! trip). What differs between storages at run time is asked of the
//! configured kind, never of the running storage by downcasting: whether
//! it is durable (how the queue stops) and its spool directory, if any
//! (the control socket, the privilege drop); backend figures come through
//! `QueueStorage::counters`.
//!
//! Shutdown order: edges stop accepting and drain their sessions (each edge
//! waits at most its drain timeout); then every queue's scheduler stops,
//! all queues at once. A queue whose storage is not durable (memory) first
//! gets up to `MEMORY_DRAIN` to deliver what it holds, because whatever is
//! still in memory at exit is lost (use `type = "disk"` for durability). A
//! durable queue starts no new attempt: its messages are stored and resume
//! at the next start. It gives the attempts in progress up to
//! `ATTEMPT_GRACE` to finish and record their outcome, so a message
//! delivered in the last moment is not delivered again after the restart
//! (one stuck on a slow relay past that is attempted again, which is the
//! at-least-once rule). Then it logs its storage's fsync count, when the
//! storage counts them (with the number of messages written, the figure
//! that shows how well group commit works).
//!
//! Each queue with a spool (disk) also serves its control socket
//! (`control.rs`) while the daemon runs; it is removed at shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use slimta::DynRelay;
use slimta::edge::credentials::Credentials;
use slimta::edge::http::HttpEdge;
use slimta::edge::proxy::ProxyMode;
use slimta::edge::reverse_dns::ReverseDns;
use slimta::edge::tls::{ReloadableTls, TlsConfig};
use slimta::edge::{AcceptDomains, DynValidators, SmtpEdge, ValidatorChain, listener};
use slimta::queue::backoff::ExponentialBackoff;
use slimta::queue::{DestinationSettings, DynDispatch, DynStorage, Queue, QueueStorage};
use slimta::smtp::ServerConfig;
use slimta::smtp::sasl::Mechanism;
use tokio::sync::watch;

use crate::config::{Config, EdgeConfig, EdgeKind, ProxyProtocol, QueueConfig, StorageConfig};
use crate::file_reloads::FileReloads;
use crate::kinds::check::CheckContext;
use crate::kinds::policy::BuildContext;
use crate::kinds::relay::BuildContext as RelayContext;

/// How long a client's reverse DNS lookup may delay its banner.
const REVERSE_DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a memory queue may keep delivering after the edges stopped.
const MEMORY_DRAIN: Duration = Duration::from_secs(10);

/// How long attempts in progress may take to finish at shutdown.
const ATTEMPT_GRACE: Duration = Duration::from_secs(10);

type AppRelay = Arc<dyn DynRelay>;

/// A queue of the app, whatever its storage kind.
pub type AppQueue = Queue<Arc<dyn DynStorage>, AppRelay, Arc<dyn DynDispatch>>;

/// Stops `queue` (`name`) as its storage kind asks: one that does not keep
/// messages over a restart first delivers what it holds (bounded), a
/// durable one lets the attempts in progress finish (bounded).
async fn stop(queue: &AppQueue, name: &str, kind: &str, durable: bool) {
    if !durable {
        let deadline = tokio::time::Instant::now() + MEMORY_DRAIN;
        while stored(queue).await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = stored(queue).await;
        if left > 0 {
            tracing::warn!(
                queue = name,
                messages = left,
                "{kind} queue stopped with undelivered messages; they are lost"
            );
        }
        // The wait above included the attempts in progress.
        queue.stop();
        return;
    }
    let running = queue.shutdown(ATTEMPT_GRACE).await;
    if running > 0 {
        tracing::warn!(
            queue = name,
            attempts = running,
            "delivery attempts still running at shutdown; their messages are attempted again at the next start"
        );
    }
    let fsyncs = queue
        .storage()
        .counters()
        .into_iter()
        .find_map(|(counter, value)| (counter == "fsyncs").then_some(value));
    tracing::info!(queue = name, fsyncs, "{kind} queue stopped");
}

/// How many messages `queue`'s storage holds (0 when it cannot say).
async fn stored(queue: &AppQueue) -> usize {
    queue.storage().load().await.map_or(0, |ids| ids.len())
}

/// Serves `<spool>/control.sock` for a queue whose storage has a spool
/// (see `control.rs`); `None` for one without.
fn serve_control(
    name: &str,
    queue: &AppQueue,
    storage: &StorageConfig,
) -> Result<Option<ControlSocket>, String> {
    let Some(spool) = storage.spool() else {
        return Ok(None);
    };
    let path = crate::control::socket_path(spool);
    let listener = crate::control::bind(&path).map_err(|e| {
        format!(
            "queue.{name}: cannot serve the control socket {}: {e}",
            path.display()
        )
    })?;
    tracing::info!(queue = name, socket = %path.display(), "control socket ready");
    let task = tokio::spawn(crate::control::serve(listener, queue.clone()));
    Ok(Some(ControlSocket { path, task }))
}

/// A served control socket, closed and removed at shutdown.
struct ControlSocket {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An edge built and bound, waiting for the privilege drop before it
/// starts accepting.
enum Serving {
    Http(HttpEdge<AppQueue>, Vec<tokio::net::TcpListener>),
    Smtp(
        SmtpEdge<AppQueue, ValidatorChain>,
        Vec<tokio::net::TcpListener>,
        Vec<tokio::net::UnixListener>,
    ),
}

/// Gives the spools and unix sockets to `target`, then becomes it (see
/// `privileges.rs`).
fn drop_privileges(config: &Config, target: &crate::privileges::Target) -> Result<(), String> {
    let spools = config
        .queues
        .iter()
        .filter_map(|(name, q)| Some((format!("queue.{name}.path"), q.storage.spool()?)));
    let sockets = config.edges.iter().flat_map(|(name, e)| {
        e.listen_unix
            .iter()
            .map(move |path| (format!("edge.{name}.listen"), path.as_path()))
    });
    for (key, path) in spools.chain(sockets) {
        crate::privileges::give(path, target).map_err(|e| {
            format!(
                "{key}: cannot give {} to {}: {e}",
                path.display(),
                target.describe()
            )
        })?;
    }
    crate::privileges::drop_to(target).map_err(|e| format!("process.user: {e}"))?;
    tracing::info!(to = %target.describe(), "dropped privileges");
    Ok(())
}

/// Runs everything `config` describes until `shutdown` becomes `true`.
///
/// # Errors
///
/// When something cannot be started (a listener cannot bind, a spool
/// cannot be opened); the message is printed and the process exits 1.
pub async fn run(
    config: &Config,
    config_path: Option<&std::path::Path>,
    shutdown: watch::Receiver<bool>,
    mut reloads: watch::Receiver<u64>,
) -> Result<(), String> {
    let hostname = &config.process.hostname;
    let privileges = crate::privileges::resolve(
        config.process.user.as_deref(),
        config.process.group.as_deref(),
    )?;
    let resolver = build_resolver(config)?;
    let files = FileReloads::default();
    let mut relays: BTreeMap<&str, AppRelay> = BTreeMap::new();
    for (name, relay) in &config.relays {
        let context = RelayContext {
            section: &format!("relay.{name}"),
            hostname,
            resolver: resolver.as_ref(),
        };
        relays.insert(name, relay.build(&context)?);
    }
    let mut queues: BTreeMap<&str, AppQueue> = BTreeMap::new();
    let mut controls = Vec::new();
    for (name, queue) in &config.queues {
        let relay = relays
            .get(queue.relay.as_str())
            .cloned()
            .ok_or_else(|| format!("queue.{name}.relay: no relay named {:?}", queue.relay))?;
        let destinations = config
            .relays
            .get(queue.relay.as_str())
            .map(|r| r.destinations.clone())
            .unwrap_or_default();
        let context = BuildContext {
            hostname,
            dns: &config.dns,
            files: &files,
        };
        let built = build_queue(name, queue, relay, destinations, &context)?;
        if let Some(socket) = serve_control(name, &built, &queue.storage)? {
            controls.push(socket);
        }
        queues.insert(name, built);
    }
    let mut serving = Vec::new();
    let mut handles = BTreeMap::new();
    for (name, edge) in &config.edges {
        let queue = queues
            .get(edge.queue.as_str())
            .cloned()
            .ok_or_else(|| format!("edge.{name}.queue: no queue named {:?}", edge.queue))?;
        let tls = match &edge.tls {
            Some(files) => {
                let tls = ReloadableTls::new(TlsConfig::new(&files.cert, &files.key))
                    .map_err(|e| format!("edge.{name}.tls: {e}"))?;
                Some(tls)
            }
            None => None,
        };
        let credentials = match &edge.auth {
            Some(auth) => Some(
                Credentials::from_map(auth.users.clone())
                    .map_err(|e| format!("edge.{name}.auth.users: {e}"))?,
            ),
            None => None,
        };
        let accept_domains = AcceptDomains::new(&edge.accept_domains);
        let check_context = CheckContext {
            hostname,
            dns: &config.dns,
            files: &files,
        };
        let checks = build_checks(edge, &check_context).map_err(|e| format!("edge.{name}: {e}"))?;
        handles.insert(
            name.clone(),
            crate::reload::EdgeHandles {
                accept_domains: accept_domains.clone(),
                credentials: credentials.clone(),
                tls: tls.clone(),
            },
        );
        let mut listeners = Vec::new();
        for addr in &edge.listen {
            let listener = listener::bind(*addr)
                .await
                .map_err(|e| format!("edge.{name}.listen: cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(edge = %name, address = %local, "listening");
            listeners.push(listener);
        }
        match edge.kind {
            EdgeKind::Http => {
                let http = build_http_edge(
                    edge,
                    queue,
                    hostname,
                    tls,
                    credentials,
                    accept_domains,
                    checks,
                );
                serving.push(Serving::Http(http, listeners));
            }
            EdgeKind::Smtp | EdgeKind::Lmtp => {
                let mut smtp = build_smtp_edge(
                    edge,
                    queue,
                    hostname,
                    tls,
                    credentials,
                    accept_domains,
                    checks,
                );
                if edge.reverse_dns {
                    let resolver = ReverseDns::new(&config.dns.nameservers, REVERSE_DNS_TIMEOUT)
                        .map_err(|e| format!("edge.{name}.reverse_dns: {e}"))?;
                    smtp = smtp.reverse_dns(resolver);
                }
                let mut unix = Vec::new();
                for path in &edge.listen_unix {
                    let listener = listener::bind_unix(path).map_err(|e| {
                        format!(
                            "edge.{name}.listen: cannot listen on unix:{}: {e}",
                            path.display()
                        )
                    })?;
                    tracing::info!(edge = %name, address = %format!("unix:{}", path.display()), "listening");
                    unix.push(listener);
                }
                serving.push(Serving::Smtp(smtp, listeners, unix));
            }
        }
    }
    if let Some(target) = &privileges {
        drop_privileges(config, target)?;
    }
    for (name, queue) in &queues {
        queue
            .start()
            .await
            .map_err(|e| format!("queue.{name}: cannot load stored messages: {e}"))?;
    }
    let mut edges = tokio::task::JoinSet::new();
    for serve in serving {
        match serve {
            Serving::Http(http, listeners) => {
                for listener in listeners {
                    let http = http.clone();
                    let shutdown = shutdown.clone();
                    edges.spawn(async move { http.serve(listener, shutdown).await });
                }
            }
            Serving::Smtp(smtp, listeners, unix) => {
                for listener in unix {
                    let smtp = smtp.clone();
                    let shutdown = shutdown.clone();
                    edges.spawn(async move { smtp.serve(listener, shutdown).await });
                }
                for listener in listeners {
                    let smtp = smtp.clone();
                    let shutdown = shutdown.clone();
                    edges.spawn(async move { smtp.serve(listener, shutdown).await });
                }
            }
        }
    }
    let mut reloader =
        crate::reload::Reloader::new(config_path.map(Into::into), config.clone(), handles, files);
    let reloader = tokio::spawn(async move {
        while reloads.changed().await.is_ok() {
            // Reading and checking the file is blocking work, but rare.
            reloader = tokio::task::spawn_blocking(move || {
                reloader.reload();
                reloader
            })
            .await
            .expect("the reload task panicked");
        }
    });
    while let Some(done) = edges.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "an edge task failed");
        }
    }
    reloader.abort();
    drop(controls);
    // All at once: each may wait up to its grace, and they are independent.
    let mut stopping = tokio::task::JoinSet::new();
    for (name, queue) in queues {
        let storage = &config.queues[name].storage;
        let (name, kind, durable) = (name.to_owned(), storage.kind.name, storage.durable());
        stopping.spawn(async move { stop(&queue, &name, kind, durable).await });
    }
    while stopping.join_next().await.is_some() {}
    Ok(())
}

fn build_resolver(config: &Config) -> Result<Option<slimta::dns::Resolver>, String> {
    if !config.relays.values().any(|r| r.kind.dns) {
        return Ok(None);
    }
    let resolver = if config.dns.nameservers.is_empty() {
        slimta::dns::Resolver::system()
    } else {
        slimta::dns::Resolver::new(&config.dns.nameservers)
    };
    resolver
        .map(Some)
        .map_err(|e| format!("dns: cannot set up the resolver: {}", e.message()))
}

fn build_queue(
    name: &str,
    config: &QueueConfig,
    relay: AppRelay,
    destinations: DestinationSettings,
    context: &BuildContext<'_>,
) -> Result<AppQueue, String> {
    let hostname = context.hostname;
    let backoff = ExponentialBackoff {
        initial_delay: config.retry.initial_delay,
        factor: config.retry.factor,
        max_delay: config.retry.max_delay,
        max_age: config.retry.max_age,
        max_attempts: config.retry.maximum,
    };
    let section = format!("queue.{name}");
    let storage = config.storage.open(&section)?;
    let dispatch = config.storage.dispatch(&section, destinations)?;
    let mut queue = Queue::with_dispatch(storage, relay, dispatch)
        .with_backoff(backoff)
        .max_concurrency(config.max_concurrency)
        .with_hostname(hostname)
        .bounce_headers_only(config.bounce_headers_only)
        .postmaster(config.postmaster.clone())
        .delay_warning(config.delay_warning)
        .stats_interval(config.stats_interval);
    for policy in &config.policies {
        queue = queue.add_policy(policy.queue_policy(context));
    }
    for policy in &config.relay_policies {
        queue = queue.add_relay_policy(policy.relay_policy(context));
    }
    Ok(queue)
}

/// The links of an edge's `checks`, in order.
fn build_checks(
    edge: &EdgeConfig,
    context: &CheckContext<'_>,
) -> Result<Vec<Arc<dyn DynValidators>>, String> {
    edge.checks.iter().map(|c| c.validators(context)).collect()
}

/// `chain` followed by `checks` (each its own link: no nested chain to
/// walk for an edge without checks).
fn with_checks(chain: ValidatorChain, checks: Vec<Arc<dyn DynValidators>>) -> ValidatorChain {
    checks.into_iter().fold(chain, ValidatorChain::then_shared)
}

fn build_http_edge(
    edge: &EdgeConfig,
    queue: AppQueue,
    hostname: &str,
    tls: Option<ReloadableTls>,
    credentials: Option<Credentials>,
    accept_domains: AcceptDomains,
    checks: Vec<Arc<dyn DynValidators>>,
) -> HttpEdge<AppQueue> {
    let mut http = HttpEdge::new(hostname, queue)
        .accept_domains(accept_domains)
        .validators(with_checks(ValidatorChain::new(), checks))
        .max_size(usize::try_from(edge.max_size).unwrap_or(usize::MAX))
        .max_recipients(edge.max_recipients)
        .timeout(edge.command_timeout)
        .max_connections(edge.max_connections);
    if let Some(tls) = tls {
        http = http.tls(tls);
    }
    if let Some(credentials) = credentials {
        http = http.credentials(credentials);
    }
    http
}

fn build_smtp_edge(
    edge: &EdgeConfig,
    queue: AppQueue,
    hostname: &str,
    tls: Option<ReloadableTls>,
    credentials: Option<Credentials>,
    accept_domains: AcceptDomains,
    checks: Vec<Arc<dyn DynValidators>>,
) -> SmtpEdge<AppQueue, ValidatorChain> {
    let mut server = ServerConfig::new(hostname);
    server.max_size = usize::try_from(edge.max_size).unwrap_or(usize::MAX);
    server.max_recipients = edge.max_recipients;
    server.lmtp = edge.kind == EdgeKind::Lmtp;
    server.starttls = tls.is_some() && !edge.tls_immediately;
    if let Some(auth) = &edge.auth {
        server.auth_mechanisms = auth
            .mechanisms
            .iter()
            .filter_map(|m| Mechanism::from_name(m))
            .collect();
        server.auth_plaintext = auth.allow_plaintext;
        server.auth_required = auth.required;
    }
    let mut smtp = SmtpEdge::new(hostname, queue)
        .validators(with_checks(
            ValidatorChain::new().then(accept_domains),
            checks,
        ))
        .server_config(server)
        .command_timeout(edge.command_timeout)
        .data_timeout(edge.data_timeout)
        .max_connections(edge.max_connections)
        .proxy_protocol(match edge.proxy_protocol {
            ProxyProtocol::Off => None,
            ProxyProtocol::V1 => Some(ProxyMode::V1),
            ProxyProtocol::V2 => Some(ProxyMode::V2),
            ProxyProtocol::Auto => Some(ProxyMode::Auto),
        })
        .tls_immediately(edge.tls_immediately);
    if let Some(credentials) = credentials {
        smtp = smtp.credentials(credentials);
    }
    match tls {
        Some(tls) => smtp.tls(tls),
        None => smtp,
    }
}
