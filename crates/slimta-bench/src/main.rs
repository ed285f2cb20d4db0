//! `slimta-load`: the SMTP load client of the benchmark harness (`bench/run`).
//!
//! Why our own client next to Postfix's `smtp-source`: `smtp-source` only
//! reports a wall-clock time, and the performance targets include a latency
//! percentile (time from sending the final `.` to reading the `250`) and a
//! memory figure under 10,000 idle connections, which need a client that
//! keeps per-message samples and can hold connections open.
//!
//! Design choices, each for a reason:
//! - One current-thread tokio runtime: on a small machine the client should
//!   not take more than one core from the server it measures (the same
//!   budget `smtp-source`, a single-threaded event loop, has).
//! - Every reply is checked against the code it must have; a mismatch is a
//!   failure, printed (the first few) and counted. A run with failures is not
//!   a valid figure, and the exit status says so (1).
//! - Latencies are kept as raw samples in a `Vec` and sorted at the end: no
//!   histogram library, no binning error; a few hundred thousand samples are
//!   a few MB at most.
//! - The latency clock starts just before the write that carries the final
//!   `.\r\n` (the message is sent in two writes when it is larger than 4 KiB:
//!   the bulk, then the last 4 KiB with the dot), so it measures the
//!   server's end-of-data work (queueing, fsync) and not the transfer of a
//!   large body.
//! - The machine-readable summary is one `RESULT {json}` line on stdout, so
//!   the harness needs no parser beyond `json.loads`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// How many failure messages are printed (all are counted).
const MAX_PRINTED_FAILURES: usize = 10;

/// The bytes of the tail write that carries the final dot.
const TAIL: usize = 4096;

#[derive(Parser, Debug)]
#[command(
    name = "slimta-load",
    version,
    about = "SMTP load client for slimta-rs benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Send messages and report throughput and end-of-data latency.
    Send(SendArgs),
    /// Open many connections, read their banners and hold them.
    Idle(IdleArgs),
}

#[derive(Parser, Debug, Clone)]
struct SendArgs {
    /// Server address (loopback only in the harness).
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: SocketAddr,
    /// Concurrent sessions.
    #[arg(short = 's', long, default_value_t = 20)]
    sessions: usize,
    /// Messages in total.
    #[arg(short = 'm', long, default_value_t = 1000)]
    messages: usize,
    /// Message size in bytes (headers included, approximately exact).
    #[arg(short = 'l', long, default_value_t = 4096)]
    size: usize,
    /// Messages per connection; 0 = as many as there are (one connection per
    /// session for the whole run).
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920) instead of waiting
    /// for each reply.
    #[arg(long)]
    pipelining: bool,
    /// Envelope sender.
    #[arg(long, default_value = "sender@example.com")]
    from: String,
    /// Envelope recipient (its domain must be accepted by the server).
    #[arg(long, default_value = "rcpt@example.test")]
    to: String,
    /// EHLO name.
    #[arg(long, default_value = "load.example.com")]
    ehlo: String,
}

#[derive(Parser, Debug)]
struct IdleArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: SocketAddr,
    /// Connections to open.
    #[arg(short = 'k', long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// How long to hold them once all are open (until SIGINT/SIGTERM if
    /// not given).
    #[arg(long, value_parser = parse_secs)]
    hold: Option<Duration>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.strip_suffix('s').unwrap_or(s);
    s.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| format!("{s}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slimta-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.mode {
        Mode::Send(args) => runtime.block_on(send(args)),
        Mode::Idle(args) => runtime.block_on(idle(args)),
    }
}

