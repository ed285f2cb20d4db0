//! PipeRelay and its presets against real programs: maildrop delivering into
//! a Maildir, dovecot-lda against a running Dovecot (and EX_TEMPFAIL once it
//! is stopped), `sh` for exit codes, argument templates and a 20 MB message
//! with a program that floods its standard error before reading, `sleep`
//! for the timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use slimta::relay::pipe::{DovecotLdaRelay, MaildropRelay, PipeRelay};
use slimta::{ClientInfo, Envelope, Relay};
use test_peers::{Dovecot, MaildropBox};

const MESSAGE: &[u8] =
    b"From: sender@x.test\r\nTo: rcpt@y.test\r\nSubject: pipe\r\nMessage-Id: <m1@x.test>\r\n\r\nHello,\r\nworld.\r\n";

fn envelope(recipients: &[&str], message: &[u8]) -> Envelope {
    let mut env = Envelope::new(
        "sender@x.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        message.to_vec(),
    );
    env.client = ClientInfo {
        ip: Some("127.0.0.7".parse().unwrap()),
        helo: Some("client.test".into()),
        ..ClientInfo::default()
    };
    env
}

fn sh(script: &str) -> PipeRelay {
    PipeRelay::new(["/bin/sh", "-c", script]).timeout(Duration::from_secs(60))
}

#[tokio::test]
async fn maildrop_delivers_into_the_maildir() {
    let mailbox = MaildropBox::new();
    let relay = MaildropRelay::new()
        .mailfilter(mailbox.mailfilter())
        .timeout(Duration::from_secs(60));
    let d = relay
        .attempt(&envelope(&["rcpt@y.test"], MESSAGE), 1)
        .await
        .expect("delivered");
    let reply = d.result_for(0).expect("delivered");
    assert_eq!(reply.code(), 250, "{reply:?}");
    let got = mailbox.messages();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(
        text.contains("Subject: pipe\nMessage-Id: <m1@x.test>\n\nHello,\nworld.\n"),
        "{text:?}"
    );
    assert!(!text.contains('\r'), "Maildir files use LF: {text:?}");
}

#[tokio::test]
async fn dovecot_lda_delivers_refuses_unknown_users_and_defers_without_dovecot() {
    let mut dovecot = Dovecot::start(&[("alice", None)]);
    let relay = DovecotLdaRelay::new()
        .config(dovecot.config())
        .timeout(Duration::from_secs(60));
    let env = envelope(&["alice@example.test", "ghost@example.test"], MESSAGE);
    let d = relay.attempt(&env, 1).await.expect("per recipient");
    let alice = d.result_for(0).expect("alice delivered");
    assert_eq!(alice.code(), 250, "{alice:?}");
    let ghost = d.result_for(1).expect_err("ghost unknown");
    assert!(ghost.is_permanent(), "{ghost}");
    assert_eq!(
        ghost.reply().enhanced().unwrap().to_string(),
        "5.1.1",
        "{ghost}"
    );
    let got = dovecot.messages("alice");
    assert_eq!(got.len(), 1, "{}", dovecot.log());
    assert!(String::from_utf8_lossy(&got[0]).contains("Message-Id: <m1@x.test>"));

    // Without the daemon dovecot-lda cannot look users up: EX_TEMPFAIL.
    dovecot.stop();
    let d = relay
        .attempt(&envelope(&["alice@example.test"], MESSAGE), 2)
        .await
        .expect("per recipient");
    let e = d.result_for(0).expect_err("no dovecot running");
    assert!(e.is_transient(), "{e}");
    assert!(e.reply().text().contains("exited with 75"), "{e}");
    assert_eq!(dovecot.messages("alice").len(), 1);
}

