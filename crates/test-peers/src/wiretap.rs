//! A recording TCP relay: what a client under test sent, byte for byte.

use std::net::{SocketAddr, TcpListener, TcpStream};

/// A TCP relay between a client under test and a real server that keeps a
/// copy of every byte the client sent, one buffer per connection. It
/// changes nothing: the server answers. Tests use it to see *how* the
/// client spoke (BDAT or DATA, pipelined or not) where the server only
/// shows the result.
pub struct Wiretap {
    addr: SocketAddr,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Wiretap {
    /// Listens on a free loopback port and forwards each connection to
    /// `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the wiretap");
        let addr = listener.local_addr().expect("wiretap address");
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(upstream).expect("the wiretap's upstream");
                let index = {
                    let mut sent = record.lock().expect("wiretap lock");
                    sent.push(Vec::new());
                    sent.len() - 1
                };
                let (mut from_client, mut to_server) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        match from_client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record.lock().expect("wiretap lock")[index]
                                    .extend_from_slice(&buf[..n]);
                                if to_server.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { addr, sent }
    }

    /// Where the client under test connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the client sent so far, one buffer per connection.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().expect("wiretap lock").clone()
    }
}
