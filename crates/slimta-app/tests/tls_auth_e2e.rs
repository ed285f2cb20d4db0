//! Black-box tests of TLS, AUTH and LMTP on the `slimta` binary with
//! independent clients: swaks, Python's ssl/smtplib, the PyPI STARTTLS
//! injection tester, raw sockets. Certificates are made at test time.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Client, Slimta, SmtpSink, make_pki, python, relay_config};

const WAIT: Duration = Duration::from_secs(20);

/// A SHA512-CRYPT hash made by Python's crypt module (glibc's crypt(3)).
fn sha512_crypt(password: &str) -> String {
    python(
        "import warnings,sys\nwarnings.simplefilter('ignore')\nimport crypt\nprint(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_SHA512)))",
        &[password],
    )
    .trim()
    .to_string()
}

fn argon2id(password: &str) -> String {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(b"slimta-test-salt").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A TLS + AUTH edge in a fresh directory with certificates.
struct Setup {
    sink: SmtpSink,
    slimta: Slimta,
    ca: PathBuf,
}

fn start(edge_extra: &str, auth: bool) -> Setup {
    let sink = SmtpSink::start(&[], true);
    let pki = tempfile::tempdir().unwrap();
    let ca = make_pki(pki.path(), "Test CA A");
    let dir = pki.keep();
    let mut extra = format!(
        "tls = {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}\n{edge_extra}\n",
        d = dir.display()
    );
    if auth {
        extra.push_str(&format!(
            "[edge.in.auth]\nusers = {{ alice = \"{{PLAIN}}wonderland\", bob = \"{{SHA512-CRYPT}}{}\", carol = \"{{ARGON2ID}}{}\" }}\n",
            sha512_crypt("builder"),
            argon2id("lewis")
        ));
    }
    let config = relay_config(sink.addr(), &extra).replace(
        "relay = \"out\"\n",
        "relay = \"out\"\npolicies = [\"add_received_header\"]\n",
    );
    // The [edge.in.auth] table must come after the edge's keys; relay_config
    // puts edge_extra last in [edge.in], so it is.
    let slimta = Slimta::start(&config);
    Setup { sink, slimta, ca }
}

fn swaks(slimta: &Slimta, args: &[&str]) -> (bool, String) {
    let out = Command::new(support::program("swaks", "swaks"))
        .args(["--server", &slimta.addr().to_string(), "-f", "s@x.test"])
        .args(args)
        .output()
        .expect("swaks");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn received_headers(sink: &SmtpSink, n: usize) -> Vec<String> {
    sink.wait_for_messages(n, WAIT)
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.content).into_owned();
            text.split("\n\n").next().unwrap_or("").to_string()
        })
        .collect()
}

#[test]
fn swaks_starttls_and_implicit_tls_are_recorded_as_esmtps() {
    let s = start("", false);
    let (ok, t) = swaks(&s.slimta, &["-t", "r@example.test", "--tls"]);
    assert!(ok, "{t}");
    assert!(t.contains("STARTTLS") && t.contains("250 2.6.0"), "{t}");
    let headers = received_headers(&s.sink, 1);
    assert!(headers[0].contains("with ESMTPS"), "{headers:?}");
    assert!(headers[0].contains("version=TLSv1.3"), "{headers:?}");

    let implicit = start("tls_immediately = true", false);
    let (ok, t) = swaks(
        &implicit.slimta,
        &["-t", "r@example.test", "--tls-on-connect"],
    );
    assert!(ok, "{t}");
    let headers = received_headers(&implicit.sink, 1);
    assert!(headers[0].contains("with ESMTPS"), "{headers:?}");
    // A plaintext client on the implicit-TLS port gets no banner.
    let mut plain = Client::connect(implicit.slimta.addr());
    plain.send(b"EHLO plain.test\r\n");
    assert!(plain.closed());
}

