//! Bounces and delay warnings: delivery status notifications (RFC 3464
//! inside an RFC 6522 `multipart/report`).
//!
//! The queue calls [`report`] when an attempt ends with permanent failures
//! (or the backoff gave up), queues the result as a new message, and only
//! then records the failed recipients as done, so a crash between the two
//! cannot lose the bounce (it may duplicate it). [`delay_warning`] builds
//! the optional `Action: delayed` report, and [`postmaster_report`] the
//! notice about a bounce that could not be delivered.
//!
//! Decisions:
//! - A report is sent from the null reverse path `<>` and never to it: a
//!   failed message whose sender is `<>` (itself a bounce) gets no report to
//!   its sender. The queue may send a [`postmaster_report`] about it to the
//!   configured postmaster instead; a failed message from `<>` whose failed
//!   recipient *is* the postmaster gets nothing, which is what stops loops
//!   (RFC 5321 section 6.1).
//! - The third part returns the whole original message by default
//!   (`message/rfc822`, or `message/global` when the original used SMTPUTF8,
//!   RFC 6532/6533), like Postfix and Exim, so the sender can see exactly
//!   what failed. With `headers_only` it is the header section alone
//!   (`text/rfc822-headers`, or `message/global-headers`). A `BINARYMIME`
//!   original always gets headers only: its body may not survive a
//!   line-oriented `8bit` part.
//! - Per-recipient fields are `Final-Recipient`, `Action`, `Status` (the
//!   reply's enhanced code; `5.0.0`/`4.0.0` when it has none), `Remote-MTA`
//!   when the relay knows which server answered, and `Diagnostic-Code: smtp;
//!   <the reply>`. Addresses that are not ASCII use the `utf-8` address type
//!   and `message/global-delivery-status` (RFC 6533); only then does the
//!   report itself need SMTPUTF8.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::date;
use crate::envelope::{BodyType, ClientInfo, Envelope, Protocol};
use crate::reply::Reply;

/// One recipient that will not get the message (or not yet), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The address as the original envelope had it.
    pub recipient: String,
    /// The reply that explains the failure.
    pub reply: Reply,
    /// The server that gave the reply (`Remote-MTA`), when known.
    pub remote_mta: Option<String>,
}

/// What every report needs besides the original and the recipients.
#[derive(Clone, Debug)]
pub struct ReportOptions<'a> {
    /// This host's name: `Reporting-MTA` and the `From:` domain.
    pub reporting_mta: &'a str,
    /// Return only the original header section, not the whole message.
    pub headers_only: bool,
    /// The report's date and receive time.
    pub now: SystemTime,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Failed,
    Delayed { until: Option<SystemTime> },
}

/// Builds the bounce for `failed` recipients of `original`, from `<>` to
/// the original sender, or `None` if the original sender is `<>` (or
/// nothing failed).
pub fn report(
    original: &Envelope,
    failed: &[FailedRecipient],
    options: &ReportOptions<'_>,
) -> Option<Envelope> {
    if original.sender.is_empty() || failed.is_empty() {
        return None;
    }
    Some(build(
        original,
        failed,
        &original.sender,
        Action::Failed,
        options,
    ))
}

/// Builds the warning (`Action: delayed`) for recipients of `original`
/// that are still being retried, from `<>` to the original sender, or
/// `None` if the sender is `<>`. `retry_until` is when the queue will give
/// up (`Will-Retry-Until`), when known.
pub fn delay_warning(
    original: &Envelope,
    delayed: &[FailedRecipient],
    retry_until: Option<SystemTime>,
    options: &ReportOptions<'_>,
) -> Option<Envelope> {
    if original.sender.is_empty() || delayed.is_empty() {
        return None;
    }
    Some(build(
        original,
        delayed,
        &original.sender,
        Action::Delayed { until: retry_until },
        options,
    ))
}

/// Builds the notice to `postmaster` that `bounce` (a message from `<>`,
/// normally one of our own reports) could not be delivered to `failed`, or
/// `None` if one of them is the postmaster itself (a failed notice is not
/// reported again: that would loop).
pub fn postmaster_report(
    bounce: &Envelope,
    failed: &[FailedRecipient],
    postmaster: &str,
    options: &ReportOptions<'_>,
) -> Option<Envelope> {
    if failed.is_empty()
        || failed
            .iter()
            .any(|f| f.recipient.eq_ignore_ascii_case(postmaster))
    {
        return None;
    }
    Some(build(bounce, failed, postmaster, Action::Failed, options))
}

