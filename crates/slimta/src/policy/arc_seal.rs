//! [`ArcSeal`]: the key and names [`Authenticate`](super::authenticate::Authenticate)
//! seals verified mail with (RFC 8617), and the loading of that key.
//!
//! Decisions:
//! - The key is read like a DKIM signing key ([`DkimKey`]): PEM, RSA in
//!   PKCS#1 (what `opendkim-genkey` writes) or PKCS#8, or Ed25519 in
//!   PKCS#8, RSA of at least 2048 bits, test-signed when loaded. RSA
//!   seals are `rsa-sha256`, Ed25519 seals `ed25519-sha256`; ARC has no
//!   SHA-1.
//! - The key is read once, when the policy is built: a key that cannot be
//!   read is a configuration error, never a per-message failure.
//! - The signed header fields are the ones a forwarder does not rewrite
//!   and a reader sees: From, To, Cc, Subject, Date, Message-ID,
//!   Reply-To, MIME-Version, Content-Type. Relaxed/relaxed
//!   canonicalization, like the rest of the mail world.
//! - A seal that cannot be made (no signed fields in the message, a chain
//!   mail-auth says cannot be sealed) leaves the message unsealed and is
//!   logged: the verification results still go in the header.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use mail_auth::arc::ArcSealer;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{AuthenticatedMessage, AuthenticationResults};

use super::authenticate::SealInputs;
use super::dkim_key::{DkimKey, KeyAlgorithm, SharedKey};

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

/// A loaded ARC sealing key with its domain and selector.
#[derive(Clone)]
pub struct ArcSeal {
    domain: String,
    selector: String,
    algorithm: &'static str,
    sealer: Arc<ArcSealer<SharedKey, Done>>,
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
    /// The file cannot be read, or holds no usable RSA or Ed25519 private
    /// key (see [`DkimKey::load`]).
    pub fn from_file(domain: &str, selector: &str, path: &Path) -> Result<Self, KeyError> {
        let key = DkimKey::load(path).map_err(|e| match e {
            super::dkim_key::KeyError::Read(e) => {
                KeyError(format!("cannot read {}: {e}", path.display()))
            }
            e => KeyError(format!("{}: {e}", path.display())),
        })?;
        Ok(Self::from_key(domain, selector, &key))
    }

    /// Parses a PEM key (see the module docs for the forms).
    ///
    /// # Errors
    ///
    /// Not a usable PEM RSA or Ed25519 private key.
    pub fn from_pem(domain: &str, selector: &str, pem: &str) -> Result<Self, KeyError> {
        let key = DkimKey::from_pem(pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self::from_key(domain, selector, &key))
    }

    /// Seals with a loaded key as `domain` with `selector`.
    pub fn from_key(domain: &str, selector: &str, key: &DkimKey) -> Self {
        let algorithm = match key.algorithm() {
            KeyAlgorithm::Rsa { .. } => "rsa-sha256",
            KeyAlgorithm::Ed25519 => "ed25519-sha256",
        };
        let sealer = ArcSealer::from_key(key.signing_key())
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Self {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            algorithm,
            sealer: Arc::new(sealer),
        }
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
        let set = self
            .sealer
            .seal(message, &results, inputs.arc)
            .map(|s| s.to_header());
        match set {
            Ok(set) => Some(set),
            Err(e) => {
                tracing::warn!(domain = %self.domain, error = %e, "ARC seal failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_key_is_refused_with_a_reason() {
        let cases = [
            ("", "no PEM private key"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "no PEM private key",
            ),
        ];
        for (pem, want) in cases {
            let err = ArcSeal::from_pem("example.test", "arc1", pem).unwrap_err();
            assert!(err.0.contains(want), "{err} for {pem:?}");
        }
        let (key, _) = DkimKey::generate_ed25519().unwrap();
        let seal = ArcSeal::from_key("example.test", "arc1", &key);
        assert_eq!(seal.algorithm(), "ed25519-sha256");
    }
}
