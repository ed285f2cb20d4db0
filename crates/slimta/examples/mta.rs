//! An inbound MTA: an SMTP edge that accepts mail for some domains, a
//! memory queue, and a relay that delivers to each recipient domain's MX
//! hosts.
//!
//! `cargo run --example mta -- LISTEN DOMAIN...`, e.g.
//! `mta 0.0.0.0:25 example.com`. The resolver is the system's, or the
//! name server in `MTA_NAMESERVER` (`127.0.0.1:5353`); the exchangers' SMTP
//! port is 25, or `MTA_PORT`.
use slimta::dns::Resolver;
use slimta::edge::{AcceptDomains, SmtpEdge};
use slimta::queue::{MemoryStorage, Queue};
use slimta::relay::smtp::MxSmtpRelay;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:2525".into());
    let domains: Vec<String> = args.collect();

    let resolver = match std::env::var("MTA_NAMESERVER") {
        Ok(server) => Resolver::new(&[server.parse()?])?,
        Err(_) => Resolver::system()?,
    };
    let port = std::env::var("MTA_PORT").map_or(Ok(25), |p| p.parse())?;
    let relay = MxSmtpRelay::new(resolver).port(port);
    let queue = Queue::new(MemoryStorage::new(), relay);
    queue.start().await?;

    // Open relays are refused: only these domains are accepted as
    // recipients (unless the client authenticated, which this edge does
    // not offer).
    let edge = SmtpEdge::new("mx.example.test", queue).validators(AcceptDomains::new(domains));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    edge.serve(listener, stop_rx).await;
    Ok(())
}
