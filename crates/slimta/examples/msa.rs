//! A submission server: clients must STARTTLS, then AUTH, before MAIL; every
//! accepted message goes through a memory queue to one smart host.
//!
//! `cargo run --example msa -- LISTEN CERT KEY SMART_HOST:PORT USER PASSWORD`,
//! e.g. `msa 0.0.0.0:587 cert.pem key.pem smtp.example.com:25 alice secret`.
use std::collections::BTreeMap;

use slimta::edge::SmtpEdge;
use slimta::edge::credentials::Credentials;
use slimta::edge::tls::{ReloadableTls, TlsConfig};
use slimta::queue::{MemoryStorage, Queue};
use slimta::relay::smtp::StaticSmtpRelay;
use slimta::smtp::{Mechanism, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, smart_host, user, password] = &args[..] else {
        return Err("usage: msa LISTEN CERT KEY SMART_HOST:PORT USER PASSWORD".into());
    };
    let (host, port) = smart_host.rsplit_once(':').ok_or("SMART_HOST:PORT")?;

    let relay = StaticSmtpRelay::new(host, port.parse()?);
    let queue = Queue::new(MemoryStorage::new(), relay);
    queue.start().await?;

    // STARTTLS offered; PLAIN and LOGIN only inside TLS (auth_plaintext
    // off); MAIL refused until AUTH succeeded.
    let config = ServerConfig {
        starttls: true,
        auth_mechanisms: Mechanism::ALL.to_vec(),
        auth_plaintext: false,
        auth_required: true,
        ..ServerConfig::new("msa.example.test")
    };
    let users = BTreeMap::from([(user.clone(), format!("{{PLAIN}}{password}"))]);
    let edge = SmtpEdge::new("msa.example.test", queue)
        .server_config(config)
        .tls(ReloadableTls::new(TlsConfig::new(cert, key))?)
        .credentials(Credentials::from_map(users)?);
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    println!("listening on {}", listener.local_addr()?);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    edge.serve(listener, stop_rx).await;
    Ok(())
}
