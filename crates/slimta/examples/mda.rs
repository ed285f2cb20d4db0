//! A final-delivery MTA: an SMTP edge that refuses unknown recipients, a
//! memory queue that adds Date, Message-Id and Received headers, and
//! delivery into Dovecot mailboxes with `dovecot-lda`.
//!
//! `cargo run --example mda -- LISTEN DOVECOT_CONF USER...`, e.g.
//! `mda 127.0.0.1:2525 /etc/dovecot/dovecot.conf alice bob`.
use slimta::edge::{SessionInfo, SmtpEdge, Validators};
use slimta::policy::headers::{AddDateHeader, AddMessageIdHeader, AddReceivedHeader};
use slimta::queue::{MemoryStorage, Queue};
use slimta::relay::pipe::DovecotLdaRelay;
use slimta::{Reply, smtp::RcptParams};

/// Accepts a recipient only if its local part is one of the mailboxes.
struct KnownUsers(Vec<String>);

impl Validators for KnownUsers {
    async fn rcpt(&self, reply: &mut Reply, _: &SessionInfo, rcpt: &str, _: &RcptParams) {
        let local = rcpt.rsplit_once('@').map_or(rcpt, |(local, _)| local);
        if !self.0.iter().any(|user| user == local) {
            reply.set(550, "5.1.1", format!("<{rcpt}>: No such user"));
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:2525".into());
    let dovecot_conf = args
        .next()
        .unwrap_or_else(|| "/etc/dovecot/dovecot.conf".into());
    let users: Vec<String> = args.collect();
    let host = "mda.example.test";

    let relay = DovecotLdaRelay::new().config(dovecot_conf);
    let queue = Queue::new(MemoryStorage::new(), relay)
        .add_policy(AddDateHeader)
        .add_policy(AddMessageIdHeader::new(host))
        .add_policy(AddReceivedHeader::new(host));
    queue.start().await?;

    let edge = SmtpEdge::new(host, queue).validators(KnownUsers(users));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    edge.serve(listener, stop_rx).await;
    Ok(())
}
