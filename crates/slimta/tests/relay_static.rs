//! StaticSmtpRelay against real peers: Postfix's smtp-sink (delivery, dumps,
//! fault injection) and, for byte-exact cases smtp-sink cannot produce, a
//! small scripted SMTP server on 127.0.0.1 inside the test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::relay::smtp::{ClientOptions, StaticSmtpRelay};
use slimta::{BodyType, Delivery, Envelope, Relay, RelayError};
use test_peers::{SmtpSink, crlf_to_lf, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

fn options() -> ClientOptions {
    ClientOptions::new()
        .ehlo_as("relay.test")
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(10))
}

fn relay_with(addr: SocketAddr, options: ClientOptions) -> StaticSmtpRelay {
    StaticSmtpRelay::new(addr.ip().to_string(), addr.port()).options(options)
}

fn relay_to(addr: SocketAddr) -> StaticSmtpRelay {
    relay_with(addr, options())
}

fn envelope(recipients: &[&str], message: &[u8]) -> Envelope {
    Envelope::new(
        "sender@x.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        message.to_vec(),
    )
}

const MESSAGE: &[u8] =
    b"From: sender@x.test\r\nTo: rcpt@y.test\r\nSubject: hello\r\n\r\nHello,\r\nworld.\r\n";

/// The outcome for recipient `index`, whether the attempt failed as a whole
/// or per recipient.
fn outcome(
    result: &Result<Delivery, RelayError>,
    index: usize,
) -> Result<slimta::Reply, RelayError> {
    match result {
        Ok(d) => d.result_for(index).cloned(),
        Err(e) => Err(e.clone()),
    }
}

#[tokio::test]
async fn delivers_the_message_unchanged() {
    let sink = SmtpSink::start(&[], true);
    let result = relay_to(sink.addr())
        .attempt(&envelope(&["rcpt@y.test"], MESSAGE), 1)
        .await;
    let delivery = result.expect("delivered");
    assert!(delivery.reply().is_positive(), "{:?}", delivery.reply());
    assert!(delivery.result_for(0).is_ok());
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_args, "<sender@x.test>");
    assert_eq!(got[0].rcpt_args, vec!["<rcpt@y.test>"]);
    assert_eq!(
        String::from_utf8_lossy(&got[0].content),
        String::from_utf8_lossy(&crlf_to_lf(MESSAGE))
    );
}

#[tokio::test]
async fn dot_stuffing_round_trips() {
    let sink = SmtpSink::start(&[], true);
    let message =
        b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle . dot\r\n. space\r\n.";
    let result = relay_to(sink.addr())
        .attempt(&envelope(&["rcpt@y.test"], message), 1)
        .await;
    assert!(result.expect("delivered").result_for(0).is_ok());
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    let mut want = crlf_to_lf(message);
    want.push(b'\n'); // the relay ends the last line
    assert_eq!(
        String::from_utf8_lossy(&got[0].content),
        String::from_utf8_lossy(&want)
    );
}

#[tokio::test]
async fn eight_bit_content_arrives_byte_for_byte() {
    let sink = SmtpSink::start(&[], true);
    let mut message = b"Subject: 8bit\r\nContent-Type: text/plain; charset=latin1\r\n\r\n".to_vec();
    let high: Vec<u8> = (0x80..=0xffu8).collect();
    for chunk in high.chunks(32) {
        message.extend_from_slice(chunk);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice("caf\u{e9} \u{1f600}\r\n".as_bytes());
    let mut env = envelope(&["rcpt@y.test"], &message);
    env.body = BodyType::EightBitMime;
    let result = relay_to(sink.addr()).attempt(&env, 1).await;
    assert!(result.expect("delivered").result_for(0).is_ok());
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_args, "<sender@x.test> BODY=8BITMIME");
    assert_eq!(got[0].content, crlf_to_lf(&message));
}

#[tokio::test]
async fn several_recipients_in_one_transaction() {
    let sink = SmtpSink::start(&[], true);
    let rcpts = ["a@y.test", "b@y.test", "c@z.test"];
    let result = relay_to(sink.addr())
        .attempt(&envelope(&rcpts, MESSAGE), 1)
        .await;
    let delivery = result.expect("delivered");
    for i in 0..rcpts.len() {
        assert!(delivery.result_for(i).is_ok(), "{i}");
    }
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].rcpt_args,
        vec!["<a@y.test>", "<b@y.test>", "<c@z.test>"]
    );
}

