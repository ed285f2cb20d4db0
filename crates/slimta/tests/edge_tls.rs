//! `edge::tls` against a real rustls client over loopback: handshakes with
//! certificates made at test time (rcgen), what is recorded about them, and
//! reloading certificates while a session stays up.
#![cfg(feature = "tls")]

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use slimta::edge::tls::{self, ReloadableTls, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

const HOST: &str = "mx.example.test";

/// A CA and a leaf certificate for [`HOST`] signed by it, as PEM.
struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestPki {
    fn new(ca_name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![HOST.to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, HOST);
        let cert_pem = leaf.signed_by(&key, &issuer).unwrap().pem();
        Self {
            ca_pem,
            cert_pem,
            key_pem: key.serialize_pem(),
        }
    }

    fn write(&self, dir: &Path) -> TlsConfig {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &self.key_pem).unwrap();
        TlsConfig::new(dir.join("cert.pem"), dir.join("key.pem"))
    }

    fn connector(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// Accepts TLS connections forever; each one reports its `TlsInfo` and then
/// echoes lines.
async fn echo_server(
    tls: ReloadableTls,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<slimta::TlsInfo>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (infos, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = tls.acceptor();
            let infos = infos.clone();
            tokio::spawn(async move {
                let Ok((mut stream, info)) = tls::accept(&acceptor, stream).await else {
                    return;
                };
                let _ = infos.send(info);
                let mut buf = [0u8; 256];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn echo(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, text: &[u8]) -> Vec<u8> {
    stream.write_all(text).await.unwrap();
    let mut got = vec![0u8; text.len()];
    stream.read_exact(&mut got).await.unwrap();
    got
}

async fn connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
}

#[tokio::test]
async fn handshake_records_protocol_and_cipher() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("CA one");
    let tls = ReloadableTls::new(pki.write(dir.path())).unwrap();
    let (addr, mut infos) = echo_server(tls).await;

    let mut s13 = connect(&pki.connector(&[&rustls::version::TLS13]), addr)
        .await
        .unwrap();
    assert_eq!(echo(&mut s13, b"hello\r\n").await, b"hello\r\n");
    let info = infos.recv().await.unwrap();
    assert_eq!(info.protocol, "TLSv1.3");
    let client_suite = s13.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(Some(info.cipher.as_str()), client_suite.as_str());
    assert!(info.cipher.starts_with("TLS13_"), "{info:?}");

    let mut s12 = connect(&pki.connector(&[&rustls::version::TLS12]), addr)
        .await
        .unwrap();
    assert_eq!(echo(&mut s12, b"x").await, b"x");
    let info = infos.recv().await.unwrap();
    assert_eq!(info.protocol, "TLSv1.2");
    assert!(info.cipher.starts_with("TLS_ECDHE_"), "{info:?}");
}

#[tokio::test]
async fn reload_changes_new_handshakes_only() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (TestPki::new("CA one"), TestPki::new("CA two"));
    let tls = ReloadableTls::new(one.write(dir.path())).unwrap();
    let (addr, _infos) = echo_server(tls.clone()).await;
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];

    let mut old_session = connect(&one.connector(&all), addr).await.unwrap();
    assert_eq!(echo(&mut old_session, b"before").await, b"before");
    assert!(
        connect(&two.connector(&all), addr).await.is_err(),
        "a client trusting only CA two must refuse the first certificate"
    );

    two.write(dir.path());
    tls.reload().unwrap();

    let mut new_session = connect(&two.connector(&all), addr).await.unwrap();
    assert_eq!(echo(&mut new_session, b"new").await, b"new");
    let presented = new_session.get_ref().1.peer_certificates().unwrap()[0].clone();
    use rustls::pki_types::pem::PemObject;
    let expected =
        rustls::pki_types::CertificateDer::from_pem_slice(two.cert_pem.as_bytes()).unwrap();
    assert_eq!(presented, expected);
    assert!(connect(&one.connector(&all), addr).await.is_err());
    // The session from before the reload is still up and working.
    assert_eq!(echo(&mut old_session, b"after").await, b"after");

    // A broken file does not replace the working configuration.
    std::fs::write(dir.path().join("cert.pem"), "not pem").unwrap();
    let e = tls.reload().unwrap_err();
    assert!(e.to_string().contains("cert.pem"), "{e}");
    let mut still = connect(&two.connector(&all), addr).await.unwrap();
    assert_eq!(echo(&mut still, b"ok").await, b"ok");
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (TestPki::new("CA one"), TestPki::new("CA two"));
    let files = one.write(dir.path());
    assert!(files.load().is_ok());

    let missing = TlsConfig::new(dir.path().join("nope.pem"), &files.key);
    let e = missing.load().unwrap_err();
    assert_eq!(e.path(), Some(dir.path().join("nope.pem").as_path()));
    assert!(e.to_string().contains("nope.pem"), "{e}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = TlsConfig::new(&empty, &files.key).load().unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
    let e = TlsConfig::new(&files.cert, &empty).load().unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");

    // A key file holding only a certificate has no key.
    let e = TlsConfig::new(&files.cert, &files.cert).load().unwrap_err();
    assert!(e.to_string().contains("cert.pem"), "{e}");

    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &two.key_pem).unwrap();
    let e = TlsConfig::new(&files.cert, &other_key).load().unwrap_err();
    assert!(e.to_string().contains("other-key.pem"), "{e}");
}
