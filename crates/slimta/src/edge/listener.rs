//! The accept loop shared by every TCP edge.
//!
//! It owns the three things every server needs and that are easy to get
//! wrong (after mini-redis `src/server.rs`):
//!
//! - A connection limit: a semaphore with `max_connections` permits. A client
//!   beyond the limit still gets an answer - the edge's "too many
//!   connections" bytes (for SMTP `421 4.3.2`) - and is closed, without
//!   waiting for a permit and without affecting sessions already running.
//! - Accept-error backoff: `EMFILE` and friends make `accept` fail in a tight
//!   loop; we sleep (doubling up to one second) instead of spinning.
//! - Draining: when the shutdown signal fires the loop stops accepting and
//!   waits (at most `drain_timeout`) until every session has given back its
//!   permit. Sessions watch the same signal and finish what they are doing.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

/// A listening socket the accept loop can serve: TCP or unix.
pub trait Accept: Send + 'static {
    /// The connected stream.
    type Stream: AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection; `None` as the peer for unix sockets.
    fn accept_one(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
    /// For log lines.
    fn describe(&self) -> String;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    async fn accept_one(&self) -> io::Result<(TcpStream, Option<SocketAddr>)> {
        let (stream, peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer)))
    }

    fn describe(&self) -> String {
        self.local_addr()
            .map_or_else(|_| "tcp".into(), |a| a.to_string())
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;

    async fn accept_one(&self) -> io::Result<(UnixStream, Option<SocketAddr>)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, None))
    }

    fn describe(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_else(|| "unix".into())
    }
}

/// How a listener treats connections.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Sessions served at once.
    pub max_connections: usize,
    /// Written to a client refused because of `max_connections` before it is
    /// closed.
    pub refusal: Vec<u8>,
    /// How long to wait for running sessions after shutdown.
    pub drain_timeout: Duration,
}

/// Binds a TCP listener on `addr` (with `SO_REUSEADDR`, so a restart does not
/// wait for `TIME_WAIT`).
///
/// # Errors
///
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Binds a unix-domain listener at `path`, replacing a stale socket file
/// left by a previous run (but never another kind of file).
///
/// # Errors
///
/// When the path exists and is not a socket, or cannot be bound.
pub fn bind_unix(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    UnixListener::bind(path)
}

/// Accepts connections on `listener` and runs `session` for each, until
/// `shutdown` becomes true; then drains.
pub async fn serve<L, F, Fut>(
    listener: L,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    session: F,
) where
    L: Accept,
    F: Fn(L::Stream, Option<SocketAddr>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusal: Arc<[u8]> = limits.refusal.clone().into();
    let local = listener.describe();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => break,
            accepted = listener.accept_one() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                tracing::warn!(listener = %local, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = session(stream, peer);
                tokio::spawn(async move {
                    fut.await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(listener = %local, client = ?peer, "connection refused: too many connections");
                let refusal = refusal.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = stream.write_all(&refusal).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                });
            }
        }
    }
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(limits.drain_timeout, permits.acquire_many(all)).await {
        Ok(_) => tracing::info!(listener = %local, "listener drained"),
        Err(_) => tracing::warn!(
            listener = %local,
            remaining = limits.max_connections - permits.available_permits(),
            "sessions still running after the drain timeout"
        ),
    }
}

/// Resolves once the watched value is true (or the sender is gone).
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