/// One SMTP client connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    pos: usize,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            pos: 0,
        })
    }

    /// Reads one complete (possibly multi-line) reply; returns its code and
    /// the text of its last line.
    async fn reply(&mut self) -> Result<(u16, String), String> {
        let mut code: Option<u16> = None;
        loop {
            // Look for a complete line in the buffer.
            if let Some(nl) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.pos..self.pos + nl + 1];
                self.pos += nl + 1;
                let text = String::from_utf8_lossy(line).trim_end().to_string();
                let bytes = text.as_bytes();
                if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                    return Err(format!("malformed reply line: {text:?}"));
                }
                let this: u16 = text[..3]
                    .parse()
                    .map_err(|_| format!("bad code: {text:?}"))?;
                if code.is_some_and(|c| c != this) {
                    return Err(format!("code changes inside a reply: {text:?}"));
                }
                code = Some(this);
                match bytes.get(3) {
                    Some(b'-') => continue,
                    None | Some(b' ') => return Ok((this, text)),
                    Some(_) => return Err(format!("malformed reply line: {text:?}")),
                }
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let start = self.buf.len();
            self.buf.resize(start + 4096, 0);
            let n = self
                .stream
                .read(&mut self.buf[start..])
                .await
                .map_err(|e| format!("read: {e}"));
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                return Err("connection closed by the server".to_string());
            }
        }
    }

    /// Reads a reply and checks its code.
    async fn expect(&mut self, want: u16, what: &str) -> Result<(), String> {
        let (code, text) = self.reply().await?;
        if code == want {
            Ok(())
        } else {
            Err(format!("{what}: expected {want}, got {text:?}"))
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

/// A message of about `size` bytes, ending in CRLF, without the final dot.
/// One body line starts with a dot so the server's dot-unstuffing runs.
fn make_message(size: usize, from: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: slimta-load benchmark message\r\n\
         Message-ID: <bench@load.example.com>\r\n\r\n..a dot-stuffed line\r\n"
    )
    .into_bytes();
    let line = [b'x'; 76];
    while m.len() + 78 <= size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    if m.len() + 2 < size {
        let rest = size - m.len() - 2;
        m.extend(std::iter::repeat_n(b'y', rest));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// What one session reports back.
#[derive(Default)]
struct SessionResult {
    latencies: Vec<Duration>,
    ok: usize,
    failed: usize,
}

struct Shared {
    args: SendArgs,
    /// Messages not yet claimed by a session.
    remaining: AtomicUsize,
    envelope: Vec<u8>,
    body: Vec<u8>,
    failures: Mutex<Vec<String>>,
}

impl Shared {
    /// Claims one message; false when all are taken.
    fn claim(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn fail(&self, what: String) {
        let mut f = self.failures.lock().await;
        if f.len() < MAX_PRINTED_FAILURES {
            eprintln!("slimta-load: failure: {what}");
        }
        f.push(what);
    }
}

async fn send(args: SendArgs) -> ExitCode {
    let envelope = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        args.from, args.to
    )
    .into_bytes();
    let mut body = make_message(args.size, &args.from, &args.to);
    body.extend_from_slice(b".\r\n");
    let shared = Arc::new(Shared {
        remaining: AtomicUsize::new(args.messages),
        envelope,
        body,
        failures: Mutex::new(Vec::new()),
        args,
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..shared.args.sessions.max(1) {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move { session(&shared).await }));
    }
    let mut total = SessionResult::default();
    for t in tasks {
        match t.await {
            Ok(r) => {
                total.ok += r.ok;
                total.failed += r.failed;
                total.latencies.extend(r.latencies);
            }
            Err(e) => {
                total.failed += 1;
                eprintln!("slimta-load: session task: {e}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let failures = shared.failures.lock().await.len();
    let mut lat = total.latencies;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[idx.clamp(1, lat.len()) - 1].as_secs_f64() * 1000.0
    };
    let rate = if secs > 0.0 {
        total.ok as f64 / secs
    } else {
        0.0
    };
    let a = &shared.args;
    println!(
        "slimta-load: {} ok, {} failed in {:.3} s = {:.1} msg/s; final dot -> 250: p50 {:.3} ms, \
         p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} sessions, {} B, {} per connection, \
         pipelining {})",
        total.ok,
        total.failed,
        secs,
        rate,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0),
        a.sessions,
        a.size,
        a.per_connection,
        a.pipelining
    );
    println!(
        "RESULT {{\"ok\": {}, \"failed\": {}, \"failures\": {}, \"secs\": {:.6}, \"rate\": {:.3}, \
         \"p50_ms\": {:.4}, \"p90_ms\": {:.4}, \"p99_ms\": {:.4}, \"max_ms\": {:.4}}}",
        total.ok,
        total.failed,
        failures,
        secs,
        rate,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0)
    );
    if total.failed == 0 && failures == 0 && total.ok == a.messages {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One session: connections one after another until no message is left.
async fn session(shared: &Shared) -> SessionResult {
    let mut result = SessionResult::default();
    let per_conn = shared.args.per_connection;
    'connections: while shared.claim() {
        // Claimed one message; it is this connection's first.
        let mut conn = match open(shared).await {
            Ok(c) => c,
            Err(e) => {
                result.failed += 1;
                shared.fail(e).await;
                continue;
            }
        };
        let mut sent_here = 0usize;
        loop {
            match transaction(shared, &mut conn).await {
                Ok(lat) => {
                    result.ok += 1;
                    result.latencies.push(lat);
                }
                Err(e) => {
                    result.failed += 1;
                    shared.fail(e).await;
                    continue 'connections; // drop the connection, start anew
                }
            }
            sent_here += 1;
            if (per_conn != 0 && sent_here >= per_conn) || !shared.claim() {
                break;
            }
        }
        let quit = async {
            conn.write(b"QUIT\r\n").await?;
            conn.expect(221, "QUIT").await
        };
        if let Err(e) = quit.await {
            // The messages were accepted; a bad QUIT is still a failure of
            // the run, but not of a message.
            shared.fail(e).await;
        }
    }
    result
}

/// Connect, banner, EHLO.
async fn open(shared: &Shared) -> Result<Conn, String> {
    let mut conn = Conn::connect(shared.args.server).await?;
    conn.expect(220, "banner").await?;
    conn.write(format!("EHLO {}\r\n", shared.args.ehlo).as_bytes())
        .await?;
    conn.expect(250, "EHLO").await?;
    Ok(conn)
}

/// One message; returns the final-dot-to-250 latency.
async fn transaction(shared: &Shared, conn: &mut Conn) -> Result<Duration, String> {
    let a = &shared.args;
    if a.pipelining {
        conn.write(&shared.envelope).await?;
        conn.expect(250, "MAIL").await?;
        conn.expect(250, "RCPT").await?;
        conn.expect(354, "DATA").await?;
    } else {
        conn.write(format!("MAIL FROM:<{}>\r\n", a.from).as_bytes())
            .await?;
        conn.expect(250, "MAIL").await?;
        conn.write(format!("RCPT TO:<{}>\r\n", a.to).as_bytes())
            .await?;
        conn.expect(250, "RCPT").await?;
        conn.write(b"DATA\r\n").await?;
        conn.expect(354, "DATA").await?;
    }
    let body = &shared.body;
    let split = body.len().saturating_sub(TAIL);
    if split > 0 {
        conn.write(&body[..split]).await?;
    }
    let t0 = Instant::now();
    conn.write(&body[split..]).await?;
    conn.expect(250, "end of data").await?;
    Ok(t0.elapsed())
}

async fn idle(args: IdleArgs) -> ExitCode {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.parallel.max(1) {
        let next = Arc::clone(&next);
        let (k, addr) = (args.connections, args.server);
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < k {
                let opened = async {
                    let mut c = Conn::connect(addr).await?;
                    c.expect(220, "banner").await?;
                    Ok::<_, String>(c)
                };
                match opened.await {
                    Ok(c) => held.push(c),
                    Err(e) => errors.push(e),
                }
            }
            (held, errors)
        }));
    }
    let mut held = Vec::new();
    let mut failed = 0usize;
    for t in tasks {
        match t.await {
            Ok((h, errors)) => {
                held.extend(h);
                for e in errors.iter().take(MAX_PRINTED_FAILURES) {
                    eprintln!("slimta-load: failure: {e}");
                }
                failed += errors.len();
            }
            Err(e) => {
                failed += 1;
                eprintln!("slimta-load: idle task: {e}");
            }
        }
    }
    println!(
        "READY {{\"open\": {}, \"failed\": {}, \"secs\": {:.3}}}",
        held.len(),
        failed,
        started.elapsed().as_secs_f64()
    );
    // The harness reads READY line by line while we wait.
    let wait = async {
        match args.hold {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = wait => {}
        () = sigterm => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Check the held connections are still open: a server that dropped
    // them would make the RSS figure meaningless.
    let mut closed = 0usize;
    for c in &mut held {
        let mut b = [0u8; 512];
        if let Ok(0) = c.stream.try_read(&mut b) {
            closed += 1;
        }
    }
    println!(
        "HELD {{\"open\": {}, \"closed_by_server\": {closed}}}",
        held.len()
    );
    if failed == 0 && closed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