#[tokio::test]
async fn bare_line_ends_are_normalised_and_cannot_smuggle() {
    let tail = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n";
    let seqs: [&[u8]; 10] = [
        b"\n.\n",
        b"\n.\r",
        b"\r.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n\0.\r\n",
        b"\r\n.\0\r\n",
    ];
    let sink = SmtpSink::start(&[], true);
    let relay = relay_to(sink.addr());
    for seq in seqs {
        let mut message = b"Subject: smuggle\r\n\r\nx".to_vec();
        message.extend_from_slice(seq);
        message.extend_from_slice(tail);
        let result = relay
            .attempt(&envelope(&["rcpt@y.test"], &message), 1)
            .await;
        assert!(result.expect("delivered").result_for(0).is_ok(), "{seq:?}");
    }
    let got = sink.wait_for_messages(seqs.len(), Duration::from_secs(5));
    assert_eq!(
        got.len(),
        seqs.len(),
        "one message per attempt, nothing smuggled"
    );
    for m in &got {
        assert_eq!(m.mail_args, "<sender@x.test>");
        assert_eq!(m.rcpt_args, vec!["<rcpt@y.test>"]);
        let text = String::from_utf8_lossy(&m.content);
        assert!(
            text.contains("MAIL FROM:<evil@attacker.test>"),
            "the smuggled part stays content: {text:?}"
        );
        assert!(text.ends_with("hidden\n.\n"), "{text:?}");
    }
}

#[tokio::test]
async fn sink_faults_are_classified_by_stage() {
    struct Case {
        flag: &'static str,
        command: &'static str,
        permanent: bool,
        code: u16,
        text: &'static str,
    }
    let case = |flag, command, permanent, code, text| Case {
        flag,
        command,
        permanent,
        code,
        text,
    };
    let cases = [
        case("-r", "MAIL", false, 450, "(in reply to MAIL FROM)"),
        case("-f", "MAIL", true, 500, "(in reply to MAIL FROM)"),
        case(
            "-q",
            "MAIL",
            false,
            451,
            "while waiting for MAIL FROM reply",
        ),
        case("-Q", "MAIL", false, 421, "(in reply to MAIL FROM)"),
        case("-r", "RCPT", false, 450, "(in reply to RCPT TO)"),
        case("-f", "RCPT", true, 500, "(in reply to RCPT TO)"),
        case("-q", "RCPT", false, 451, "while waiting for RCPT TO reply"),
        case("-Q", "RCPT", false, 421, "(in reply to RCPT TO)"),
        case("-r", "DATA", false, 450, "(in reply to DATA)"),
        case("-f", "DATA", true, 500, "(in reply to DATA)"),
        case("-q", "DATA", false, 451, "while waiting for DATA reply"),
        case("-Q", "DATA", false, 421, "(in reply to DATA)"),
        case("-r", ".", false, 450, "(in reply to end of data)"),
        case("-f", ".", true, 500, "(in reply to end of data)"),
        case("-q", ".", false, 451, "while waiting for end of data reply"),
        case("-Q", ".", false, 421, "(in reply to end of data)"),
        case("-r", "EHLO", false, 450, "(in reply to EHLO)"),
        case("-Q", "EHLO", false, 421, "(in reply to EHLO)"),
        case("-f", "EHLO,HELO", true, 500, "(in reply to HELO)"),
        case("-f", "CONNECT", true, 500, "(in reply to banner)"),
        case("-Q", "CONNECT", false, 421, "(in reply to banner)"),
    ];
    for c in cases {
        let sink = SmtpSink::start(&[c.flag, c.command], true);
        let rcpts = ["a@y.test", "b@y.test"];
        let result = relay_to(sink.addr())
            .attempt(&envelope(&rcpts, MESSAGE), 1)
            .await;
        let what = format!("{} {}: {result:?}", c.flag, c.command);
        for i in 0..rcpts.len() {
            let err = outcome(&result, i).expect_err(&what);
            assert_eq!(err.is_permanent(), c.permanent, "{what}");
            assert_eq!(err.is_transient(), !c.permanent, "{what}");
            let reply = err.reply();
            // smtp-sink's own codes; the hard ones vary by command, so only
            // the class is checked for them.
            if c.permanent {
                assert!(reply.is_permanent(), "{what}");
            } else {
                assert_eq!(reply.code() / 10, c.code / 10, "{what}");
            }
            assert!(reply.enhanced().is_some(), "{what}");
            let port = sink.addr().port().to_string();
            assert!(reply.text().contains(&port), "names the peer: {what}");
            assert!(reply.text().contains(c.text), "names the stage: {what}");
        }
        // smtp-sink dumps the data before it answers the final dot.
        if c.command != "." {
            assert!(sink.messages().is_empty(), "{what}");
        }
    }
}