#[tokio::test]
async fn exit_codes_are_classified_with_the_output_as_text() {
    let env = envelope(&["rcpt@y.test"], MESSAGE);
    let d = sh("cat >/dev/null; echo stored")
        .attempt(&env, 1)
        .await
        .expect("ok");
    assert_eq!(d.reply().code(), 250);
    assert!(d.reply().text().contains("stored"), "{:?}", d.reply());

    let e = sh("exit 75").attempt(&env, 1).await.expect_err("tempfail");
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().code(), 451);

    let e = sh("echo 'mailbox  unavailable' >&2; echo ignored; exit 1")
        .attempt(&env, 1)
        .await
        .expect_err("permanent");
    assert!(e.is_permanent(), "{e}");
    assert_eq!(e.reply().code(), 550);
    assert!(
        e.reply()
            .text()
            .ends_with("exited with 1: mailbox unavailable"),
        "{e}"
    );

    let e = sh("kill -TERM $$")
        .attempt(&env, 1)
        .await
        .expect_err("killed");
    assert!(e.is_transient(), "{e}");

    let e = PipeRelay::new(["/nonexistent/program"])
        .attempt(&env, 1)
        .await
        .expect_err("cannot start");
    assert!(e.is_transient(), "{e}");
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn templates_fill_the_arguments_per_recipient_or_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("args");
    let script = format!("cat >/dev/null; printf '%s\\n' \"$@\" >> {}", out.display());
    let command = [
        "/bin/sh",
        "-c",
        &script,
        "sh",
        "{sender}",
        "{message_id}",
        "{client_ip}",
        "{helo}",
        "[{client_host}]",
        "{recipient}",
    ];
    let env = envelope(&["a@y.test", "b@y.test"], MESSAGE);

    PipeRelay::new(command).attempt(&env, 1).await.expect("ran");
    assert_eq!(
        read_lines(&out),
        [
            "sender@x.test",
            "<m1@x.test>",
            "127.0.0.7",
            "client.test",
            "[]",
            "a@y.test",
            "b@y.test"
        ]
    );
    std::fs::remove_file(&out).unwrap();

    let d = PipeRelay::new(command)
        .per_recipient(true)
        .attempt(&env, 1)
        .await
        .expect("ran");
    assert!(d.result_for(0).is_ok() && d.result_for(1).is_ok());
    let lines = read_lines(&out);
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert_eq!(lines[5], "a@y.test");
    assert_eq!(lines[11], "b@y.test");

    // An address that would read as an option never reaches the program.
    let env = envelope(&["-oQ/tmp@y.test", "ok@y.test"], MESSAGE);
    std::fs::remove_file(&out).unwrap();
    let d = PipeRelay::new(command)
        .per_recipient(true)
        .attempt(&env, 1)
        .await
        .expect("ran");
    assert!(d.result_for(0).unwrap_err().is_permanent());
    assert!(d.result_for(1).is_ok());
    assert_eq!(read_lines(&out).len(), 6);
}

#[tokio::test]
async fn a_big_message_does_not_deadlock_against_a_chatty_program() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("message");
    // 2 MB to stderr before reading anything: far more than a pipe buffer.
    let script = format!(
        "head -c 2000000 /dev/zero | tr '\\0' e >&2; cat > {}; echo done",
        out.display()
    );
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    let line = [b'x'; 98];
    while message.len() < 20 * 1024 * 1024 {
        message.extend_from_slice(&line);
        message.extend_from_slice(b"\r\n");
    }
    let crlfs = message.windows(2).filter(|w| w == b"\r\n").count();
    let d = sh(&script)
        .attempt(&envelope(&["rcpt@y.test"], &message), 1)
        .await
        .expect("delivered");
    assert_eq!(d.reply().code(), 250, "{:?}", d.reply());
    let written = std::fs::metadata(&out).unwrap().len() as usize;
    assert_eq!(written, message.len() - crlfs, "CRLF became LF");
    // stderr is bounded and becomes the reply text.
    assert!(d.reply().text().len() < 1000);
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for a reaper is dead too.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_timeout_is_transient_and_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 300 & echo $$ $! > {}; wait", pids.display());
    let relay = PipeRelay::new(["/bin/sh", "-c", &script]).timeout(Duration::from_secs(1));
    let e = relay
        .attempt(&envelope(&["rcpt@y.test"], MESSAGE), 1)
        .await
        .expect_err("timed out");
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().enhanced().unwrap().to_string(), "4.4.2", "{e}");
    let text = std::fs::read_to_string(&pids).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in text.split_whitespace().map(|p| p.parse::<u32>().unwrap()) {
        while !process_gone(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} survived the timeout"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
