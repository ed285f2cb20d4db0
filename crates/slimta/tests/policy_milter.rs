//! The milter queue policy against real filters behind a real SMTP edge:
//! clamav-milter (EICAR refused with its reply, clean mail passes with its
//! headers), OpenDKIM signing (its DKIM-Signature is in the stored message),
//! rspamd's proxy in milter mode (GTUBE refused with 554 5.7.1), and a
//! filter that never answers or closes the connection handled by
//! `on_error`.

mod scanner_support;

use std::io::Read;
use std::time::Duration;

use scanner_support::{Mta, closed_port, gtube_message, header, silent_listener};
use slimta::policy::milter::{Milter, MilterAddress, OnError};

/// A message with the EICAR test file as a base64 attachment.
fn eicar_message() -> String {
    use base64::Engine;
    let file = base64::engine::general_purpose::STANDARD.encode(test_peers::EICAR);
    format!(
        "From: a@x.test\r\nTo: b@example.test\r\nSubject: eicar\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"eicar.com\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{file}\r\n--b1--\r\n"
    )
}

/// A clean message from a domain OpenDKIM signs for.
fn clean_message() -> String {
    "From: a@example.test\r\nTo: b@example.test\r\nSubject: lunch\r\n\
     Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-Id: <lunch@example.test>\r\n\r\n\
     Shall we have lunch on Friday at noon?\r\n"
        .to_owned()
}

fn milter(addr: std::net::SocketAddr) -> Milter {
    Milter::new(addr).timeout(Duration::from_secs(30))
}

#[tokio::test]
async fn clamav_refuses_eicar_with_its_reply_and_nothing_is_queued() {
    let clam = test_peers::ClamAv::start();
    let mta = Mta::start(milter(clam.milter_addr())).await;
    let reply = mta.send(&eicar_message()).await;
    // clamav-milter's RejectMsg ("Virus found: %v") as an SMFIR_REPLYCODE;
    // a signature from a local .hdb is named ".UNOFFICIAL".
    assert_eq!(
        reply,
        "550 5.7.1 Virus found: Eicar-Test-Signature.UNOFFICIAL",
        "{}",
        clam.log()
    );
    assert!(mta.queued().await.is_empty());
}

#[tokio::test]
async fn clamav_passes_clean_mail_with_its_status_header() {
    let clam = test_peers::ClamAv::start();
    let mta = Mta::start(milter(clam.milter_addr())).await;
    let reply = mta.send(&clean_message()).await;
    assert!(reply.starts_with("250 "), "{reply}\n{}", clam.log());
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    let message = &queued[0];
    assert_eq!(
        header(message, "X-Virus-Status").as_deref(),
        Some("Clean"),
        "{message}"
    );
    assert!(
        message.ends_with("\r\n\r\nShall we have lunch on Friday at noon?\r\n"),
        "{message}"
    );
}