#[test]
fn swaks_auth_succeeds_and_fails_for_each_mechanism_and_scheme() {
    let s = start("", true);
    let cases = [
        ("PLAIN", "alice", "wonderland", true),
        ("LOGIN", "alice", "wonderland", true),
        ("CRAM-MD5", "alice", "wonderland", true),
        ("PLAIN", "bob", "builder", true),
        ("LOGIN", "carol", "lewis", true),
        ("PLAIN", "alice", "wrong", false),
        ("LOGIN", "alice", "wrong", false),
        ("CRAM-MD5", "alice", "wrong", false),
        ("PLAIN", "nobody", "wonderland", false),
        // A hashed secret cannot answer CRAM-MD5.
        ("CRAM-MD5", "bob", "builder", false),
    ];
    for (mechanism, user, password, good) in cases {
        let (ok, t) = swaks(
            &s.slimta,
            &[
                "-t",
                "far@elsewhere.test",
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                user,
                "--auth-password",
                password,
            ],
        );
        if good {
            assert!(ok && t.contains("235 2.7.0"), "{mechanism} {user}: {t}");
            assert!(
                t.contains("250 2.6.0"),
                "{mechanism} {user}: relaying after AUTH: {t}"
            );
        } else {
            assert!(
                !ok && t.contains("535 5.7.8"),
                "{mechanism} {user} should fail: {t}"
            );
        }
    }
    let headers = received_headers(&s.sink, 5);
    assert_eq!(headers.len(), 5);
    assert!(
        headers.iter().all(|h| h.contains("with ESMTPSA")),
        "{headers:?}"
    );
}

#[test]
fn plaintext_auth_is_neither_offered_nor_accepted_before_tls() {
    let s = start("", true);
    let mut c = Client::connect(s.slimta.addr());
    c.expect("220 ");
    let ehlo = c.cmd("EHLO plain.test", "250");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    let auth_line = ehlo.lines().find(|l| l.contains("AUTH")).unwrap_or("");
    assert!(
        !auth_line.contains("PLAIN") && !auth_line.contains("LOGIN"),
        "{ehlo}"
    );
    c.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", "538 5.7.11");
    c.cmd("AUTH LOGIN", "538 5.7.11");
    // Relaying is still refused without AUTH.
    c.cmd("MAIL FROM:<s@x.test>", "250");
    c.cmd("RCPT TO:<far@elsewhere.test>", "550 5.7.1");
}

#[test]
fn auth_required_refuses_mail_until_auth() {
    let s = start("", false);
    drop(s);
    let s = {
        let sink = SmtpSink::start(&[], false);
        let pki = tempfile::tempdir().unwrap();
        make_pki(pki.path(), "CA");
        let dir = pki.keep();
        let extra = format!(
            "tls = {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}\n[edge.in.auth]\nrequired = true\nallow_plaintext = true\nusers = {{ alice = \"{{PLAIN}}wonderland\" }}\n",
            d = dir.display()
        );
        let slimta = Slimta::start(&relay_config(sink.addr(), &extra));
        (sink, slimta)
    };
    let mut c = Client::connect(s.1.addr());
    c.expect("220 ");
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<s@x.test>", "530 5.7.0");
    c.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", "235 2.7.0");
    c.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", "503 5.5.1");
    c.cmd("MAIL FROM:<s@x.test>", "250");
}