#[tokio::test]
async fn helo_fallback_when_ehlo_is_refused() {
    let sink = SmtpSink::start(&["-f", "EHLO"], true);
    let result = relay_to(sink.addr())
        .attempt(&envelope(&["rcpt@y.test"], MESSAGE), 1)
        .await;
    assert!(result.expect("delivered").result_for(0).is_ok());
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content, crlf_to_lf(MESSAGE));
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = free_port();
    let result = relay_to(SocketAddr::from(([127, 0, 0, 1], port)))
        .attempt(&envelope(&["rcpt@y.test"], MESSAGE), 1)
        .await;
    let err = result.expect_err("nothing listens");
    assert!(err.is_transient());
    assert_eq!(err.reply().code(), 451);
    assert_eq!(
        err.reply().enhanced().map(|e| e.to_string()),
        Some("4.4.1".into())
    );
    let want = format!("Connection to 127.0.0.1:{port} failed: ");
    assert!(err.reply().text().starts_with(&want), "{err}");
}

/// What a scripted server saw.
#[derive(Debug, Default)]
struct Transcript {
    commands: Vec<String>,
    data: Vec<Vec<u8>>,
}

/// A one-connection SMTP server that answers each command line with
/// `respond(line)`; after a `354` it reads data up to `CRLF.CRLF` and
/// answers with `respond(".")`. An empty answer closes the connection; `None`
/// stays silent. `writes` splits every answer into pieces of that many bytes,
/// each written (and flushed) separately.
async fn scripted(
    banner: &'static str,
    writes: usize,
    respond: impl Fn(&str) -> Option<String> + Send + 'static,
) -> (SocketAddr, Arc<Mutex<Transcript>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let transcript = Arc::new(Mutex::new(Transcript::default()));
    let seen = transcript.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let send = async |write: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]| {
            for piece in bytes.chunks(writes.max(1)) {
                if write.write_all(piece).await.is_err() {
                    return;
                }
                let _ = write.flush().await;
                tokio::task::yield_now().await;
            }
        };
        send(&mut write, banner.as_bytes()).await;
        let mut line = Vec::new();
        loop {
            line.clear();
            if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let command = String::from_utf8_lossy(&line).trim_end().to_string();
            seen.lock().unwrap().commands.push(command.clone());
            let Some(mut answer) = respond(&command) else {
                continue;
            };
            if answer.is_empty() {
                return;
            }
            if answer.starts_with("354") {
                send(&mut write, answer.as_bytes()).await;
                let mut data = Vec::new();
                while !data.ends_with(b"\r\n.\r\n") && data != b".\r\n" {
                    if read.read_until(b'\n', &mut data).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                seen.lock().unwrap().data.push(data);
                match respond(".") {
                    Some(a) if !a.is_empty() => answer = a,
                    _ => return,
                }
            }
            send(&mut write, answer.as_bytes()).await;
        }
    });
    (addr, transcript)
}

const EHLO_PIPELINING: &str =
    "250-scripted.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n";

