//! [`ArcSeal`]: the key and names [`Authenticate`](super::authenticate::Authenticate)
//! seals verified mail with (RFC 8617), and the loading of that key.
//!
//! Decisions:
//! - The key is a PEM file: an RSA key in PKCS#1 (`BEGIN RSA PRIVATE
//!   KEY`, what `opendkim-genkey` writes) or PKCS#8 (`BEGIN PRIVATE KEY`,
//!   `openssl genpkey`), or an Ed25519 key in PKCS#8. RSA seals are
//!   `rsa-sha256`, Ed25519 seals `ed25519-sha256`; ARC has no SHA-1.
//! - The key is read once, when the policy is built: a key that cannot be
//!   read is a configuration error, never a per-message failure.
//! - The signed header fields are the ones a forwarder does not rewrite
//!   and a reader sees: From, To, Cc, Subject, Date, Message-ID,
//!   Reply-To, MIME-Version, Content-Type. Relaxed/relaxed
//!   canonicalization, like the rest of the mail world.
//! - A seal that cannot be made (no signed fields in the message, a chain
//!   mail-auth says cannot be sealed) leaves the message unsealed and is
//!   logged: the verification results still go in the header.
//!
//! (Another module may load DKIM signing keys the same way; this one is
//! kept to what ARC needs.)

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{AuthenticatedMessage, AuthenticationResults};
use rustls_pki_types::PrivateKeyDer;

use super::authenticate::SealInputs;

/// The header fields an ARC-Message-Signature covers.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
];

enum Sealer {
    Rsa(ArcSealer<RsaKey<Sha256>, Done>),
    Ed25519(ArcSealer<Ed25519Key, Done>),
}

/// A loaded ARC sealing key with its domain and selector.
#[derive(Clone)]
pub struct ArcSeal {
    domain: String,
    selector: String,
    algorithm: &'static str,
    sealer: Arc<Sealer>,
}

impl fmt::Debug for ArcSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArcSeal")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a sealing key could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl ArcSeal {
    /// Reads the PEM key at `path`, sealing as `domain` with `selector`.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or holds no RSA or Ed25519 private key.
    pub fn from_file(domain: &str, selector: &str, path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pem(domain, selector, &pem)
            .map_err(|KeyError(e)| KeyError(format!("{}: {e}", path.display())))
    }

    /// Parses a PEM key (see the module docs for the forms).
    ///
    /// # Errors
    ///
    /// Not a PEM RSA or Ed25519 private key.
    pub fn from_pem(domain: &str, selector: &str, pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_block(pem)?;
        let sealer = match label.as_str() {
            "RSA PRIVATE KEY" => Sealer::Rsa(rsa(
                RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(der.into()))
                    .map_err(|e| KeyError(format!("invalid RSA key: {e}")))?,
                domain,
                selector,
            )),
            "PRIVATE KEY" => {
                match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der.clone().into())) {
                    Ok(key) => Sealer::Rsa(rsa(key, domain, selector)),
                    Err(_) => {
                        let key =
                            Ed25519Key::from_pkcs8_maybe_unchecked_der(&der).map_err(|e| {
                                KeyError(format!("neither an RSA nor an Ed25519 key: {e}"))
                            })?;
                        Sealer::Ed25519(
                            ArcSealer::from_key(key)
                                .domain(domain)
                                .selector(selector)
                                .headers(SIGNED_HEADERS.iter().copied())
                                .header_canonicalization(Canonicalization::Relaxed)
                                .body_canonicalization(Canonicalization::Relaxed),
                        )
                    }
                }
            }
            other => {
                return Err(KeyError(format!(
                    "expected a private key, found a PEM \"{other}\" block"
                )));
            }
        };
        let algorithm = match sealer {
            Sealer::Rsa(_) => "rsa-sha256",
            Sealer::Ed25519(_) => "ed25519-sha256",
        };
        Ok(Self {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            algorithm,
            sealer: Arc::new(sealer),
        })
    }

    /// The sealing domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// `rsa-sha256` or `ed25519-sha256`.
    pub fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    /// The three ARC header fields (with CRLF) for `message`, or `None`
    /// when it cannot be sealed (logged).
    pub(super) fn seal(
        &self,
        authserv_id: &str,
        message: &AuthenticatedMessage<'_>,
        inputs: &SealInputs<'_>,
    ) -> Option<String> {
        if !inputs.arc.can_be_sealed() {
            tracing::info!(domain = %self.domain, "incoming ARC chain failed: not sealed");
            return None;
        }
        let from = message.from.first().map(String::as_str).unwrap_or_default();
        let mut results =
            AuthenticationResults::new(authserv_id).with_dkim_results(inputs.dkim, from);
        if let Some(ip) = inputs.ip {
            results = results
                .with_spf_mailfrom_result(inputs.spf, ip, inputs.sender, inputs.helo)
                .with_arc_result(inputs.arc, ip);
        }
        let results = results.with_dmarc_result(inputs.dmarc);
        let set = match &*self.sealer {
            Sealer::Rsa(s) => s.seal(message, &results, inputs.arc).map(|s| s.to_header()),
            Sealer::Ed25519(s) => s.seal(message, &results, inputs.arc).map(|s| s.to_header()),
        };
        match set {
            Ok(set) => Some(set),
            Err(e) => {
                tracing::warn!(domain = %self.domain, error = %e, "ARC seal failed");
                None
            }
        }
    }
}

fn rsa(key: RsaKey<Sha256>, domain: &str, selector: &str) -> ArcSealer<RsaKey<Sha256>, Done> {
    ArcSealer::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The label and bytes of the first PEM block.
fn pem_block(pem: &str) -> Result<(String, Vec<u8>), KeyError> {
    let mut lines = pem.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
        })
        .ok_or_else(|| KeyError("no PEM block (-----BEGIN ...-----) found".into()))?
        .to_owned();
    let body: String = lines.take_while(|l| !l.starts_with("-----END ")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| KeyError(format!("invalid base64 in the PEM block: {e}")))?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_key_is_refused_with_a_reason() {
        let cases = [
            ("", "no PEM block (-----BEGIN ...-----) found"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "expected a private key, found a PEM \"CERTIFICATE\" block",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                "invalid base64 in the PEM block",
            ),
        ];
        for (pem, want) in cases {
            let err = ArcSeal::from_pem("example.test", "arc1", pem).unwrap_err();
            assert!(err.0.starts_with(want), "{err} for {pem:?}");
        }
    }
}