#[test]
fn smtplib_starttls_ordering_and_login() {
    let s = start("", true);
    let script = r#"
import smtplib, ssl, sys, json
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
out = {}
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("c.test")
out["before"] = sorted(s.esmtp_features)
out["auth_before"] = s.esmtp_features.get("auth", "").strip()
s.starttls(context=ctx)
s.ehlo("c.test")
out["after"] = sorted(s.esmtp_features)
out["auth_after"] = s.esmtp_features.get("auth", "").strip()
out["cipher"] = s.sock.version()
code, msg = s.docmd("STARTTLS")
out["starttls_again"] = code
s.login("alice", "wonderland")
out["refused"] = s.sendmail("a@x.test", ["far@elsewhere.test"], b"Subject: tls\r\n\r\nx\r\n")
s.quit()
print(json.dumps(out))
"#;
    let ca = s.ca.display().to_string();
    let out = python(
        script,
        &["127.0.0.1", &s.slimta.addr().port().to_string(), &ca],
    );
    assert!(out.contains(r#""starttls""#), "{out}");
    assert!(out.contains(r#""auth_before": "CRAM-MD5""#), "{out}");
    assert!(
        out.contains(r#""auth_after": "PLAIN LOGIN CRAM-MD5""#),
        "{out}"
    );
    let after = out.split(r#""after""#).nth(1).unwrap_or("");
    assert!(
        !after.split(']').next().unwrap_or("").contains("starttls"),
        "STARTTLS offered again: {out}"
    );
    assert!(out.contains(r#""cipher": "TLSv1.3""#), "{out}");
    assert!(!out.contains(r#""starttls_again": 220"#), "{out}");
    assert!(out.contains(r#""refused": {}"#), "{out}");
}

/// CVE-2011-0411: a command pipelined after STARTTLS in plaintext must never
/// be answered inside TLS.
#[test]
fn plaintext_after_starttls_is_discarded() {
    let s = start("", false);
    let script = r#"
import socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=10)
f = sock.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline()
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)
print("banner", reply()[:3])
sock.sendall(b"EHLO inject.test\r\n")
print("ehlo", reply()[:3])
sock.sendall(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@attacker.test>\r\n")
print("starttls", reply()[:3])
ctx = ssl.create_default_context(cafile=ca)
tls = ctx.wrap_socket(sock, server_hostname="mx.example.test")
tls.settimeout(1.5)
try:
    early = tls.recv(1000)
except socket.timeout:
    early = b""
print("early", repr(early))
tls.settimeout(10)
tls.sendall(b"EHLO after.test\r\n")
print("after", tls.recv(1000)[:3])
"#;
    let ca = s.ca.display().to_string();
    let out = python(
        script,
        &["127.0.0.1", &s.slimta.addr().port().to_string(), &ca],
    );
    assert!(out.contains("starttls b'220'"), "{out}");
    assert!(
        out.contains("early b''"),
        "injected commands were answered inside TLS: {out}"
    );
    assert!(out.contains("after b'250'"), "{out}");
}

#[test]
fn command_injection_tester_finds_nothing() {
    let s = start("", false);
    let tester = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-venv/bin/command-injection-tester");
    assert!(
        tester.exists(),
        "{} is missing: scripts/test installs it (pip install command-injection-tester)",
        tester.display()
    );
    let logs = tempfile::tempdir().unwrap();
    let out = Command::new(&tester)
        .args([
            "127.0.0.1",
            "--smtp",
            "-s",
            &s.slimta.addr().port().to_string(),
            "--nocolor",
            "-t",
            "0.5",
            "-l",
        ])
        .arg(logs.path())
        .output()
        .expect("command-injection-tester");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for bad in [
        "Command injection here",
        "Possible command injection",
        "Probable command injection",
        "Sanity test failed",
    ] {
        assert!(!text.contains(bad), "{bad}: {text}");
    }
    assert!(
        text.contains("Probably no command injection here!"),
        "{text}"
    );
}

#[test]
fn sighup_reloads_the_certificate_for_new_sessions_only() {
    let sink = SmtpSink::start(&[], false);
    let pki = tempfile::tempdir().unwrap();
    let ca_a = make_pki(pki.path(), "CA A");
    let kept_a = pki.path().join("ca-a.pem");
    std::fs::copy(&ca_a, &kept_a).unwrap();
    let extra = format!(
        "tls = {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}\ntls_immediately = true\n",
        d = pki.path().display()
    );
    let slimta = Slimta::start(&relay_config(sink.addr(), &extra));
    let handshake = |ca: &Path| -> String {
        python(
            r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
try:
    s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10), server_hostname="mx.example.test")
    print("ok", s.recv(100)[:3])
except ssl.SSLError as e:
    print("refused", e.reason)
"#,
            &[
                "127.0.0.1",
                &slimta.addr().port().to_string(),
                &ca.display().to_string(),
            ],
        )
    };
    assert!(handshake(&kept_a).starts_with("ok b'220'"));
    // A session opened with the old certificate stays usable after reload.
    let mut old = std::process::Command::new(support::program("python3", "python3"))
        .arg("-c")
        .arg(r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[3])
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20), server_hostname="mx.example.test")
s.recv(100)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
s.sendall(b"NOOP\r\n")
print("old", s.recv(100)[:3])
"#)
        .args(["127.0.0.1", &slimta.addr().port().to_string(), &kept_a.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut old_out = std::io::BufReader::new(old.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut old_out, &mut line).unwrap();
    assert_eq!(line, "ready\n");

    let ca_b = make_pki(pki.path(), "CA B");
    slimta.peer.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    while !slimta.log().contains("TLS certificate reloaded") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        handshake(&ca_b).starts_with("ok b'220'"),
        "{}",
        slimta.log()
    );
    assert!(
        handshake(&kept_a).starts_with("refused"),
        "the old certificate is still served"
    );
    std::io::Write::write_all(old.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut old_out, &mut rest).unwrap();
    assert!(rest.contains("old b'250'"), "{rest}");
    old.wait().unwrap();
}

#[test]
fn lmtp_answers_each_accepted_recipient_in_order_after_data_and_bdat() {
    let sink = SmtpSink::start(&[], true);
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("lmtp.sock");
    let config = relay_config(sink.addr(), "")
        .replace("type = \"smtp\"", "type = \"lmtp\"")
        .replace(
            "listen = [\"127.0.0.1:{port}\"]",
            &format!(
                "listen = [\"127.0.0.1:{{port}}\", \"unix:{}\"]",
                socket.display()
            ),
        );
    let slimta = Slimta::start(&config);
    let mut c = Client::connect(slimta.addr());
    c.expect("220 mx.example.test LMTP");
    c.cmd("EHLO no.test", "500");
    c.cmd("LHLO lmtp.test", "250-mx.example.test");
    c.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<one@example.test>\r\nRCPT TO:<two@elsewhere.test>\r\nRCPT TO:<three@example.test>\r\nDATA\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("550 5.7.1 <two@elsewhere.test>");
    c.expect("250 2.1.5");
    c.expect("354 ");
    c.send(b"Subject: lmtp\r\n\r\nx\r\n.\r\n");
    c.expect("250 2.6.0 <one@example.test> Message queued as ");
    c.expect("250 2.6.0 <three@example.test> Message queued as ");
    // Again with BDAT LAST.
    c.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<b1@example.test>\r\nRCPT TO:<b2@example.test>\r\nBDAT 17 LAST\r\nSubject: bdat\r\n\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("250 2.1.5");
    c.expect("250 2.6.0 <b1@example.test>");
    c.expect("250 2.6.0 <b2@example.test>");
    c.cmd("QUIT", "221");

    // swaks over the unix socket, and over TCP with --protocol LMTP.
    for target in [
        vec!["--socket".to_string(), socket.display().to_string()],
        vec!["--server".to_string(), slimta.addr().to_string()],
    ] {
        let out = Command::new(support::program("swaks", "swaks"))
            .args(&target)
            .args([
                "--protocol",
                "LMTP",
                "-f",
                "s@x.test",
                "-t",
                "a@example.test,b@elsewhere.test,c@example.test",
            ])
            .output()
            .expect("swaks");
        let t = String::from_utf8_lossy(&out.stdout);
        let a = t
            .find("<-  250 2.6.0 <a@example.test>")
            .unwrap_or_else(|| panic!("{t}"));
        let cc = t
            .find("<-  250 2.6.0 <c@example.test>")
            .unwrap_or_else(|| panic!("{t}"));
        assert!(a < cc, "replies out of RCPT order: {t}");
        assert!(t.contains("550 5.7.1 <b@elsewhere.test>"), "{t}");
    }
    let got = sink.wait_for_messages(4, WAIT);
    assert_eq!(got.len(), 4, "{}", slimta.log());
}

#[test]
fn a_failed_starttls_handshake_gets_421() {
    let s = start("", false);
    let mut c = Client::connect(s.slimta.addr());
    c.expect("220 ");
    c.cmd("EHLO bad-tls.test", "250");
    c.cmd("STARTTLS", "220 2.0.0");
    // Not a TLS ClientHello.
    c.send(b"this is not TLS at all\r\n\r\n\r\n");
    let mut seen = Vec::new();
    {
        use std::io::Read;
        let mut chunk = [0u8; 1024];
        while let Ok(n) = c.stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("421 4.7.0"), "{text:?}");
}