#[tokio::test]
async fn one_recipient_of_three_refused() {
    let (addr, transcript) = scripted("220 scripted.test ESMTP\r\n", 1024, |cmd| {
        Some(
            match cmd {
                c if c.starts_with("EHLO") => EHLO_PIPELINING,
                c if c.starts_with("MAIL") => "250 2.1.0 Ok\r\n",
                "RCPT TO:<unknown@y.test>" => "550-5.1.1 No such\r\n550 5.1.1 user here\r\n",
                "RCPT TO:<full@y.test>" => "452 4.2.2 Mailbox full\r\n",
                c if c.starts_with("RCPT") => "250 2.1.5 Ok\r\n",
                "DATA" => "354 Go ahead\r\n",
                "." => "250 2.0.0 Ok: queued as 42\r\n",
                "QUIT" => "221 2.0.0 Bye\r\n",
                _ => "500 5.5.2 What?\r\n",
            }
            .to_string(),
        )
    })
    .await;
    let rcpts = ["ok@y.test", "unknown@y.test", "full@y.test", "ok2@y.test"];
    let env = envelope(&rcpts, MESSAGE);
    let delivery = relay_to(addr)
        .attempt(&env, 1)
        .await
        .expect("per recipient");
    assert_eq!(delivery.reply().to_string(), "250 2.0.0 Ok: queued as 42");
    assert_eq!(
        delivery.result_for(0).unwrap().to_string(),
        "250 2.0.0 Ok: queued as 42"
    );
    let unknown = delivery.result_for(1).unwrap_err();
    assert!(unknown.is_permanent());
    assert_eq!(
        unknown.reply().to_string(),
        format!("550 5.1.1 {addr} said: No such user here (in reply to RCPT TO)")
    );
    let full = delivery.result_for(2).unwrap_err();
    assert!(full.is_transient());
    assert_eq!(full.reply().enhanced().unwrap().to_string(), "4.2.2");
    assert!(delivery.result_for(3).is_ok());
    let t = transcript.lock().unwrap();
    assert_eq!(
        t.commands,
        [
            "EHLO relay.test",
            &format!("MAIL FROM:<sender@x.test> SIZE={}", MESSAGE.len()),
            "RCPT TO:<ok@y.test>",
            "RCPT TO:<unknown@y.test>",
            "RCPT TO:<full@y.test>",
            "RCPT TO:<ok2@y.test>",
            "DATA",
            "QUIT",
        ]
    );
    let mut want = MESSAGE.to_vec();
    want.extend_from_slice(b".\r\n");
    assert_eq!(t.data, vec![want]);
}

#[tokio::test]
async fn replies_split_into_single_bytes() {
    let (addr, transcript) = scripted("220-scripted.test\r\n220 ESMTP\r\n", 1, |cmd| {
        Some(
            match cmd {
                c if c.starts_with("EHLO") => EHLO_PIPELINING,
                c if c.starts_with("MAIL") => "250 2.1.0 Ok\r\n",
                c if c.starts_with("RCPT") => "250-2.1.5 Ok\r\n250 2.1.5 really\r\n",
                "DATA" => "354 Go ahead\r\n",
                "." => "250-2.0.0 Ok\r\n250 2.0.0 queued\r\n",
                "QUIT" => "221 2.0.0 Bye\r\n",
                _ => "500 5.5.2 What?\r\n",
            }
            .to_string(),
        )
    })
    .await;
    let delivery = relay_to(addr)
        .attempt(&envelope(&["a@y.test", "b@y.test"], MESSAGE), 1)
        .await;
    let delivery = delivery.expect("delivered");
    assert_eq!(delivery.result_for(1).unwrap().text(), "Ok\nqueued");
    assert_eq!(transcript.lock().unwrap().data.len(), 1);
}

#[tokio::test]
async fn no_accepted_recipient_means_no_data_in_lockstep() {
    let (addr, transcript) = scripted("220 scripted.test\r\n", 1024, |cmd| {
        Some(
            match cmd {
                c if c.starts_with("EHLO") => "250 scripted.test\r\n",
                c if c.starts_with("MAIL") => "250 Ok\r\n",
                "RCPT TO:<a@y.test>" => "550 No\r\n",
                c if c.starts_with("RCPT") => "451 Later\r\n",
                "RSET" => "250 Ok\r\n",
                "QUIT" => "221 Bye\r\n",
                _ => "500 What?\r\n",
            }
            .to_string(),
        )
    })
    .await;
    let delivery = relay_to(addr)
        .attempt(&envelope(&["a@y.test", "b@y.test"], MESSAGE), 1)
        .await;
    let delivery = delivery.expect("per recipient");
    let a = delivery.result_for(0).unwrap_err();
    assert!(a.is_permanent());
    assert_eq!(a.reply().enhanced().unwrap().to_string(), "5.0.0");
    assert!(delivery.result_for(1).unwrap_err().is_transient());
    let t = transcript.lock().unwrap();
    assert_eq!(
        t.commands,
        [
            "EHLO relay.test",
            "MAIL FROM:<sender@x.test>",
            "RCPT TO:<a@y.test>",
            "RCPT TO:<b@y.test>",
            "RSET",
            "QUIT"
        ]
    );
}

