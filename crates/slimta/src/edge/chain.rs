//! [`ValidatorChain`]: several [`Validators`] run as one, in order.
//!
//! An edge takes one `Validators` value; real setups want several checks
//! (relay control, a DNS list, SPF, a recipient database), and nesting
//! wrappers for them makes the order hard to see and each check responsible
//! for calling the next. A chain is a list instead.
//!
//! Rules, the same for every hook:
//! - Links run in the order added, each seeing the reply the previous one
//!   left.
//! - The first refusal wins: once a link turns an accepting reply (2xx or
//!   3xx) into a refusal (4xx or 5xx), the chain stops, and no later link
//!   runs. A later check can therefore never turn a refusal back into an
//!   acceptance, and an expensive check (a DNS lookup) is skipped when a
//!   cheap one (relay control) already said no.
//! - A reply that reaches the chain already refused (the edge's own
//!   refusal) is left alone and no link runs, with one exception: `auth`
//!   comes with `535` when the edge's own credentials did not accept the
//!   login, and a link that checks credentials its own way may accept it
//!   (see [`Validators::auth`]); there, links run until one refuses an
//!   accepted login.
//! - `queued` only rewords (the message is queued or not already); every
//!   link runs.
//!
//! The relay-control rule ([`super::AcceptDomains`]) is an ordinary link,
//! usually the first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::handoff::HandoffResult;
use crate::reply::Reply;
use crate::smtp::sasl::AuthAttempt;
use crate::smtp::{MailParams, RcptParams};

use super::validators::{SessionInfo, Validators};

/// A boxed hook future of [`DynValidators`].
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The object-safe form of [`Validators`], for chains built at run time
/// (the app's `[check.NAME]` sections). Every `Validators` is one.
#[allow(missing_docs)]
pub trait DynValidators: Send + Sync + 'static {
    fn banner_boxed<'a>(&'a self, reply: &'a mut Reply, s: &'a SessionInfo) -> HookFuture<'a>;
    fn ehlo_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        name: &'a str,
    ) -> HookFuture<'a>;
    fn auth_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        attempt: &'a AuthAttempt,
    ) -> HookFuture<'a>;
    fn mail_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        sender: &'a str,
        params: &'a MailParams,
    ) -> HookFuture<'a>;
    fn rcpt_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        recipient: &'a str,
        params: &'a RcptParams,
    ) -> HookFuture<'a>;
    fn data_boxed<'a>(&'a self, reply: &'a mut Reply, s: &'a SessionInfo) -> HookFuture<'a>;
    fn have_data_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        envelope: &'a mut Envelope,
    ) -> HookFuture<'a>;
    fn queued_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        results: &'a [HandoffResult],
    ) -> HookFuture<'a>;
}

impl<V: Validators> DynValidators for V {
    fn banner_boxed<'a>(&'a self, reply: &'a mut Reply, s: &'a SessionInfo) -> HookFuture<'a> {
        Box::pin(self.banner(reply, s))
    }
    fn ehlo_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        name: &'a str,
    ) -> HookFuture<'a> {
        Box::pin(self.ehlo(reply, s, name))
    }
    fn auth_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        attempt: &'a AuthAttempt,
    ) -> HookFuture<'a> {
        Box::pin(self.auth(reply, s, attempt))
    }
    fn mail_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        sender: &'a str,
        params: &'a MailParams,
    ) -> HookFuture<'a> {
        Box::pin(self.mail(reply, s, sender, params))
    }
    fn rcpt_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        recipient: &'a str,
        params: &'a RcptParams,
    ) -> HookFuture<'a> {
        Box::pin(self.rcpt(reply, s, recipient, params))
    }
    fn data_boxed<'a>(&'a self, reply: &'a mut Reply, s: &'a SessionInfo) -> HookFuture<'a> {
        Box::pin(self.data(reply, s))
    }
    fn have_data_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        envelope: &'a mut Envelope,
    ) -> HookFuture<'a> {
        Box::pin(self.have_data(reply, s, envelope))
    }
    fn queued_boxed<'a>(
        &'a self,
        reply: &'a mut Reply,
        s: &'a SessionInfo,
        results: &'a [HandoffResult],
    ) -> HookFuture<'a> {
        Box::pin(self.queued(reply, s, results))
    }
}

/// Whether a reply accepts (2xx, or 3xx: go on).
fn accepts(reply: &Reply) -> bool {
    reply.code() < 400
}

/// Validators run one after another (see the module docs for the rules).
/// Cheap to clone: clones share the links.
///
/// ```
/// use slimta::edge::{AcceptDomains, ValidatorChain};
///
/// let checks = ValidatorChain::new()
///     .then(AcceptDomains::new(["example.com"]));
/// assert_eq!(checks.len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct ValidatorChain {
    links: Arc<Vec<Arc<dyn DynValidators>>>,
}

impl std::fmt::Debug for ValidatorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatorChain")
            .field("links", &self.links.len())
            .finish()
    }
}

impl ValidatorChain {
    /// An empty chain: accepts everything the protocol allows, like
    /// [`super::AcceptAll`]. Add relay control before serving the internet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `link` at the end of the chain.
    #[must_use]
    pub fn then(self, link: impl Validators) -> Self {
        self.then_shared(Arc::new(link))
    }

