//! Edge policy hooks: the `Validators` trait.
//!
//! As in python-slimta's `SmtpValidators`, each hook receives the reply the
//! server is about to send and may change it: turn a `250` into a `550`,
//! rewrite the text, or answer `421` to close the session. Hooks are async
//! because real checks (DNSBL, SPF, a database of users) wait on the network.
//! Every hook has a default that accepts, so an implementation overrides only
//! what it needs.
//!
//! Design decision: one `Validators` value serves every session of an edge
//! (`&self`), and per-session facts come in [`SessionInfo`]. A validator that
//! needs per-session state keys it by [`SessionInfo::id`].

use std::future::Future;
use std::net::SocketAddr;

use crate::envelope::{ClientInfo, Envelope};
use crate::handoff::HandoffResult;
use crate::reply::Reply;
use crate::smtp::sasl::AuthAttempt;
use crate::smtp::{MailParams, RcptParams};

/// What a validator may know about the session it judges.
#[derive(Clone, Debug, Default)]
pub struct SessionInfo {
    /// A number unique within this process, also in every log line.
    pub id: u64,
    /// The client: address, HELO name, protocol, authentication, TLS.
    pub client: ClientInfo,
    /// The address the client connected to.
    pub local_addr: Option<SocketAddr>,
    /// The accepted sender of the current transaction, if any.
    pub sender: Option<String>,
    /// The accepted recipients of the current transaction.
    pub recipients: Vec<String>,
}

impl SessionInfo {
    /// Whether the client authenticated (AUTH).
    pub fn authenticated(&self) -> bool {
        self.client.auth.is_some()
    }
}

/// Policy hooks of an SMTP (or LMTP) edge. Every method defaults to leaving
/// the reply as it is.
pub trait Validators: Send + Sync + 'static {
    /// Before the banner is sent; a non-220 reply refuses the session.
    fn banner(&self, reply: &mut Reply, session: &SessionInfo) -> impl Future<Output = ()> + Send {
        let _ = (reply, session);
        async {}
    }

    /// HELO/EHLO with its argument.
    fn ehlo(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        name: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reply, session, name);
        async {}
    }

    /// Complete AUTH credentials. The reply is already `235` if the edge's
    /// credentials accepted them and `535` otherwise; a program that checks
    /// credentials its own way changes it (a 2xx authenticates the session
    /// as `attempt.authcid`).
    fn auth(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        attempt: &AuthAttempt,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reply, session, attempt);
        async {}
    }

    /// MAIL FROM with the reverse path (empty for `<>`).
    fn mail(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        sender: &str,
        params: &MailParams,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reply, session, sender, params);
        async {}
    }

    /// RCPT TO with the forward path.
    fn rcpt(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        recipient: &str,
        params: &RcptParams,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reply, session, recipient, params);
        async {}
    }

    /// DATA (or the first BDAT), before any message data is accepted.
    fn data(&self, reply: &mut Reply, session: &SessionInfo) -> impl Future<Output = ()> + Send {
        let _ = (reply, session);
        async {}
    }

    /// The whole message is in, before it is handed to the queue; a non-2xx
    /// reply rejects it and nothing is queued. A check may add to the
    /// envelope what it found (a `Received-SPF:` header, say); the queue's
    /// policies then see the changed envelope.
    fn have_data(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        envelope: &mut Envelope,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reply, session, envelope);
        async {}
    }

    /// After the queue answered (`results`); the reply already says queued or
    /// not, and may be reworded (changing success to failure here would make
    /// the client resend a message that is already queued).
    fn queued(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        results: &[HandoffResult],
    ) -> impl Future<Output = ()> + Send {
        let _ = (reply, session, results);
        async {}
    }
}

/// Accepts everything the protocol allows (the python-slimta default). Never
/// use it on an edge reachable from the internet without another rule: it is
/// an open relay.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl Validators for AcceptAll {}
