//! Black-box tests of the hardened edge: PROXY protocol (swaks and raw
//! sockets), and, as they land, TLS and AUTH.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use support::{Client, Slimta, SmtpSink, relay_config};

const WAIT: Duration = Duration::from_secs(20);

fn with_received(sink: std::net::SocketAddr, edge_extra: &str) -> String {
    relay_config(sink, edge_extra).replace(
        "relay = \"out\"\n",
        "relay = \"out\"\npolicies = [\"add_received_header\"]\n",
    )
}

fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new(support::program("swaks", "swaks"))
        .args(args)
        .output()
        .expect("swaks");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn swaks_proxy_v1_and_v2_set_the_client_address() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&with_received(sink.addr(), r#"proxy_protocol = "auto""#));
    let server = slimta.addr().to_string();
    for (version, family, source) in [
        ("1", "TCP4", "192.0.2.10"),
        ("2", "AF_INET", "198.51.100.20"),
    ] {
        let (ok, transcript) = swaks(&[
            "--server",
            &server,
            "-f",
            "p@x.test",
            "-t",
            "r@example.test",
            "--proxy-version",
            version,
            "--proxy-family",
            family,
            "--proxy-source",
            source,
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            "127.0.0.1",
            "--proxy-dest-port",
            "25",
        ]);
        assert!(ok, "swaks proxy v{version}:\n{transcript}");
    }
    let got = sink.wait_for_messages(2, WAIT);
    assert_eq!(got.len(), 2, "{}", slimta.log());
    for source in ["192.0.2.10", "198.51.100.20"] {
        assert!(
            got.iter()
                .any(|m| String::from_utf8_lossy(&m.content).contains(&format!("[{source}])"))),
            "no Received header names {source}: {got:?}"
        );
    }
}

#[test]
fn malformed_proxy_headers_close_without_a_banner() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(
        sink.addr(),
        "proxy_protocol = \"auto\"\ncommand_timeout = \"2s\"",
    ));
    let long = format!("PROXY TCP4 {} 127.0.0.1 1 2\r\n", "1".repeat(120));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header at all", b"EHLO x\r\n".to_vec()),
        ("over 107 bytes", long.into_bytes()),
        (
            "bad protocol word",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "bad address",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "family mismatch",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "port out of range",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
        ),
        (
            "trailing junk",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 junk\r\n".to_vec(),
        ),
        ("missing CR", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()),
        (
            "v2 bad version",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02"
                .to_vec(),
        ),
        (
            "v2 short length",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04".to_vec(),
        ),
        ("incomplete, then silence", b"PROXY TCP4 1.2.3.4".to_vec()),
    ];
    for (what, bytes) in cases {
        let mut c = Client::connect(slimta.addr());
        c.send(&bytes);
        let mut got = Vec::new();
        let closed = {
            use std::io::Read;
            let mut chunk = [0u8; 512];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                    Err(_) => break false,
                }
            }
        };
        assert!(closed, "{what}: not closed");
        assert!(
            got.is_empty(),
            "{what}: the server said {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn proxy_header_followed_by_pipelined_commands_and_local() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), r#"proxy_protocol = "v2""#));
    // v2 LOCAL (health check): the socket address applies; commands that
    // came in the same segment are answered after the banner.
    let mut c = Client::connect(slimta.addr());
    c.send(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00EHLO local.test\r\n");
    c.expect("220 ");
    c.expect("250-mx.example.test");
    c.cmd("QUIT", "221");
}

#[test]
fn a_proxy_line_on_a_plain_listener_is_just_a_bad_command() {
    let sink = SmtpSink::start(&[], false);
    let slimta = Slimta::start(&relay_config(sink.addr(), ""));
    let mut c = Client::connect(slimta.addr());
    c.expect("220 ");
    c.cmd("PROXY TCP4 192.0.2.1 127.0.0.1 1234 25", "500 5.5.2");
    c.cmd("EHLO after.test", "250");
}

fn http_config(sink: std::net::SocketAddr, extra: &str) -> String {
    relay_config(sink, "").replace(
        "type = \"smtp\"\nlisten",
        &format!("type = \"http\"\n{extra}\nlisten"),
    )
}

fn b64(s: &str) -> String {
    // Python does the base64 so the test does not share our encoder.
    support::python(
        "import base64,sys; print(base64.b64encode(sys.argv[1].encode()).decode())",
        &[s],
    )
    .trim()
    .to_string()
}

fn curl(args: &[&str]) -> String {
    let out = Command::new(support::program("curl", "curl"))
        .args(["-s", "-S", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn curl_posts_a_message_through_the_http_edge() {
    let sink = SmtpSink::start(&[], true);
    let slimta = Slimta::start(&http_config(sink.addr(), ""));
    let url = format!("http://{}/messages", slimta.addr());
    let body = slimta.path().join("m.eml");
    std::fs::write(&body, b"Subject: over http\r\n\r\nhello\r\n").unwrap();
    let data = format!("@{}", body.display());
    let sender = format!("X-Envelope-Sender: {}", b64("h@x.test"));
    let rcpt = format!("X-Envelope-Recipient: {}", b64("r@example.test"));
    let response = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: message/rfc822",
        "-H",
        &sender,
        "-H",
        &rcpt,
        "-H",
        "X-Ehlo: curl.test",
        "--data-binary",
        &data,
        &url,
    ]);
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    assert!(
        response.contains("x-smtp-reply: 250; message=\"2.6.0 Message queued as "),
        "{response}"
    );
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1, "{}", slimta.log());
    assert_eq!(got[0].rcpt_args, vec!["<r@example.test>"]);
    support::assert_delivered_as_sent(&got[0].content, b"Subject: over http\r\n\r\nhello\r\n");

    // Relay control is the SMTP edge's: another domain is refused (5xx -> 500).
    let elsewhere = format!("X-Envelope-Recipient: {}", b64("r@elsewhere.test"));
    let refused = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: message/rfc822",
        "-H",
        &sender,
        "-H",
        &elsewhere,
        "--data-binary",
        &data,
        &url,
    ]);
    assert!(refused.starts_with("HTTP/1.1 500"), "{refused}");
    assert!(refused.contains("550; message=\"5.7.1"), "{refused}");
    let get = curl(&[&url]);
    assert!(get.starts_with("HTTP/1.1 405"), "{get}");
}
