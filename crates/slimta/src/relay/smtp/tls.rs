//! TLS for the client side (feature `tls`): the rustls configuration of a
//! relay and the handshake.
//!
//! Design decisions:
//! - One crypto provider for the whole project: rustls' default, aws-lc-rs
//!   (the edge uses the same).
//! - Verified sessions trust the system's certificate store
//!   (`rustls-native-certs`, i.e. Debian's `/etc/ssl/certs`), which is what
//!   an operator of Postfix expects and updates; `tls_ca_file` *replaces* it
//!   with the certificates of one PEM file (a private CA, or a test CA).
//! - Unverified sessions (`tls_verify = false`, and MX delivery, which is
//!   opportunistic by RFC 7435) still check the handshake signatures, so the
//!   session is encrypted to whoever holds the key presented; they do not
//!   check who that is. That protects against passive eavesdropping only.
//! - The configuration is built on the first TLS session and kept (the CA
//!   file is read once); a failure to build it is a transient, clearly
//!   worded error for every attempt until the operator fixes it.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How a relay's TLS sessions are configured.
#[derive(Debug, Default)]
pub(crate) struct TlsClient {
    verify: bool,
    ca_file: Option<PathBuf>,
    config: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl TlsClient {
    pub(crate) fn new(verify: bool, ca_file: Option<PathBuf>) -> Self {
        Self {
            verify,
            ca_file,
            config: OnceLock::new(),
        }
    }

    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.config.get_or_init(|| self.build()).clone()
    }

    fn build(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = if self.verify {
            let mut roots = RootCertStore::empty();
            match &self.ca_file {
                Some(file) => {
                    let certs = CertificateDer::pem_file_iter(file)
                        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(format!("no usable certificate in {}", file.display()));
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err("no trusted certificates in the system store".into());
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
                .with_no_client_auth()
        };
        Ok(Arc::new(config))
    }

    /// The TLS handshake on `tcp` for `host` (a name or an IP address).
    pub(crate) async fn handshake(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let config = self.config()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Accepts any certificate, still checking the handshake signatures.
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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
