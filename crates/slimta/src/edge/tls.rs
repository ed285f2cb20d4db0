//! TLS for edges: certificates from PEM files, reload on SIGHUP, and the
//! handshake helper that records what was negotiated.
//!
//! Every TLS-speaking edge (SMTP STARTTLS, implicit TLS on port 465, HTTPS)
//! gets its server configuration from here, so they share one set of
//! choices:
//!
//! - rustls with the aws-lc-rs crypto provider only, TLS 1.2 and 1.3, no
//!   client certificates, no ALPN (SMTP has none; the HTTP edge speaks
//!   HTTP/1.1 only).
//! - The certificate chain and key are read with `rustls-pki-types`' PEM
//!   reader. The key may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Every error
//!   names the file it is about, because that is what an operator has to
//!   fix. rustls checks that the key belongs to the first certificate.
//! - [`ReloadableTls`] holds the current `Arc<ServerConfig>` behind a lock
//!   that is only taken to clone the `Arc`: a handshake takes the config of
//!   the moment it starts, so a reload changes only new handshakes and a
//!   session already encrypted keeps its certificate. A failed reload keeps
//!   the old configuration (a typo in a renewed file must not stop the
//!   server from accepting TLS).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::envelope::TlsInfo;

/// Why a TLS configuration could not be loaded. Its message names the file.
#[derive(Debug)]
pub struct TlsError {
    path: Option<PathBuf>,
    message: String,
}

impl TlsError {
    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn file(path: &Path, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{}: {what}", path.display()),
            path: Some(path.to_path_buf()),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {}

/// Where an edge's certificate chain and private key are (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
}

impl TlsConfig {
    /// A configuration reading `cert` and `key`.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// Reads the files and builds a rustls server configuration.
    ///
    /// # Errors
    ///
    /// When a file cannot be read or holds no usable certificate or key,
    /// or the key does not match the certificate; the error names the file.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| TlsError::file(&self.cert, pem_error(&e)))?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::file(&self.cert, pem_error(&e)))?;
        if certs.is_empty() {
            return Err(TlsError::file(&self.cert, "no certificate in PEM file"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| TlsError::file(&self.key, pem_error(&e)))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError {
                path: None,
                message: format!("TLS setup: {e}"),
            })?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                TlsError::file(
                    &self.key,
                    format!("unusable with {}: {e}", self.cert.display()),
                )
            })?;
        Ok(Arc::new(config))
    }
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no matching PEM section".into(),
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("bad PEM: {other}"),
    }
}

/// A TLS configuration that can be re-read while edges run (SIGHUP).
/// Clones share the configuration.
#[derive(Clone)]
pub struct ReloadableTls {
    files: TlsConfig,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Loads `files` once.
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::load`].
    pub fn new(files: TlsConfig) -> Result<Self, TlsError> {
        let config = files.load()?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(config)),
        })
    }

    /// Re-reads the files; new handshakes use the new certificate, sessions
    /// already encrypted keep theirs.
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::load`]; the previous configuration then stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.load()?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    /// The configuration for a handshake starting now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// An acceptor for a handshake starting now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsConfig {
        &self.files
    }
}

/// Runs the server side of a TLS handshake on `stream` and reports what was
/// negotiated.
///
/// # Errors
///
/// When the handshake fails (the client's alert, a protocol error, or an
/// I/O error); the caller decides about timeouts.
pub async fn accept<S>(acceptor: &TlsAcceptor, stream: S) -> io::Result<(TlsStream<S>, TlsInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = acceptor.accept(stream).await?;
    let info = tls_info(tls.get_ref().1);
    Ok((tls, info))
}

/// The protocol (`"TLSv1.3"`) and cipher suite (`"TLS13_AES_256_GCM_SHA384"`)
/// of an established connection.
pub fn tls_info(connection: &rustls::ServerConnection) -> TlsInfo {
    let protocol = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = connection
        .negotiated_cipher_suite()
        .map(|suite| {
            let suite = suite.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_string)
        })
        .unwrap_or_default();
    TlsInfo { protocol, cipher }
}
