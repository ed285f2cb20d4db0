//! The relay-control rule of the app: who may send mail where.
//!
//! `accept_domains` is the Postfix `relay_domains`/`mydestination` idea in
//! one list: a recipient in one of these domains is accepted from anyone
//! (this server is its destination); any other recipient is accepted only
//! from an authenticated client (submission) and otherwise answered
//! `550 5.7.1 Relaying denied`. An empty list therefore accepts mail from
//! authenticated clients only: the default configuration is never an open
//! relay.
//!
//! Decisions:
//! - Domains match case-insensitively and exactly; a leading dot
//!   (`.example.test`) also matches every subdomain, like Postfix's
//!   `parent_domain_matches_subdomains`.
//! - `<postmaster>` without a domain is always accepted (RFC 5321 4.5.1
//!   requires it); it is delivered like any other recipient by the relay.
//! - Address literals (`user@[192.0.2.1]`) are never in `accept_domains`.
//! - The list can be replaced while the edge runs
//!   ([`AcceptDomains::set_domains`], the app's SIGHUP): every clone shares
//!   it, so the edge's copy sees the change at the next RCPT.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use crate::envelope::domain_of;
use crate::reply::Reply;
use crate::smtp::RcptParams;

use super::validators::{SessionInfo, Validators};

/// Validators that enforce `accept_domains`, wrapping other validators whose
/// hooks run too (this rule first for RCPT).
#[derive(Clone, Debug, Default)]
pub struct AcceptDomains<V = super::validators::AcceptAll> {
    /// Shared by every clone, so [`AcceptDomains::set_domains`] on one
    /// (the app's handle, on SIGHUP) reaches the edge's copy.
    domains: Arc<RwLock<Arc<[String]>>>,
    inner: V,
}

fn normalize<I, S>(domains: I) -> Arc<[String]>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    domains
        .into_iter()
        .map(|d| d.as_ref().to_ascii_lowercase())
        .collect()
}

impl AcceptDomains {
    /// Accepts recipients in `domains` from anyone, others only after AUTH.
    pub fn new<I, S>(domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            domains: Arc::new(RwLock::new(normalize(domains))),
            inner: super::validators::AcceptAll,
        }
    }
}

impl<V> AcceptDomains<V> {
    /// Runs `inner`'s hooks as well.
    pub fn wrap<W: Validators>(self, inner: W) -> AcceptDomains<W> {
        AcceptDomains {
            domains: self.domains,
            inner,
        }
    }

    /// Replaces the accepted domains for this value and every clone of
    /// it (sessions that already passed RCPT keep their answers).
    pub fn set_domains<I, S>(&self, domains: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let domains = normalize(domains);
        *self.domains.write().unwrap_or_else(PoisonError::into_inner) = domains;
    }

    /// The accepted domains (lower case; a leading dot means subdomains).
    pub fn domains(&self) -> Arc<[String]> {
        self.domains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `recipient` is in one of the accepted domains.
    pub fn accepts_domain_of(&self, recipient: &str) -> bool {
        let Some(domain) = domain_of(recipient) else {
            return recipient.eq_ignore_ascii_case("postmaster");
        };
        let domain = domain.to_ascii_lowercase();
        self.domains().iter().any(|d| match d.strip_prefix('.') {
            Some(parent) => domain == parent || domain.ends_with(d.as_str()),
            None => domain == *d,
        })
    }
}

impl<V: Validators> Validators for AcceptDomains<V> {
    fn banner(&self, reply: &mut Reply, session: &SessionInfo) -> impl Future<Output = ()> + Send {
        self.inner.banner(reply, session)
    }

    fn ehlo(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        name: &str,
    ) -> impl Future<Output = ()> + Send {
        self.inner.ehlo(reply, session, name)
    }

    fn auth(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        attempt: &crate::smtp::sasl::AuthAttempt,
    ) -> impl Future<Output = ()> + Send {
        self.inner.auth(reply, session, attempt)
    }

    fn mail(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        sender: &str,
        params: &crate::smtp::MailParams,
    ) -> impl Future<Output = ()> + Send {
        self.inner.mail(reply, session, sender, params)
    }

    async fn rcpt(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        recipient: &str,
        params: &RcptParams,
    ) {
        if !self.accepts_domain_of(recipient) && !session.authenticated() {
            reply.set(550, "5.7.1", format!("<{recipient}>: Relaying denied"));
            return;
        }
        self.inner.rcpt(reply, session, recipient, params).await;
    }

    fn data(&self, reply: &mut Reply, session: &SessionInfo) -> impl Future<Output = ()> + Send {
        self.inner.data(reply, session)
    }

    fn have_data(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        envelope: &mut crate::envelope::Envelope,
    ) -> impl Future<Output = ()> + Send {
        self.inner.have_data(reply, session, envelope)
    }

    fn queued(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        results: &[crate::handoff::HandoffResult],
    ) -> impl Future<Output = ()> + Send {
        self.inner.queued(reply, session, results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_domains_reaches_every_clone() {
        let handle = AcceptDomains::new(["example.test"]);
        let edge_copy = handle.clone().wrap(super::super::validators::AcceptAll);
        assert!(!edge_copy.accepts_domain_of("a@other.test"));
        handle.set_domains(["Other.test"]);
        assert!(edge_copy.accepts_domain_of("a@other.test"));
        assert!(!edge_copy.accepts_domain_of("a@example.test"));
        assert_eq!(&*handle.domains(), ["other.test".to_string()]);
    }

    #[test]
    fn matches_domains_exactly_or_as_parents() {
        let rule = AcceptDomains::new(["Example.test", ".parent.test"]);
        let cases = [
            ("a@example.test", true),
            ("a@EXAMPLE.TEST", true),
            ("a@sub.example.test", false),
            ("a@parent.test", true),
            ("a@x.parent.test", true),
            ("a@xparent.test", false),
            ("a@other.test", false),
            ("postmaster", true),
            ("Postmaster", true),
            ("a@[127.0.0.1]", false),
            ("\"a@example.test\"@evil.test", false),
        ];
        for (rcpt, want) in cases {
            assert_eq!(rule.accepts_domain_of(rcpt), want, "{rcpt}");
        }
    }

    #[tokio::test]
    async fn refuses_relaying_unless_authenticated() {
        let rule = AcceptDomains::new(["example.test"]);
        let mut session = SessionInfo::default();
        let mut reply = Reply::new(250, "2.1.5", "ok");
        rule.rcpt(
            &mut reply,
            &session,
            "a@example.test",
            &RcptParams::default(),
        )
        .await;
        assert_eq!(reply.code(), 250);
        rule.rcpt(
            &mut reply,
            &session,
            "a@elsewhere.test",
            &RcptParams::default(),
        )
        .await;
        assert_eq!(
            reply.to_string(),
            "550 5.7.1 <a@elsewhere.test>: Relaying denied"
        );
        session.client.auth = Some("alice".into());
        let mut reply = Reply::new(250, "2.1.5", "ok");
        rule.rcpt(
            &mut reply,
            &session,
            "a@elsewhere.test",
            &RcptParams::default(),
        )
        .await;
        assert_eq!(reply.code(), 250);
        let empty = AcceptDomains::new(Vec::<String>::new());
        session.client.auth = None;
        rule.rcpt(
            &mut reply,
            &session,
            "a@example.test",
            &RcptParams::default(),
        )
        .await;
        empty
            .rcpt(
                &mut reply,
                &session,
                "a@example.test",
                &RcptParams::default(),
            )
            .await;
        assert_eq!(
            reply.code(),
            550,
            "an empty list accepts nobody unauthenticated"
        );
    }
}
