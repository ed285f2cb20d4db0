//! Session pooling in StaticSmtpRelay, against a scripted SMTP server on
//! 127.0.0.1 that counts connections (smtp-sink cannot report them per
//! connection): the pool bound, reuse with RSET, and discarding sessions the
//! server gave up on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slimta::relay::smtp::{ClientOptions, StaticSmtpRelay};
use slimta::{Envelope, Relay};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    messages: AtomicUsize,
    rsets: AtomicUsize,
    quits: AtomicUsize,
}

/// A pipelining SMTP server accepting every connection and message. After
/// each message it answers 250 and then, when `then_421`, sends an
/// unsolicited 421 and closes (as a server whose idle timer fired would).
async fn counting_server(then_421: bool) -> (SocketAddr, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let shared = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let stats = shared.clone();
            stats.accepted.fetch_add(1, Ordering::SeqCst);
            let now = stats.open.fetch_add(1, Ordering::SeqCst) + 1;
            stats.max_open.fetch_max(now, Ordering::SeqCst);
            tokio::spawn(async move {
                serve(stream, &stats, then_421).await;
                stats.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, stats)
}

async fn serve(stream: tokio::net::TcpStream, stats: &Stats, then_421: bool) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write
        .write_all(b"220 counting.test ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let answer: &[u8] = match command.get(..4).unwrap_or("") {
            "EHLO" => b"250-counting.test\r\n250 PIPELINING\r\n",
            "MAIL" | "RCPT" => b"250 2.0.0 Ok\r\n",
            "RSET" => {
                stats.rsets.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 Ok\r\n"
            }
            "QUIT" => {
                stats.quits.fetch_add(1, Ordering::SeqCst);
                let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            "DATA" => {
                if write.write_all(b"354 Go ahead\r\n").await.is_err() {
                    return;
                }
                let mut data = Vec::new();
                while !data.ends_with(b"\r\n.\r\n") {
                    if read.read_until(b'\n', &mut data).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                // Let concurrent sessions overlap, so the bound is exercised.
                tokio::time::sleep(Duration::from_millis(10)).await;
                stats.messages.fetch_add(1, Ordering::SeqCst);
                if then_421 {
                    let _ = write
                        .write_all(b"250 2.0.0 Ok\r\n421 4.4.2 Idle timeout\r\n")
                        .await;
                    return;
                }
                b"250 2.0.0 Ok\r\n"
            }
            _ => b"500 5.5.2 What?\r\n",
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn envelope(n: usize) -> Envelope {
    Envelope::new(
        "sender@x.test",
        vec![format!("rcpt{n}@y.test")],
        format!("Subject: {n}\r\n\r\nmessage {n}\r\n").into_bytes(),
    )
}

fn options() -> ClientOptions {
    ClientOptions::new()
        .ehlo_as("relay.test")
        .command_timeout(Duration::from_secs(10))
}

fn relay_with(addr: SocketAddr, options: ClientOptions) -> StaticSmtpRelay {
    StaticSmtpRelay::new(addr.ip().to_string(), addr.port()).options(options)
}

fn relay(addr: SocketAddr) -> StaticSmtpRelay {
    relay_with(addr, options())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_messages_share_at_most_pool_size_sessions() {
    // 1,000 messages through pool_size = 2.
    const MESSAGES: usize = 1000;
    let (addr, stats) = counting_server(false).await;
    let relay = Arc::new(relay_with(
        addr,
        options().pool_size(2).idle_timeout(Duration::from_secs(30)),
    ));
    let tasks: Vec<_> = (0..MESSAGES)
        .map(|n| {
            let relay = relay.clone();
            tokio::spawn(async move { relay.attempt(&envelope(n), 1).await })
        })
        .collect();
    for task in tasks {
        let delivery = task.await.unwrap().expect("delivered");
        assert!(delivery.result_for(0).is_ok());
    }
    assert_eq!(stats.messages.load(Ordering::SeqCst), MESSAGES);
    let accepted = stats.accepted.load(Ordering::SeqCst);
    assert!(stats.max_open.load(Ordering::SeqCst) <= 2, "{stats:?}");
    assert!(accepted <= 2, "sessions are reused: {stats:?}");
    // Every reuse starts with RSET; nothing was QUIT yet (the sessions idle).
    assert_eq!(
        stats.rsets.load(Ordering::SeqCst),
        MESSAGES - accepted,
        "{stats:?}"
    );
    assert_eq!(stats.quits.load(Ordering::SeqCst), 0, "{stats:?}");
}

#[tokio::test]
async fn without_idle_timeout_every_delivery_has_its_own_session() {
    let (addr, stats) = counting_server(false).await;
    let relay = relay(addr);
    for n in 0..3 {
        assert!(
            relay
                .attempt(&envelope(n), 1)
                .await
                .unwrap()
                .result_for(0)
                .is_ok()
        );
    }
    assert_eq!(stats.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(stats.quits.load(Ordering::SeqCst), 3);
    assert_eq!(stats.rsets.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_session_the_server_closed_with_421_is_not_reused() {
    let (addr, stats) = counting_server(true).await;
    let relay = relay_with(
        addr,
        options().pool_size(1).idle_timeout(Duration::from_secs(30)),
    );
    for n in 0..3 {
        let delivery = relay.attempt(&envelope(n), 1).await.expect("delivered");
        assert!(delivery.result_for(0).is_ok(), "{delivery:?}");
    }
    assert_eq!(stats.messages.load(Ordering::SeqCst), 3);
    assert_eq!(stats.accepted.load(Ordering::SeqCst), 3, "{stats:?}");
}

#[tokio::test]
async fn idle_sessions_expire_and_are_quit() {
    let (addr, stats) = counting_server(false).await;
    let relay = relay_with(addr, options().idle_timeout(Duration::from_millis(100)));
    assert!(
        relay
            .attempt(&envelope(0), 1)
            .await
            .unwrap()
            .result_for(0)
            .is_ok()
    );
    // Well past the idle timeout: the reaper has sent QUIT.
    for _ in 0..100 {
        if stats.quits.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.quits.load(Ordering::SeqCst), 1, "{stats:?}");
    assert!(
        relay
            .attempt(&envelope(1), 1)
            .await
            .unwrap()
            .result_for(0)
            .is_ok()
    );
    assert_eq!(stats.accepted.load(Ordering::SeqCst), 2, "{stats:?}");
}
