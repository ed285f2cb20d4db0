//! Criterion micro-benchmarks of the SMTP hot paths.
//!
//! Why these four: per accepted message, the server parses a handful of
//! pipelined command lines, reads and dot-unstuffs the whole message, and
//! renders a reply per command; the relay encodes (dot-stuffs) the whole
//! message again. Everything else per message (queueing, I/O) is measured by
//! `bench/run` end to end. These run without sockets, so a change to the
//! state machine can be judged on a noisy machine in seconds.
//!
//! Run with `cargo bench -p slimta --bench smtp`; they are not part of the
//! test suite and assert nothing about time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use slimta::Reply;
use slimta::smtp::client::encode_data;
use slimta::smtp::{Server, ServerConfig, Step};

/// Drives a fresh server over `input`, fed in `chunk`-sized reads like the
/// edge's read buffer, answering every event with its default reply.
/// Returns the bytes of output, so nothing is optimised away.
fn drive(config: &Arc<ServerConfig>, input: &[u8], chunk: usize) -> usize {
    let mut server = Server::new(Arc::clone(config));
    let banner = server.default_banner();
    server.greet(banner);
    let mut out = server.output().len();
    server.clear_output();
    let mut chunks = input.chunks(chunk);
    loop {
        match server.step() {
            Step::Event(ev) => server.respond(ev.reply),
            Step::NeedInput => {
                out += server.output().len();
                server.clear_output();
                match chunks.next() {
                    Some(c) => server.receive(c),
                    None => break,
                }
            }
            Step::Close | Step::StartTls => break,
        }
    }
    out + server.output().len()
}

/// A message of about `size` bytes with CRLF lines of 76 characters, every
/// tenth line starting with a dot (so unstuffing has work to do).
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <a@example.com>\r\nTo: <b@example.test>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < size {
        if i % 10 == 0 {
            m.push(b'.');
        }
        m.extend_from_slice(&[b'x'; 75]);
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

fn command_parsing(c: &mut Criterion) {
    let config = Arc::new(ServerConfig::new("bench.example.test"));
    // 50 pipelined transactions without DATA: MAIL with parameters, two
    // RCPTs, RSET; only the command path runs.
    let mut input = b"EHLO client.example.com\r\n".to_vec();
    for i in 0..50 {
        input.extend_from_slice(
            format!(
                "MAIL FROM:<sender{i}@example.com> SIZE=4096 BODY=8BITMIME\r\n\
                 RCPT TO:<rcpt{i}@example.test>\r\nRCPT TO:<\"quoted local\"@[127.0.0.1]>\r\nRSET\r\n"
            )
            .as_bytes(),
        );
    }
    input.extend_from_slice(b"QUIT\r\n");
    let commands = 2 + 50 * 4;
    let mut g = c.benchmark_group("command_parsing");
    g.throughput(Throughput::Elements(commands));
    g.bench_function("pipelined_202_commands", |b| {
        b.iter(|| drive(&config, black_box(&input), 4096));
    });
    g.finish();
}

fn data_reading(c: &mut Criterion) {
    let mut config = ServerConfig::new("bench.example.test");
    config.max_size = 1 << 20;
    let config = Arc::new(config);
    let body = message(100 * 1024);
    let mut stuffed = Vec::new();
    encode_data(&body, &mut stuffed);
    let mut input = b"EHLO client.example.com\r\nMAIL FROM:<a@example.com>\r\n\
                      RCPT TO:<b@example.test>\r\nDATA\r\n"
        .to_vec();
    input.extend_from_slice(&stuffed);
    input.extend_from_slice(b"QUIT\r\n");
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Bytes(stuffed.len() as u64));
    for chunk in [8192usize, 65536] {
        g.bench_function(format!("server_100KiB_reads_of_{chunk}"), |b| {
            b.iter(|| drive(&config, black_box(&input), chunk));
        });
    }
    g.bench_function("client_encode_data_100KiB", |b| {
        let mut out = Vec::with_capacity(stuffed.len() + 64);
        b.iter(|| {
            out.clear();
            encode_data(black_box(&body), &mut out);
            out.len()
        });
    });
    g.finish();
}

fn reply_rendering(c: &mut Criterion) {
    let single = Reply::new(
        250,
        "2.0.0",
        "Ok: queued as 0f9c6a2e4b1d4e8a9b7c3d2e1f0a9b8c",
    );
    let ehlo = Reply::new(
        250,
        "",
        "bench.example.test\nPIPELINING\nSIZE 10485760\n8BITMIME\nENHANCEDSTATUSCODES\n\
         SMTPUTF8\nCHUNKING",
    );
    let mut g = c.benchmark_group("reply_render_into");
    let mut out = Vec::with_capacity(512);
    g.bench_function("single_line_250", |b| {
        b.iter(|| {
            out.clear();
            black_box(&single).render_into(&mut out);
            out.len()
        });
    });
    g.bench_function("ehlo_7_lines", |b| {
        b.iter(|| {
            out.clear();
            black_box(&ehlo).render_into(&mut out);
            out.len()
        });
    });
    g.finish();
}

criterion_group!(benches, command_parsing, data_reading, reply_rendering);
criterion_main!(benches);
