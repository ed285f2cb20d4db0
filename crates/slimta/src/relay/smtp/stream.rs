//! The byte stream under one client session: TCP, a unix socket (LMTP to a
//! local server) or TLS over TCP (feature `tls`).
//!
//! Design decisions:
//! - One enum instead of a generic parameter or a boxed trait object: the
//!   session code, the pool and the relays stay non-generic, and switching a
//!   live session from TCP to TLS (STARTTLS) is a replacement of the variant.
//! - `Detached` is the short-lived state while STARTTLS owns the TCP stream
//!   for the handshake; a session left in it (handshake failed) is broken and
//!   every I/O on it fails.
//! - [`Stream::poll_quiet`] polls one read with a no-op waker: it tells
//!   whether an idle session received anything (an unsolicited 421, a close)
//!   the same way for every variant, TLS included.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected client stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg_attr(not(feature = "tls"), allow(dead_code, reason = "left by STARTTLS"))]
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "session lost in a TLS handshake",
    )
}

/// What an idle session's stream shows without waiting.
pub(crate) enum Quiet {
    /// Nothing to read.
    Yes,
    /// These bytes arrived (or the stream closed: empty).
    Data(Vec<u8>),
    /// The stream failed.
    Failed,
}

impl Stream {
    /// Polls one read without waiting.
    pub(crate) fn poll_quiet(&mut self) -> Quiet {
        let mut probe = [0u8; 512];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(self).poll_read(&mut cx, &mut buf) {
            Poll::Pending => Quiet::Yes,
            Poll::Ready(Ok(())) => Quiet::Data(buf.filled().to_vec()),
            Poll::Ready(Err(_)) => Quiet::Failed,
        }
    }

    /// Whether the session runs over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if matches!(self, Stream::Tls(_)) {
            return true;
        }
        false
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}
