//! `slimta-tls`: STARTTLS figures (handshake rate and cost, memory per TLS session).
//!
//! - `handshakes`: W workers each loop connect, banner, EHLO, STARTTLS, TLS
//!   handshake, EHLO, QUIT for D seconds; prints sessions per second.
//! - `idle`: opens K sessions, each through STARTTLS and EHLO, holds them,
//!   prints `ready` and waits for D seconds (measure the server's RSS then).
//!
//! This is a benchmark client, so it does not verify the server's
//! certificate (it accepts any, while still checking handshake signatures):
//! only throughput and memory are measured, never trust.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "STARTTLS handshake rate and idle TLS sessions against an SMTP server")]
struct Args {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: SocketAddr,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Full STARTTLS sessions in a loop.
    Handshakes {
        /// Concurrent workers.
        #[arg(short = 'w', long, default_value_t = 8)]
        workers: usize,
        /// Seconds to run.
        #[arg(short = 'd', long, default_value_t = 10)]
        seconds: u64,
    },
    /// Hold many idle sessions after STARTTLS and EHLO.
    Idle {
        /// Sessions to open.
        #[arg(short = 'k', long, default_value_t = 10_000)]
        sessions: usize,
        /// Seconds to hold them once all are open.
        #[arg(short = 'd', long, default_value_t = 30)]
        seconds: u64,
    },
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Reads one whole reply and checks its code.
async fn expect<S: AsyncRead + Unpin>(r: &mut BufReader<S>, code: &str) -> Result<(), Error> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(format!("closed while waiting for {code}").into());
        }
        if !line.starts_with(code) {
            return Err(format!("expected {code}, got {line:?}").into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Connect, STARTTLS and EHLO; returns the encrypted session.
async fn open(
    server: SocketAddr,
    connector: &TlsConnector,
) -> Result<BufReader<tokio_rustls::client::TlsStream<TcpStream>>, Error> {
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let mut plain = BufReader::new(tcp);
    expect(&mut plain, "220").await?;
    plain
        .get_mut()
        .write_all(b"EHLO tls.bench\r\nSTARTTLS\r\n")
        .await?;
    expect(&mut plain, "250").await?;
    expect(&mut plain, "220").await?;
    let name = ServerName::try_from("mx.example.test")?;
    let tls = connector.connect(name, plain.into_inner()).await?;
    let mut tls = BufReader::new(tls);
    tls.get_mut().write_all(b"EHLO tls.bench\r\n").await?;
    expect(&mut tls, "250").await?;
    Ok(tls)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    match args.mode {
        Mode::Handshakes { workers, seconds } => {
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let (connector, done, failed) = (connector.clone(), done.clone(), failed.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        match open(args.server, &connector).await {
                            Ok(mut tls) => {
                                let _ = tls.get_mut().write_all(b"QUIT\r\n").await;
                                let _ = expect(&mut tls, "221").await;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("session failed: {e}");
                                }
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let n = done.load(Ordering::Relaxed);
            println!(
                "starttls sessions: {n} in {elapsed:.1} s = {:.0}/s with {workers} workers; failures: {}",
                n as f64 / elapsed,
                failed.load(Ordering::Relaxed)
            );
        }
        Mode::Idle { sessions, seconds } => {
            let mut held = Vec::with_capacity(sessions);
            for i in 0..sessions {
                match open(args.server, &connector).await {
                    Ok(tls) => held.push(tls),
                    Err(e) => return Err(format!("session {i}: {e}").into()),
                }
            }
            println!("ready: {} TLS sessions open", held.len());
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
    }
    Ok(())
}