#[tokio::test]
async fn pipelined_refused_recipients_and_data() {
    // A pipelining server that refuses every recipient and then DATA.
    let (addr, transcript) = scripted("220 scripted.test\r\n", 1024, |cmd| {
        Some(
            match cmd {
                c if c.starts_with("EHLO") => "250-scripted.test\r\n250 PIPELINING\r\n",
                c if c.starts_with("MAIL") => "250 Ok\r\n",
                c if c.starts_with("RCPT") => "550 5.1.1 No\r\n",
                "DATA" => "554 5.5.1 No valid recipients\r\n",
                "RSET" => "250 Ok\r\n",
                "QUIT" => "221 Bye\r\n",
                _ => "500 What?\r\n",
            }
            .to_string(),
        )
    })
    .await;
    let delivery = relay_to(addr)
        .attempt(&envelope(&["a@y.test"], MESSAGE), 1)
        .await;
    let err = delivery.expect("per recipient").result_for(0).unwrap_err();
    assert!(err.is_permanent());
    assert!(err.reply().text().contains("(in reply to RCPT TO)"));
    let t = transcript.lock().unwrap();
    assert_eq!(
        t.commands,
        [
            "EHLO relay.test",
            "MAIL FROM:<sender@x.test>",
            "RCPT TO:<a@y.test>",
            "DATA",
            "RSET",
            "QUIT"
        ]
    );
    assert!(t.data.is_empty());
}

#[tokio::test]
async fn silent_server_times_out_transiently() {
    let (addr, _t) = scripted("220 scripted.test\r\n", 1024, |cmd| match cmd {
        c if c.starts_with("EHLO") => Some("250 scripted.test\r\n".into()),
        c if c.starts_with("MAIL") => Some("250 Ok\r\n".into()),
        c if c.starts_with("RCPT") => Some("250 Ok\r\n".into()),
        _ => None,
    })
    .await;
    let relay = relay_with(addr, options().command_timeout(Duration::from_millis(300)));
    let result = relay.attempt(&envelope(&["a@y.test"], MESSAGE), 1).await;
    let err = outcome(&result, 0).unwrap_err();
    assert!(err.is_transient());
    assert_eq!(
        err.reply().to_string(),
        format!("451 4.4.2 Timed out waiting for DATA reply from {addr}")
    );
}

#[tokio::test]
async fn garbage_and_oversized_replies_are_transient() {
    let (addr, _t) = scripted("220 scripted.test\r\n", 1024, |cmd| match cmd {
        c if c.starts_with("EHLO") => Some("250 scripted.test\r\n".into()),
        c if c.starts_with("MAIL") => Some("hello there\r\n".into()),
        _ => Some("".into()),
    })
    .await;
    let err = relay_to(addr)
        .attempt(&envelope(&["a@y.test"], MESSAGE), 1)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(
        err.reply()
            .text()
            .starts_with(&format!("Invalid reply from {addr} to MAIL FROM")),
        "{err}"
    );

    let huge = "250-x\r\n".repeat(200);
    let (addr, _t) = scripted("220 scripted.test\r\n", 4096, move |cmd| match cmd {
        c if c.starts_with("EHLO") => Some(huge.clone()),
        _ => Some("".into()),
    })
    .await;
    let err = relay_to(addr)
        .attempt(&envelope(&["a@y.test"], MESSAGE), 1)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(err.reply().text().contains("too many lines"), "{err}");
}

#[tokio::test]
async fn message_over_the_advertised_size_is_refused_before_mail() {
    let (addr, transcript) = scripted("220 scripted.test\r\n", 1024, |cmd| match cmd {
        c if c.starts_with("EHLO") => Some("250-scripted.test\r\n250 SIZE 10\r\n".into()),
        "QUIT" => Some("221 Bye\r\n".into()),
        _ => Some("500 What?\r\n".into()),
    })
    .await;
    let err = relay_to(addr)
        .attempt(&envelope(&["a@y.test"], MESSAGE), 1)
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.reply().code(), 552);
    assert_eq!(
        transcript.lock().unwrap().commands,
        ["EHLO relay.test", "QUIT"]
    );
}

