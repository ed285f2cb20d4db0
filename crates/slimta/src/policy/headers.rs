//! Header policies every real deployment needs: `Date`, `Message-Id` and the
//! `Received` trace field (RFC 5321 4.4, RFC 5322 3.6).
//!
//! They are queue policies (they run once, before the envelope is stored),
//! so the stored message is the one that is delivered on every attempt.
//!
//! Decisions:
//! - `Date` and `Message-Id` are added only when missing (RFC 5322 requires
//!   `Date`; RFC 6409 8.3 lets a submission server add both). The date is the
//!   receive time, not the time of the first delivery attempt.
//! - `Received` is always prepended, naming the client by its HELO, its
//!   confirmed reverse DNS name (when known) and its address, the protocol
//!   keyword of RFC 3848 (`ESMTPS`, `ESMTPSA`, ...) and, with TLS, the
//!   protocol and cipher. `for <rcpt>` is written only for single-recipient
//!   envelopes, so a BCC list does not leak into every copy.
//! - Header names are matched case-insensitively in the header section only;
//!   a message without a header section gets the fields on top.

use std::future::Future;

use crate::envelope::Envelope;
use crate::reply::Reply;

use super::QueuePolicy;

/// Whether the header section of `message` has a field called `name`.
pub fn has_header(message: &[u8], name: &str) -> bool {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let headers = &message[..header_end];
    let name = name.as_bytes();
    headers
        .split(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b" ") && !line.starts_with(b"\t"))
        .any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..].trim_ascii_start().starts_with(b":")
        })
}

/// Adds `Date:` (the receive time) when the message has none.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddDateHeader;

impl QueuePolicy for AddDateHeader {
    fn apply(
        &self,
        mut envelope: Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, Reply>> + Send {
        if !has_header(&envelope.message, "Date") {
            let date = crate::date::rfc5322(envelope.receive_time);
            envelope.prepend_header("Date", &date);
        }
        std::future::ready(Ok(vec![envelope]))
    }
}

/// Adds `Message-Id: <random@hostname>` when the message has none.
#[derive(Clone, Debug)]
pub struct AddMessageIdHeader {
    hostname: String,
}

impl AddMessageIdHeader {
    /// Message ids end in `@hostname`.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
        }
    }
}

impl QueuePolicy for AddMessageIdHeader {
    fn apply(
        &self,
        mut envelope: Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, Reply>> + Send {
        if !has_header(&envelope.message, "Message-Id") {
            let id = format!("<{}@{}>", uuid::Uuid::new_v4().simple(), self.hostname);
            envelope.prepend_header("Message-Id", &id);
        }
        std::future::ready(Ok(vec![envelope]))
    }
}

/// Prepends the `Received:` trace field.
#[derive(Clone, Debug)]
pub struct AddReceivedHeader {
    hostname: String,
}

impl AddReceivedHeader {
    /// `by hostname`.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
        }
    }

    /// The field value for `envelope`, folded over three lines.
    pub fn value(&self, envelope: &Envelope) -> String {
        let client = &envelope.client;
        let helo = client.helo.as_deref().unwrap_or("unknown");
        let host = client.host.as_deref().unwrap_or("unknown");
        let ip = client.ip.map_or_else(
            || "unknown".to_string(),
            |ip| match ip {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
            },
        );
        let mut value = format!(
            "from {helo} ({host} [{ip}])\r\n\tby {} (slimta-rs) with {}",
            self.hostname,
            client.protocol.as_str()
        );
        if let Some(tls) = &client.tls {
            value.push_str(&format!(
                "\r\n\t(version={} cipher={})",
                tls.protocol, tls.cipher
            ));
        }
        if let [only] = envelope.recipients.as_slice() {
            value.push_str(&format!("\r\n\tfor <{only}>"));
        }
        value.push_str(";\r\n\t");
        value.push_str(&crate::date::rfc5322(envelope.receive_time));
        value
    }
}

impl QueuePolicy for AddReceivedHeader {
    fn apply(
        &self,
        mut envelope: Envelope,
    ) -> impl Future<Output = Result<Vec<Envelope>, Reply>> + Send {
        let value = self.value(&envelope);
        envelope.prepend_header("Received", &value);
        std::future::ready(Ok(vec![envelope]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn envelope(message: &[u8]) -> Envelope {
        let mut e = Envelope::new("a@x.test", vec!["b@example.test".into()], message.to_vec());
        e.receive_time = UNIX_EPOCH + Duration::from_secs(1_795_274_077);
        e.client.ip = Some("192.0.2.7".parse().unwrap());
        e.client.helo = Some("client.test".into());
        e
    }

    #[test]
    fn finds_headers_case_insensitively_in_the_header_section_only() {
        let m = b"Subject: x\r\nDATE : y\r\n\r\nMessage-Id: <in body>\r\n";
        assert!(has_header(m, "Date"));
        assert!(!has_header(m, "Message-Id"));
        assert!(!has_header(b"Subject: x\r\n\tDate: folded\r\n\r\n", "Date"));
        assert!(!has_header(b"Dated: no\r\n\r\n", "Date"));
    }

    #[tokio::test]
    async fn adds_missing_date_and_message_id_only() {
        let out = AddDateHeader
            .apply(envelope(b"Subject: x\r\n\r\nbody\r\n"))
            .await
            .unwrap();
        assert_eq!(
            out[0].message,
            b"Date: Sat, 21 Nov 2026 15:14:37 +0000\r\nSubject: x\r\n\r\nbody\r\n"
        );
        let kept = AddDateHeader
            .apply(envelope(b"date: old\r\n\r\n"))
            .await
            .unwrap();
        assert_eq!(kept[0].message, b"date: old\r\n\r\n");
        let out = AddMessageIdHeader::new("mx.test")
            .apply(envelope(b"\r\nbody"))
            .await
            .unwrap();
        let text = String::from_utf8(out[0].message.clone()).unwrap();
        assert!(
            text.starts_with("Message-Id: <") && text.contains("@mx.test>\r\n\r\nbody"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn received_names_client_protocol_and_single_recipient() {
        let policy = AddReceivedHeader::new("mx.example.test");
        let out = policy.apply(envelope(b"S: x\r\n\r\n")).await.unwrap();
        assert_eq!(
            String::from_utf8(out[0].message.clone()).unwrap(),
            "Received: from client.test (unknown [192.0.2.7])\r\n\tby mx.example.test (slimta-rs) with ESMTP\r\n\tfor <b@example.test>;\r\n\tSat, 21 Nov 2026 15:14:37 +0000\r\nS: x\r\n\r\n"
        );
        let mut two = envelope(b"\r\n");
        two.recipients.push("c@example.test".into());
        assert!(!policy.value(&two).contains("for <"));
    }
}
