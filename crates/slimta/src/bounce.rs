//! Bounces: delivery status notifications for recipients that failed for
//! good (RFC 3464 inside an RFC 6522 `multipart/report`).
//!
//! The queue calls [`report`] when an attempt ends with permanent failures
//! (or the backoff gave up), queues the result as a new message, and only
//! then records the failed recipients as done, so a crash between the two
//! cannot lose the bounce (it may duplicate it).
//!
//! Decisions:
//! - A bounce is sent from the null reverse path `<>` and never to it: a
//!   failed message whose sender is `<>` (itself a bounce) is dropped with a
//!   log line, which is what stops bounce loops (RFC 5321 section 6.1).
//! - The third part is the original header section only
//!   (`text/rfc822-headers`), not the whole message: it identifies the
//!   message without returning a large or binary body to a sender who
//!   already has it, and keeps the report 7-bit or 8-bit clean.
//! - Per-recipient fields are `Final-Recipient`, `Action: failed`, `Status`
//!   (the reply's enhanced code, `5.0.0` when it has none) and
//!   `Diagnostic-Code: smtp; <the reply>`. Addresses that are not ASCII use
//!   the `utf-8` address type and `message/global-delivery-status`
//!   (RFC 6533).

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::date;
use crate::envelope::{BodyType, ClientInfo, Envelope, Protocol};
use crate::reply::Reply;

/// One recipient that will not get the message, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The address as the original envelope had it.
    pub recipient: String,
    /// The reply that explains the failure.
    pub reply: Reply,
}

/// Builds the bounce for `failed` recipients of `original`, from `<>` to
/// the original sender, or `None` if the original sender is `<>` (or
/// nothing failed). `reporting_mta` is this host's name; `now` is the
/// bounce's date and receive time.
pub fn report(
    original: &Envelope,
    failed: &[FailedRecipient],
    reporting_mta: &str,
    now: SystemTime,
) -> Option<Envelope> {
    if original.sender.is_empty() || failed.is_empty() {
        return None;
    }
    let global = !original.sender.is_ascii() || failed.iter().any(|f| !f.recipient.is_ascii());
    let boundary = format!("=_slimta_{}", uuid::Uuid::new_v4().simple());
    let mut m = String::with_capacity(2048);
    // Writes to a String cannot fail.
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
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
         Your message could not be delivered to one or more recipients.\r\n\
         It has been given up on; the reasons follow.\r\n\
         \r\n",
        sender = original.sender,
        date = date::rfc5322(now),
        id = uuid::Uuid::new_v4().simple(),
        kind = if global {
            "global-delivery-status"
        } else {
            "delivery-status"
        },
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
        kind = if global {
            "global-delivery-status"
        } else {
            "delivery-status"
        },
        arrival = date::rfc5322(original.receive_time),
    );
    for f in failed {
        let status = f
            .reply
            .enhanced()
            .map_or_else(|| "5.0.0".to_owned(), |e| e.to_string());
        let address_type = if f.recipient.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let _ = write!(
            m,
            "\r\nFinal-Recipient: {address_type}; {}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n\
             Diagnostic-Code: smtp; {}\r\n",
            f.recipient,
            one_line(&f.reply),
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut message = m.into_bytes();
    let headers = &original.message[..original.header_len()];
    let headers = headers
        .strip_suffix(b"\r\n\r\n")
        .map_or(headers, |h| &headers[..h.len() + 2]);
    message.extend_from_slice(headers);
    if !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let eight_bit = !message.is_ascii();
    Some(Envelope {
        sender: String::new(),
        recipients: vec![original.sender.clone()],
        message,
        client: ClientInfo {
            protocol: Protocol::Local,
            ..ClientInfo::default()
        },
        receive_time: now,
        body: if eight_bit {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: global,
    })
}

/// The reply on one line, as a header field value can carry it.
fn one_line(reply: &Reply) -> String {
    reply.to_string().replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
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
                recipient: "bob@x.test".into(),
                reply: Reply::new(550, "5.1.1", "no such user"),
            },
            FailedRecipient {
                recipient: "carol@y.test".into(),
                reply: Reply::new(554, "", "gave up"),
            },
        ];
        let b = report(&original(), &failed, "mx.example.test", at(1_795_400_000)).unwrap();
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
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        ));
        assert!(parts[2].contains(
            "Final-Recipient: rfc822; carol@y.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
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
        let failed = [FailedRecipient {
            recipient: "bob@x.test".into(),
            reply: Reply::new(550, "5.1.1", "no"),
        }];
        assert_eq!(report(&e, &failed, "mx", at(0)), None);
        assert_eq!(report(&original(), &[], "mx", at(0)), None);
    }

    #[test]
    fn utf8_addresses_make_a_global_report() {
        let mut e = original();
        e.sender = "j\u{f6}rg@example.test".into();
        let failed = [FailedRecipient {
            recipient: "b\u{f6}b@x.test".into(),
            reply: Reply::new(550, "5.1.1", "no"),
        }];
        let b = report(&e, &failed, "mx", at(0)).unwrap();
        assert!(b.smtputf8);
        assert_eq!(b.body, BodyType::EightBitMime);
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(text.contains("Final-Recipient: utf-8; b\u{f6}b@x.test\r\n"));
    }
}