#[tokio::test]
async fn many_recipients_beyond_the_pipelining_batch() {
    let sink = SmtpSink::start(&[], true);
    let rcpts: Vec<String> = (0..150).map(|i| format!("r{i}@y.test")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let delivery = relay_to(sink.addr())
        .attempt(&envelope(&refs, MESSAGE), 1)
        .await
        .expect("delivered");
    for i in 0..rcpts.len() {
        assert!(delivery.result_for(i).is_ok(), "{i}");
    }
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    let want: Vec<String> = rcpts.iter().map(|r| format!("<{r}>")).collect();
    assert_eq!(got[0].rcpt_args, want);
}

#[tokio::test]
async fn smtputf8_is_declared_only_when_offered_and_needed() {
    // smtp-sink does not offer SMTPUTF8.
    let sink = SmtpSink::start(&[], true);
    let relay = relay_to(sink.addr());
    let mut env = envelope(&["\u{7528}\u{6237}@y.test"], MESSAGE);
    env.smtputf8 = true;
    let err = relay.attempt(&env, 1).await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.reply().enhanced().unwrap().to_string(), "5.6.7");
    // ASCII addresses go through without it.
    let mut env = envelope(&["ascii@y.test"], MESSAGE);
    env.smtputf8 = true;
    assert!(relay.attempt(&env, 1).await.unwrap().result_for(0).is_ok());
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_args, "<sender@x.test>");

    // A server that offers it gets it, with the address byte for byte.
    let (addr, transcript) = scripted("220 scripted.test\r\n", 1024, |cmd| {
        Some(
            match cmd {
                c if c.starts_with("EHLO") => "250-scripted.test\r\n250 SMTPUTF8\r\n",
                c if c.starts_with("MAIL") || c.starts_with("RCPT") => "250 Ok\r\n",
                "DATA" => "354 Go ahead\r\n",
                "." => "250 Ok\r\n",
                "QUIT" => "221 Bye\r\n",
                _ => "500 What?\r\n",
            }
            .to_string(),
        )
    })
    .await;
    let mut env = envelope(&["\u{7528}\u{6237}@y.test"], MESSAGE);
    env.smtputf8 = true;
    assert!(
        relay_to(addr)
            .attempt(&env, 1)
            .await
            .unwrap()
            .result_for(0)
            .is_ok()
    );
    let t = transcript.lock().unwrap();
    assert_eq!(t.commands[1], "MAIL FROM:<sender@x.test> SMTPUTF8");
    assert_eq!(t.commands[2], "RCPT TO:<\u{7528}\u{6237}@y.test>");
}

#[tokio::test]
async fn addresses_with_control_characters_are_never_sent() {
    let sink = SmtpSink::start(&[], true);
    let relay = relay_to(sink.addr());
    let rcpts = ["good@y.test", "evil@y.test>\r\nRCPT TO:<injected@y.test"];
    let delivery = relay
        .attempt(&envelope(&rcpts, MESSAGE), 1)
        .await
        .expect("per recipient");
    assert!(delivery.result_for(0).is_ok());
    let bad = delivery.result_for(1).unwrap_err();
    assert!(bad.is_permanent());
    assert_eq!(bad.reply().code(), 501);
    let got = sink.wait_for_messages(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_args, vec!["<good@y.test>"]);

    let mut env = envelope(&["good@y.test"], MESSAGE);
    env.sender = "a@x.test>\r\nRSET".into();
    let err = relay.attempt(&env, 1).await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.reply().enhanced().unwrap().to_string(), "5.1.7");
}

#[tokio::test]
async fn connects_from_the_configured_source_address() {
    let sink = SmtpSink::start(&[], true);
    let relay = relay_with(
        sink.addr(),
        options().source_address("127.0.0.5".parse().unwrap()),
    );
    assert!(
        relay
            .attempt(&envelope(&["rcpt@y.test"], MESSAGE), 1)
            .await
            .unwrap()
            .result_for(0)
            .is_ok()
    );
    assert_eq!(sink.wait_for_messages(1, Duration::from_secs(5)).len(), 1);
    let dir = sink.dump_dir().unwrap();
    let dumps: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned())
        .collect();
    assert_eq!(dumps.len(), 1);
    assert!(
        dumps[0].starts_with("X-Client-Addr: 127.0.0.5\n"),
        "{:?}",
        dumps[0]
    );
}
