//! The byte streams an edge session runs over: TCP, unix sockets (and, once
//! negotiated, TLS on top of TCP).
//!
//! Design decision: an idle session holds no read buffer. For plain sockets
//! we wait for readability and only then read into the worker thread's
//! buffer, so 10,000 idle connections cost little more than their sockets.
//! A TLS stream is polled with the same buffer lent for one poll at a time
//! (rustls may have plaintext buffered, so socket readiness alone would
//! not do); it keeps only rustls' own buffers while it waits.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use crate::smtp::Server;

/// Size of one read of a plain socket.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of plain sockets, one per runtime worker thread.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// A session's connection.
#[derive(Debug)]
pub enum Transport {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-domain socket connection (LMTP from a local MDA, say).
    Unix(UnixStream),
    /// TLS over TCP (implicit TLS or after STARTTLS).
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Nothing: the stream was taken for a TLS upgrade that failed.
    Detached,
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Self {
        Transport::Tcp(stream)
    }
}

impl From<UnixStream> for Transport {
    fn from(stream: UnixStream) -> Self {
        Transport::Unix(stream)
    }
}

impl Transport {
    /// The local address of a TCP connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Transport::Tcp(s) => s.local_addr().ok(),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.get_ref().0.local_addr().ok(),
            Transport::Unix(_) | Transport::Detached => None,
        }
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Transport::Tls(_) = self {
            return true;
        }
        false
    }

    /// The underlying TCP stream, for reading a PROXY header before anything
    /// else.
    pub fn tcp_mut(&mut self) -> Option<&mut TcpStream> {
        match self {
            Transport::Tcp(s) => Some(s),
            _ => None,
        }
    }

    /// Reads a PROXY protocol header (HAProxy v1/v2) from a TCP stream,
    /// consuming exactly its bytes: whatever follows (SMTP commands, or a
    /// TLS ClientHello on an implicit-TLS port) stays in the socket. The
    /// bytes are examined with `peek`; while the header is incomplete we
    /// wait for more in 5 ms steps (headers arrive in one segment in
    /// practice), bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// `InvalidData` for a malformed header, `TimedOut` when it is not
    /// complete in time, `UnexpectedEof` when the client closes first.
    pub async fn take_proxy_header(
        &mut self,
        mode: super::proxy::ProxyMode,
        timeout: std::time::Duration,
    ) -> io::Result<super::proxy::ProxyHeader> {
        use tokio::io::AsyncReadExt;
        let Transport::Tcp(tcp) = self else {
            return Err(io::Error::other("a PROXY header needs a TCP stream"));
        };
        let read = async {
            let mut buf = vec![0u8; mode.max_len()];
            let mut seen = 0;
            loop {
                let n = tcp.peek(&mut buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside the PROXY header",
                    ));
                }
                match mode.parse(&buf[..n]) {
                    Ok(Some((header, used))) => {
                        tcp.read_exact(&mut buf[..used]).await?;
                        return Ok(header);
                    }
                    Ok(None) => {
                        if n == seen {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        seen = n;
                    }
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
        };
        tokio::time::timeout(timeout, read).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "PROXY header not complete in time")
        })?
    }

    /// Runs a server TLS handshake on a TCP stream and switches to TLS. When
    /// the handshake fails the plain stream is kept, so the session can still
    /// say `421 4.7.0` before closing; if this future is dropped mid-way (a
    /// timeout) the stream is gone ([`Transport::Detached`]).
    ///
    /// # Errors
    ///
    /// When this is not a plain TCP stream or the handshake fails.
    #[cfg(feature = "tls")]
    pub async fn start_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> io::Result<crate::envelope::TlsInfo> {
        let Transport::Tcp(tcp) = std::mem::replace(self, Transport::Detached) else {
            return Err(io::Error::other("TLS needs a plain TCP stream"));
        };
        match acceptor.accept(tcp).into_fallible().await {
            Ok(tls) => {
                let info = super::tls::tls_info(tls.get_ref().1);
                *self = Transport::Tls(Box::new(tls));
                Ok(info)
            }
            Err((error, tcp)) => {
                *self = Transport::Tcp(tcp);
                Err(error)
            }
        }
    }

    /// Waits for input, then feeds one read into `server`. Returns the byte
    /// count (0 at end of stream).
    pub async fn read_into(&mut self, server: &mut Server) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Transport::Tls(s) = self {
            // The worker thread's buffer again, borrowed only inside one
            // poll: a TLS stream that has nothing to give returns Pending
            // without touching it, so an idle TLS session holds no read
            // buffer of ours either (rustls keeps its own).
            return std::future::poll_fn(|cx| {
                READ_BUFFER.with_borrow_mut(|chunk| {
                    let mut buf = tokio::io::ReadBuf::new(chunk);
                    match tokio::io::AsyncRead::poll_read(
                        std::pin::Pin::new(&mut **s),
                        cx,
                        &mut buf,
                    ) {
                        std::task::Poll::Ready(Ok(())) => {
                            let n = buf.filled().len();
                            if n > 0 {
                                server.receive(buf.filled());
                            }
                            std::task::Poll::Ready(Ok(n))
                        }
                        std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                        std::task::Poll::Pending => std::task::Poll::Pending,
                    }
                })
            })
            .await;
        }
        loop {
            match self {
                Transport::Tcp(s) => s.readable().await?,
                Transport::Unix(s) => s.readable().await?,
                _ => return Ok(0),
            }
            // Read into this worker thread's buffer: it is borrowed only for
            // the synchronous try_read and the copy into the state machine,
            // never across an await, so one zeroed buffer per thread serves
            // every session (zeroing 16 KiB per read was a third of the
            // instructions per message).
            let read = READ_BUFFER.with_borrow_mut(|chunk| {
                let read = match self {
                    Transport::Tcp(s) => s.try_read(chunk),
                    Transport::Unix(s) => s.try_read(chunk),
                    _ => Ok(0),
                };
                if let Ok(n @ 1..) = read {
                    server.receive(&chunk[..n]);
                }
                read
            });
            match read {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(bytes).await,
            Transport::Unix(s) => s.write_all(bytes).await,
            #[cfg(feature = "tls")]
            Transport::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Transport::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Unix(s) => s.shutdown().await,
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.shutdown().await,
            Transport::Detached => Ok(()),
        }
    }
}