fn build(
    original: &Envelope,
    failed: &[FailedRecipient],
    to: &str,
    action: Action,
    options: &ReportOptions<'_>,
) -> Envelope {
    let reporting_mta = options.reporting_mta;
    let global = !to.is_ascii() || failed.iter().any(|f| !f.recipient.is_ascii());
    let kind = if global {
        "global-delivery-status"
    } else {
        "delivery-status"
    };
    let boundary = format!("=_slimta_{}", uuid::Uuid::new_v4().simple());
    let (subject, intro) = match action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.\r\n\
             It has been given up on; the reasons follow.",
        ),
        Action::Delayed { .. } => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered to one or more recipients yet.\r\n\
             This is only a warning: delivery will be retried, and you need\r\n\
             not send the message again. The reasons so far follow.",
        ),
    };
    let mut m = String::with_capacity(2048);
    // Writes to a String cannot fail.
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type={kind};\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is the mail system at host {reporting_mta}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        date = date::rfc5322(options.now),
        id = uuid::Uuid::new_v4().simple(),
    );
    for f in failed {
        let _ = write!(m, "<{}>: {}\r\n", f.recipient, one_line(&f.reply));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/{kind}\r\n\
         \r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n\
         Arrival-Date: {arrival}\r\n",
        arrival = date::rfc5322(original.receive_time),
    );
    for f in failed {
        let (action_name, default_status) = match action {
            Action::Failed => ("failed", "5.0.0"),
            Action::Delayed { .. } => ("delayed", "4.0.0"),
        };
        let status = f
            .reply
            .enhanced()
            .map_or_else(|| default_status.to_owned(), |e| e.to_string());
        let address_type = if f.recipient.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let _ = write!(
            m,
            "\r\nFinal-Recipient: {address_type}; {}\r\n\
             Action: {action_name}\r\n\
             Status: {status}\r\n",
            f.recipient,
        );
        if let Some(remote) = &f.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", one_line_str(remote));
        }
        let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", one_line(&f.reply));
        if let Action::Delayed { until: Some(until) } = action {
            let _ = write!(m, "Will-Retry-Until: {}\r\n", date::rfc5322(until));
        }
    }
    let headers_only = options.headers_only || original.body == BodyType::BinaryMime;
    let returned: &[u8] = if headers_only {
        let headers = &original.message[..original.header_len()];
        headers
            .strip_suffix(b"\r\n\r\n")
            .map_or(headers, |h| &headers[..h.len() + 2])
    } else {
        &original.message
    };
    let content_type = match (headers_only, original.smtputf8) {
        (true, false) => "text/rfc822-headers",
        (true, true) => "message/global-headers",
        (false, false) => "message/rfc822",
        (false, true) => "message/global",
    };
    let _ = write!(m, "\r\n--{boundary}\r\nContent-Type: {content_type}\r\n");
    if !returned.is_ascii() {
        m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    m.push_str("\r\n");
    let mut message = m.into_bytes();
    message.extend_from_slice(returned);
    if !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let eight_bit = !message.is_ascii();
    Envelope {
        sender: String::new(),
        recipients: vec![to.to_owned()],
        message,
        client: ClientInfo {
            protocol: Protocol::Local,
            ..ClientInfo::default()
        },
        receive_time: options.now,
        body: if eight_bit {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: global,
    }
}

/// The reply on one line, as a header field value can carry it.
fn one_line(reply: &Reply) -> String {
    one_line_str(&reply.to_string())
}

fn one_line_str(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn opts(headers_only: bool, now: SystemTime) -> ReportOptions<'static> {
        ReportOptions {
            reporting_mta: "mx.example.test",
            headers_only,
            now,
        }
    }

    fn failure(recipient: &str, reply: Reply) -> FailedRecipient {
        FailedRecipient {
            recipient: recipient.into(),
            reply,
            remote_mta: None,
        }
    }

    fn original() -> Envelope {
        let mut e = Envelope::new(
            "alice@example.test",
            vec!["bob@x.test".into(), "carol@y.test".into()],
            b"Subject: lunch\r\nMessage-ID: <1@example.test>\r\n\r\nsecret body\r\n".to_vec(),
        );
        e.receive_time = at(1_795_274_862);
        e
    }

    #[test]
    fn a_report_for_each_failed_recipient() {
        let failed = [
            FailedRecipient {
                remote_mta: Some("mx.x.test".into()),
                ..failure("bob@x.test", Reply::new(550, "5.1.1", "no such user"))
            },
            failure("carol@y.test", Reply::new(554, "", "gave up")),
        ];
        let b = report(&original(), &failed, &opts(true, at(1_795_400_000))).unwrap();
        assert_eq!(b.sender, "");
        assert_eq!(b.recipients, ["alice@example.test"]);
        assert_eq!(b.client.protocol, Protocol::Local);
        assert_eq!((b.body, b.smtputf8), (BodyType::SevenBit, false));
        let text = String::from_utf8(b.message).unwrap();
        let boundary = text
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;\r\n"));
        assert!(text.contains("To: <alice@example.test>\r\n"));
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
        assert_eq!(parts.len(), 5, "preamble, three parts, epilogue");
        assert!(parts[1].contains("<bob@x.test>: 550 5.1.1 no such user\r\n"));
        assert!(parts[2].starts_with("\r\nContent-Type: message/delivery-status\r\n\r\n"));
        assert!(parts[2].contains("Reporting-MTA: dns; mx.example.test\r\n"));
        assert!(parts[2].contains("Arrival-Date: Sat, 21 Nov 2026 15:27:42 +0000\r\n"));
        assert!(parts[2].contains(
            "\r\nFinal-Recipient: rfc822; bob@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Remote-MTA: dns; mx.x.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        ));
        assert!(parts[2].contains(
            "Final-Recipient: rfc822; carol@y.test\r\nAction: failed\r\nStatus: 5.0.0\r\n\
             Diagnostic-Code"
        ));
        assert_eq!(
            parts[3],
            "\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: lunch\r\nMessage-ID: <1@example.test>\r\n\r\n"
        );
        assert!(!text.contains("secret body"));
        assert_eq!(parts[4], "--\r\n");
    }

    #[test]
    fn never_to_the_null_sender() {
        let mut e = original();
        e.sender = String::new();
        let failed = [failure("bob@x.test", Reply::new(550, "5.1.1", "no"))];
        assert_eq!(report(&e, &failed, &opts(false, at(0))), None);
        assert_eq!(delay_warning(&e, &failed, None, &opts(false, at(0))), None);
        assert_eq!(report(&original(), &[], &opts(false, at(0))), None);
    }

    #[test]
    fn utf8_addresses_make_a_global_report() {
        let mut e = original();
        e.sender = "j\u{f6}rg@example.test".into();
        let failed = [failure("b\u{f6}b@x.test", Reply::new(550, "5.1.1", "no"))];
        let b = report(&e, &failed, &opts(false, at(0))).unwrap();
        assert!(b.smtputf8);
        assert_eq!(b.body, BodyType::EightBitMime);
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(text.contains("Final-Recipient: utf-8; b\u{f6}b@x.test\r\n"));
    }

    #[test]
    fn the_whole_original_by_default_and_message_global_for_smtputf8() {
        let failed = [failure("bob@x.test", Reply::new(550, "5.1.1", "no"))];
        let b = report(&original(), &failed, &opts(false, at(0))).unwrap();
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains(
            "Content-Type: message/rfc822\r\n\r\nSubject: lunch\r\nMessage-ID: <1@example.test>\r\n\r\nsecret body\r\n\r\n--"
        ));
        let mut e = original();
        e.smtputf8 = true;
        e.body = BodyType::EightBitMime;
        e.message = "Subject: caf\u{e9}\r\n\r\nbody\r\n".into();
        let b = report(&e, &failed, &opts(false, at(0))).unwrap();
        assert!(!b.smtputf8, "ASCII addresses need no SMTPUTF8");
        assert_eq!(b.body, BodyType::EightBitMime);
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains(
            "Content-Type: message/global\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: caf\u{e9}\r\n"
        ));
        let b = report(&e, &failed, &opts(true, at(0))).unwrap();
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains("Content-Type: message/global-headers\r\n"));
        assert!(!text.contains("body\r\n"));
        e.body = BodyType::BinaryMime;
        e.smtputf8 = false;
        let b = report(&e, &failed, &opts(false, at(0))).unwrap();
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n"));
    }

    #[test]
    fn a_delay_warning_says_delayed_and_until_when() {
        let delayed = [failure("bob@x.test", Reply::new(451, "4.4.1", "later"))];
        let b = delay_warning(
            &original(),
            &delayed,
            Some(at(1_795_400_000)),
            &opts(false, at(0)),
        )
        .unwrap();
        assert_eq!(
            (b.sender.as_str(), b.recipients.as_slice()),
            ("", &["alice@example.test".to_string()][..])
        );
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains("Subject: Delayed Mail"));
        assert!(text.contains(
            "Action: delayed\r\nStatus: 4.4.1\r\nDiagnostic-Code: smtp; 451 4.4.1 later\r\n\
             Will-Retry-Until: Mon, 23 Nov 2026 02:13:20 +0000\r\n"
        ));
    }

    #[test]
    fn a_failed_bounce_goes_to_the_postmaster_once() {
        let failed = [failure("bob@x.test", Reply::new(550, "5.1.1", "no"))];
        let bounce = report(&original(), &failed, &opts(false, at(0))).unwrap();
        let to_alice = [failure(
            "alice@example.test",
            Reply::new(550, "5.1.1", "gone"),
        )];
        let notice = postmaster_report(
            &bounce,
            &to_alice,
            "postmaster@mx.test",
            &opts(false, at(0)),
        )
        .unwrap();
        assert_eq!(notice.sender, "");
        assert_eq!(notice.recipients, ["postmaster@mx.test"]);
        let to_postmaster = [failure(
            "Postmaster@mx.test",
            Reply::new(550, "5.1.1", "no"),
        )];
        assert_eq!(
            postmaster_report(
                &notice,
                &to_postmaster,
                "postmaster@mx.test",
                &opts(false, at(0))
            ),
            None
        );
    }
}