    /// Adds a link chosen at run time at the end of the chain.
    #[must_use]
    pub fn then_shared(mut self, link: Arc<dyn DynValidators>) -> Self {
        Arc::make_mut(&mut self.links).push(link);
        self
    }

    /// Adds every link of `other` at the end of the chain (its links, not
    /// `other` as one nested link).
    #[must_use]
    pub fn followed_by(mut self, other: &ValidatorChain) -> Self {
        Arc::make_mut(&mut self.links).extend(other.links.iter().cloned());
        self
    }

    /// How many links the chain has.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether the chain has no link.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

impl Validators for ValidatorChain {
    async fn banner(&self, reply: &mut Reply, session: &SessionInfo) {
        for link in self.links.iter() {
            if !accepts(reply) {
                return;
            }
            link.banner_boxed(reply, session).await;
        }
    }

    async fn ehlo(&self, reply: &mut Reply, session: &SessionInfo, name: &str) {
        for link in self.links.iter() {
            if !accepts(reply) {
                return;
            }
            link.ehlo_boxed(reply, session, name).await;
        }
    }

    async fn auth(&self, reply: &mut Reply, session: &SessionInfo, attempt: &AuthAttempt) {
        for link in self.links.iter() {
            let accepted = accepts(reply);
            link.auth_boxed(reply, session, attempt).await;
            if accepted && !accepts(reply) {
                return;
            }
        }
    }

    async fn mail(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        sender: &str,
        params: &MailParams,
    ) {
        for link in self.links.iter() {
            if !accepts(reply) {
                return;
            }
            link.mail_boxed(reply, session, sender, params).await;
        }
    }

    async fn rcpt(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        recipient: &str,
        params: &RcptParams,
    ) {
        for link in self.links.iter() {
            if !accepts(reply) {
                return;
            }
            link.rcpt_boxed(reply, session, recipient, params).await;
        }
    }

    async fn data(&self, reply: &mut Reply, session: &SessionInfo) {
        for link in self.links.iter() {
            if !accepts(reply) {
                return;
            }
            link.data_boxed(reply, session).await;
        }
    }

    async fn have_data(&self, reply: &mut Reply, session: &SessionInfo, envelope: &mut Envelope) {
        for link in self.links.iter() {
            if !accepts(reply) {
                return;
            }
            link.have_data_boxed(reply, session, envelope).await;
        }
    }

    async fn queued(&self, reply: &mut Reply, session: &SessionInfo, results: &[HandoffResult]) {
        for link in self.links.iter() {
            link.queued_boxed(reply, session, results).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers RCPT with `code` (0: leaves the reply) and notes its name.
    struct Link {
        name: &'static str,
        code: u16,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Validators for Link {
        async fn rcpt(&self, reply: &mut Reply, _: &SessionInfo, _: &str, _: &RcptParams) {
            self.log.lock().unwrap().push(self.name);
            if self.code != 0 {
                reply.set_code(self.code);
            }
        }
        async fn auth(&self, reply: &mut Reply, _: &SessionInfo, _: &AuthAttempt) {
            self.log.lock().unwrap().push(self.name);
            if self.code != 0 {
                reply.set_code(self.code);
            }
        }
    }

    fn chain(links: &[(&'static str, u16)]) -> (ValidatorChain, Arc<Mutex<Vec<&'static str>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut chain = ValidatorChain::new();
        for &(name, code) in links {
            chain = chain.then(Link {
                name,
                code,
                log: log.clone(),
            });
        }
        (chain, log)
    }

    async fn rcpt(chain: &ValidatorChain) -> u16 {
        let mut reply = Reply::new(250, "2.1.5", "ok");
        chain
            .rcpt(
                &mut reply,
                &SessionInfo::default(),
                "a@b.test",
                &RcptParams::default(),
            )
            .await;
        reply.code()
    }

    #[tokio::test]
    async fn the_first_refusal_wins_and_stops_the_chain() {
        let (c, log) = chain(&[("a", 0), ("b", 550), ("c", 250), ("d", 0)]);
        assert_eq!(rcpt(&c).await, 550);
        assert_eq!(*log.lock().unwrap(), ["a", "b"]);
        let (c, log) = chain(&[("a", 0), ("b", 0)]);
        assert_eq!(rcpt(&c).await, 250);
        assert_eq!(*log.lock().unwrap(), ["a", "b"]);
        assert_eq!(rcpt(&ValidatorChain::new()).await, 250);
    }

    #[tokio::test]
    async fn an_auth_link_may_accept_the_edges_535_but_a_later_refusal_stands() {
        let attempt = AuthAttempt {
            mechanism: crate::smtp::sasl::Mechanism::Plain,
            authzid: None,
            authcid: "u".into(),
            secret: crate::smtp::sasl::AuthSecret::Password("p".into()),
        };
        let run = async |c: &ValidatorChain| {
            let mut reply = Reply::new(535, "5.7.8", "no");
            c.auth(&mut reply, &SessionInfo::default(), &attempt).await;
            reply.code()
        };
        let (c, log) = chain(&[("ldap", 235), ("deny", 535), ("allow", 235)]);
        assert_eq!(run(&c).await, 535);
        assert_eq!(*log.lock().unwrap(), ["ldap", "deny"]);
        let (c, _) = chain(&[("none", 0), ("ldap", 235)]);
        assert_eq!(run(&c).await, 235);
    }
}