#[tokio::test]
async fn opendkim_signs_and_its_signature_is_stored() {
    let dkim = test_peers::OpenDkim::start();
    let mta = Mta::start(milter(dkim.milter_addr())).await;
    let reply = mta.send(&clean_message()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let queued = mta.queued().await;
    assert_eq!(queued.len(), 1);
    let message = &queued[0];
    let signature = header(message, "DKIM-Signature").unwrap_or_else(|| panic!("{message}"));
    assert!(signature.contains("d=example.test"), "{signature}");
    assert!(signature.contains("s=rsa"), "{signature}");
    assert!(signature.contains("c=relaxed/simple"), "{signature}");
    // OpenDKIM inserts its field on top, folded with CRLF and white space.
    assert!(message.starts_with("DKIM-Signature: "), "{message}");
    let head = message.split("\r\n\r\n").next().unwrap();
    assert!(
        head.split("\r\n")
            .all(|l| !l.is_empty() && (l.contains(':') || l.starts_with([' ', '\t']))),
        "{message}"
    );
    assert!(
        dkim_verifies(message.as_bytes(), &dkim.dns_record()),
        "dkimpy does not verify it: {message}"
    );
}

/// Whether dkimpy (an independent DKIM implementation, from PyPI in a venv
/// under target/) verifies `message` with the key `record` (opendkim-genkey's
/// zone file line).
fn dkim_verifies(message: &[u8], record: &str) -> bool {
    let python = test_peers::python_with("dkimpy", "dkim");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("message"), message).unwrap();
    std::fs::write(dir.path().join("record"), record).unwrap();
    let script = "import dkim, re, sys\n\
        d = sys.argv[1]\n\
        txt = ''.join(re.findall(r'\"([^\"]*)\"', open(d + '/record').read())).encode()\n\
        def dns(name, timeout=5):\n    return txt if name == b'rsa._domainkey.example.test.' else None\n\
        ok = dkim.verify(open(d + '/message', 'rb').read(), dnsfunc=dns)\n\
        print(ok)\n\
        sys.exit(0 if ok else 1)\n";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    eprintln!(
        "dkimpy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

#[tokio::test]
async fn rspamd_milter_refuses_gtube() {
    let rspamd = test_peers::Rspamd::shared();
    let mta = Mta::start(milter(rspamd.milter_addr())).await;
    let reply = mta.send(&gtube_message()).await;
    assert_eq!(reply, "554 5.7.1 Gtube pattern", "{}", rspamd.log());
    assert!(mta.queued().await.is_empty());
}

#[tokio::test]
async fn rspamd_milter_passes_clean_mail() {
    let rspamd = test_peers::Rspamd::shared();
    let mta = Mta::start(milter(rspamd.milter_addr())).await;
    let reply = mta.send(&clean_message()).await;
    assert!(reply.starts_with("250 "), "{reply}\n{}", rspamd.log());
    assert_eq!(mta.queued().await.len(), 1);
}

#[tokio::test]
async fn rspamd_milter_header_changes_are_applied() {
    // The test rspamd adds headers from score 3 (missing Date and
    // Message-Id score 3.4), through SMFIR_ADDHEADER / SMFIR_CHGHEADER.
    let rspamd = test_peers::Rspamd::shared();
    let mta = Mta::start(milter(rspamd.milter_addr())).await;
    let message = "From: a@x.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello\r\n";
    let reply = mta.send(message).await;
    assert!(reply.starts_with("250 "), "{reply}\n{}", rspamd.log());
    let queued = mta.queued().await;
    let stored = &queued[0];
    assert_eq!(
        header(stored, "X-Spamd-Bar").as_deref(),
        Some("+++"),
        "{stored}"
    );
    assert!(header(stored, "X-Spam").is_some(), "{stored}");
    assert!(stored.ends_with("\r\n\r\nHello\r\n"), "{stored}");
}

#[tokio::test]
async fn a_silent_filter_times_out_into_on_error() {
    let silent = silent_listener();
    let addr = silent.local_addr().unwrap();
    let quick = || Milter::new(addr).timeout(Duration::from_millis(300));

    let mta = Mta::start(quick().on_error(OnError::Tempfail)).await;
    assert_eq!(
        mta.send(&clean_message()).await,
        "451 4.7.1 Message could not be checked, try again later"
    );
    assert!(mta.queued().await.is_empty());

    let mta = Mta::start(quick().on_error(OnError::Accept)).await;
    assert!(mta.send(&clean_message()).await.starts_with("250 "));
    assert_eq!(mta.queued().await, [clean_message()]);
}

/// A filter that reads the negotiation and closes the connection.
fn closing_filter() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0u8; 17];
            let _ = stream.read_exact(&mut head);
        }
    });
    addr
}

#[tokio::test]
async fn a_filter_that_closes_or_is_not_there_gets_on_error() {
    for addr in [closing_filter(), closed_port()] {
        let mta = Mta::start(Milter::new(addr)).await;
        assert_eq!(
            mta.send(&clean_message()).await,
            "451 4.7.1 Message could not be checked, try again later",
            "{addr}"
        );
        let mta = Mta::start(Milter::new(addr).on_error(OnError::Accept)).await;
        assert!(mta.send(&clean_message()).await.starts_with("250 "));
        assert_eq!(mta.queued().await.len(), 1);
    }
}

#[tokio::test]
async fn a_unix_socket_address_is_reached() {
    let dkim = test_peers::OpenDkim::start_unix();
    let address: MilterAddress = format!("unix:{}", dkim.socket_path().display())
        .parse()
        .unwrap();
    let mta = Mta::start(Milter::new(address)).await;
    assert!(mta.send(&clean_message()).await.starts_with("250 "));
    let queued = mta.queued().await;
    assert!(queued[0].starts_with("DKIM-Signature: "), "{}", queued[0]);

    let missing: MilterAddress = "unix:/nonexistent/milter.sock".parse().unwrap();
    let mta = Mta::start(Milter::new(missing)).await;
    assert_eq!(
        mta.send(&clean_message()).await,
        "451 4.7.1 Message could not be checked, try again later"
    );
}
