//! `edge::proxy::read_proxy_header` against a real PROXY client: swaks
//! (`--proxy-version 1|2`) talks to a tiny listener that reads the header
//! and then plays a minimal SMTP server, so swaks sees a whole session.
//! Malformed headers sent with `swaks --proxy` must close the connection
//! before any banner.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use slimta::edge::proxy::{ProxyHeader, ProxyMode, read_proxy_header};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Seen = Result<ProxyHeader, String>;

/// Accepts one connection: reads the PROXY header (reporting it), then
/// answers SMTP commands until QUIT.
async fn one_session_listener(mode: ProxyMode) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (header, leftover) =
            match read_proxy_header(&mut stream, mode, Duration::from_secs(10)).await {
                Ok(ok) => ok,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return; // closed without a banner
                }
            };
        let _ = tx.send(Ok(header));
        let (read, mut write) = stream.split();
        // Bytes that came with the header are the session's first bytes.
        let mut lines = BufReader::new(leftover.as_slice().chain(read)).lines();
        write.all(b"220 proxy-test ESMTP\r\n").await;
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data {
                if line == "." {
                    in_data = false;
                    write.all(b"250 2.6.0 ok\r\n").await;
                }
                continue;
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" | "HELO" => write.all(b"250 proxy-test\r\n").await,
                "DATA" => {
                    in_data = true;
                    write.all(b"354 go on\r\n").await;
                }
                "QUIT" => {
                    write.all(b"221 2.0.0 bye\r\n").await;
                    return;
                }
                _ => write.all(b"250 2.0.0 ok\r\n").await,
            }
        }
    });
    (addr, rx)
}

trait WriteAll {
    async fn all(&mut self, bytes: &[u8]);
}

impl WriteAll for tokio::net::tcp::WriteHalf<'_> {
    async fn all(&mut self, bytes: &[u8]) {
        self.write_all(bytes).await.unwrap();
    }
}

async fn swaks(addr: SocketAddr, proxy_args: &[&str]) -> Output {
    let program = test_peers::require("swaks", "swaks");
    tokio::process::Command::new(program)
        .args(["--server", &addr.to_string()])
        .args(["-f", "a@x.test", "-t", "b@example.test", "--timeout", "10"])
        .args(proxy_args)
        .output()
        .await
        .unwrap()
}

fn full_proxy(version: &str, family: &str, source: &str) -> Vec<String> {
    [
        "--proxy-version",
        version,
        "--proxy-family",
        family,
        "--proxy-source",
        source,
        "--proxy-source-port",
        "4567",
        "--proxy-dest",
        if source.contains(':') {
            "::1"
        } else {
            "127.0.0.1"
        },
        "--proxy-dest-port",
        "25",
    ]
    .map(str::to_string)
    .to_vec()
}

#[tokio::test]
async fn swaks_headers_give_the_client_address() {
    let cases = [
        (
            ProxyMode::V1,
            "1",
            "TCP4",
            "192.0.2.7",
            "192.0.2.7:4567",
            "127.0.0.1:25",
        ),
        (
            ProxyMode::Auto,
            "1",
            "TCP6",
            "2001:db8::7",
            "[2001:db8::7]:4567",
            "[::1]:25",
        ),
        (
            ProxyMode::V2,
            "2",
            "AF_INET",
            "192.0.2.7",
            "192.0.2.7:4567",
            "127.0.0.1:25",
        ),
        (
            ProxyMode::Auto,
            "2",
            "AF_INET6",
            "2001:db8::7",
            "[2001:db8::7]:4567",
            "[::1]:25",
        ),
    ];
    for (mode, version, family, source, want_src, want_dst) in cases {
        let (addr, mut seen) = one_session_listener(mode).await;
        let args = full_proxy(version, family, source);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = swaks(addr, &args).await;
        let header = seen.recv().await.unwrap().unwrap();
        assert!(
            out.status.success(),
            "swaks {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(header.source, Some(want_src.parse().unwrap()), "{args:?}");
        assert_eq!(header.destination, Some(want_dst.parse().unwrap()));
    }
}

/// swaks cannot send a valid LOCAL header (see the malformed cases), so
/// this one is written by hand, with the session's first command in the
/// same write: it must reach the session as leftover.
#[tokio::test]
async fn v2_local_uses_the_socket_address_and_keeps_what_follows() {
    let (addr, mut seen) = one_session_listener(ProxyMode::V2).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = slimta::edge::proxy::V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    bytes.extend_from_slice(b"QUIT\r\n");
    stream.write_all(&bytes).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap(), ProxyHeader::default());
    assert_eq!(reply, "220 proxy-test ESMTP\r\n221 2.0.0 bye\r\n");
}

#[tokio::test]
async fn malformed_headers_close_before_the_banner() {
    let cases: &[(ProxyMode, &[&str], &str)] = &[
        (
            ProxyMode::V1,
            &["--proxy", "TCP4 192.0.2.7 127.0.0.1 65536 25"],
            "bad port",
        ),
        (
            ProxyMode::V1,
            &["--proxy", "TCP4 192.0.2.7 127.0.0.1 04567 25"],
            "bad port",
        ),
        (
            ProxyMode::Auto,
            &["--proxy", "TCP4 2001:db8::7 127.0.0.1 1 25"],
            "bad address",
        ),
        (
            ProxyMode::Auto,
            &["--proxy", "TCP4 192.0.2.7 127.0.0.1 1 25 x"],
            "field syntax",
        ),
        (
            ProxyMode::V1,
            &["--proxy", "TCP9 192.0.2.7 127.0.0.1 1 25"],
            "unknown protocol",
        ),
        // A v2 header where the listener expects v1.
        (
            ProxyMode::V1,
            &[
                "--proxy-version",
                "2",
                "--proxy-family",
                "AF_INET",
                "--proxy-source",
                "192.0.2.7",
                "--proxy-source-port",
                "1",
                "--proxy-dest",
                "127.0.0.1",
                "--proxy-dest-port",
                "25",
            ],
            "not a PROXY protocol header",
        ),
        // swaks (2024) encodes LOCAL as command 2 and leaves out the length:
        // not what the spec says (LOCAL is 0), so it is refused.
        (
            ProxyMode::V2,
            &[
                "--proxy-version",
                "2",
                "--proxy-command",
                "LOCAL",
                "--proxy-family",
                "AF_INET",
                "--proxy-source",
                "192.0.2.7",
                "--proxy-source-port",
                "1",
                "--proxy-dest",
                "127.0.0.1",
                "--proxy-dest-port",
                "25",
            ],
            "bad command",
        ),
        // A DGRAM v2 header on a TCP listener.
        (
            ProxyMode::Auto,
            &[
                "--proxy-version",
                "2",
                "--proxy-family",
                "AF_INET",
                "--proxy-protocol",
                "DGRAM",
                "--proxy-source",
                "192.0.2.7",
                "--proxy-source-port",
                "1",
                "--proxy-dest",
                "127.0.0.1",
                "--proxy-dest-port",
                "25",
            ],
            "bad address family",
        ),
    ];
    for (mode, args, reason) in cases {
        let (addr, mut seen) = one_session_listener(*mode).await;
        let out = swaks(addr, args).await;
        let error = seen.recv().await.unwrap().unwrap_err();
        assert!(error.contains(reason), "{args:?}: {error}");
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?}: {transcript}");
        assert!(!transcript.contains("<- 220"), "{args:?}: {transcript}");
    }
}
