//! Recipient splits: one stored envelope per recipient, or per recipient
//! domain (python-slimta's `RecipientSplit` and `RecipientDomainSplit`).
//!
//! Why split: each part is stored, attempted, retried and bounced on its
//! own, so one slow or failing destination never holds back the others'
//! delivery, and a relay that handles one destination per attempt gets one.
//!
//! Decisions:
//! - The parts keep the recipients' order of first appearance, and a
//!   message with one recipient (or one domain) is passed on unchanged, not
//!   copied.
//! - Domains compare case-insensitively (RFC 5321 2.4); a recipient
//!   without a domain (`<postmaster>`) forms its own group under the empty
//!   domain.
//! - Splitting copies the message bytes once per extra part: a 10 MB
//!   message to five domains is stored five times, as Postfix stores it
//!   once per queue file after its own splitting. That is the price of
//!   independent retries.

use crate::envelope::Envelope;
use crate::reply::Reply;

use super::QueuePolicy;

/// Splits an envelope into one envelope per recipient.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecipientSplit;

/// Splits an envelope into one envelope per recipient domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecipientDomainSplit;

impl QueuePolicy for RecipientSplit {
    async fn apply(&self, envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        if envelope.recipients.len() <= 1 {
            return Ok(vec![envelope]);
        }
        Ok(envelope
            .recipients
            .iter()
            .map(|r| envelope.with_recipients(vec![r.clone()]))
            .collect())
    }
}

impl QueuePolicy for RecipientDomainSplit {
    async fn apply(&self, envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        let groups = group_by_domain(&envelope.recipients);
        if groups.len() <= 1 {
            return Ok(vec![envelope]);
        }
        Ok(groups
            .into_iter()
            .map(|recipients| envelope.with_recipients(recipients))
            .collect())
    }
}

/// The domain of a recipient, lowercased; empty for a bare local part.
fn domain_of(recipient: &str) -> String {
    recipient
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Recipients grouped by domain, groups in order of first appearance.
fn group_by_domain(recipients: &[String]) -> Vec<Vec<String>> {
    let mut domains: Vec<String> = Vec::new();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for recipient in recipients {
        let domain = domain_of(recipient);
        match domains.iter().position(|d| *d == domain) {
            Some(i) => groups[i].push(recipient.clone()),
            None => {
                domains.push(domain);
                groups.push(vec![recipient.clone()]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope::new(
            "s@example.test",
            recipients.iter().map(|r| (*r).to_owned()).collect(),
            b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        )
    }

    fn recipients(parts: &[Envelope]) -> Vec<Vec<&str>> {
        parts
            .iter()
            .map(|p| p.recipients.iter().map(String::as_str).collect())
            .collect()
    }

    #[tokio::test]
    async fn one_part_per_recipient() {
        let parts = RecipientSplit
            .apply(envelope(&["a@x.test", "b@y.test", "c@x.test"]))
            .await
            .unwrap();
        assert_eq!(
            recipients(&parts),
            [vec!["a@x.test"], vec!["b@y.test"], vec!["c@x.test"]]
        );
        assert!(parts.iter().all(|p| p.message == parts[0].message));
        assert!(parts.iter().all(|p| p.sender == "s@example.test"));
    }

    #[tokio::test]
    async fn one_part_per_domain_in_order_of_appearance_ignoring_case() {
        let parts = RecipientDomainSplit
            .apply(envelope(&[
                "a@x.test",
                "b@Y.test",
                "postmaster",
                "c@X.TEST",
                "d@y.test",
            ]))
            .await
            .unwrap();
        assert_eq!(
            recipients(&parts),
            [
                vec!["a@x.test", "c@X.TEST"],
                vec!["b@Y.test", "d@y.test"],
                vec!["postmaster"]
            ]
        );
    }

    #[tokio::test]
    async fn a_single_destination_is_passed_on_whole() {
        let parts = RecipientDomainSplit
            .apply(envelope(&["a@x.test", "b@x.test"]))
            .await
            .unwrap();
        assert_eq!(recipients(&parts), [vec!["a@x.test", "b@x.test"]]);
        let parts = RecipientSplit.apply(envelope(&["a@x.test"])).await.unwrap();
        assert_eq!(recipients(&parts), [vec!["a@x.test"]]);
    }
}
