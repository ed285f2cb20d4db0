//! The byte streams an edge session runs over: TCP, unix sockets (and, once
//! negotiated, TLS on top of TCP).
//!
//! Design decision: an idle session holds no read buffer. For plain sockets
//! we wait for readability and only then read into a stack buffer that is
//! not kept across the wait, so 10,000 idle connections cost little more than
//! their sockets. (A TLS stream buffers inside rustls, so it is read the
//! ordinary way.)

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use crate::smtp::Server;

/// Size of one read.
const READ_CHUNK: usize = 16 * 1024;

/// A session's connection.
#[derive(Debug)]
pub enum Transport {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-domain socket connection (LMTP from a local MDA, say).
    Unix(UnixStream),
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
            Transport::Unix(_) => None,
        }
    }

    /// Waits for input, then feeds one read into `server`. Returns the byte
    /// count (0 at end of stream).
    pub async fn read_into(&mut self, server: &mut Server) -> io::Result<usize> {
        loop {
            match self {
                Transport::Tcp(s) => s.readable().await?,
                Transport::Unix(s) => s.readable().await?,
            }
            let mut chunk = [0u8; READ_CHUNK];
            let read = match self {
                Transport::Tcp(s) => s.try_read(&mut chunk),
                Transport::Unix(s) => s.try_read(&mut chunk),
            };
            match read {
                Ok(n) => {
                    if n > 0 {
                        server.receive(&chunk[..n]);
                    }
                    return Ok(n);
                }
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
        }
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Unix(s) => s.shutdown().await,
        }
    }
}
