//! DKIM signing keys: reading a PEM private key, making a new one, and the
//! DNS TXT record that publishes its public half.
//!
//! The signatures themselves are computed by mail-auth (on aws-lc-rs); this
//! file only turns key files into mail-auth keys and refuses the ones a
//! receiver would not trust, so that a bad key is found when the program
//! starts (or `--check-config` runs), never on the first message.
//!
//! Decisions:
//! - Accepted: PEM `PRIVATE KEY` (PKCS#8, RSA or Ed25519) and `RSA PRIVATE
//!   KEY` (PKCS#1), what `openssl genpkey`, `openssl genrsa` and
//!   `opendkim-genkey` write. EC and encrypted keys are refused.
//! - RSA keys under 2048 bits are refused. RFC 8301 forbids signing with
//!   keys under 1024 bits; keys of 1024 to 2047 bits are allowed by the RFC
//!   but refused by the signer this build uses (aws-lc-rs signs with 2048 to
//!   8192 bits), and the error says so. `keygen` makes 2048-bit keys.
//! - Every key signs a small test message when it is loaded: a key that
//!   parses but cannot sign is a load error, not a run-time one.
//! - The published RSA key is the SubjectPublicKeyInfo (what OpenDKIM and
//!   dkimpy expect); Ed25519's is the raw 32-byte key (RFC 8463).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{
    Algorithm, DkimKey as MailAuthKey, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::Writable;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The smallest RSA key this build signs with (see the module docs).
pub const MIN_RSA_BITS: usize = 2048;

/// The kind of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA with SHA-256 (`a=rsa-sha256`), with the modulus size in bits.
    Rsa {
        /// The modulus size.
        bits: usize,
    },
    /// Ed25519 with SHA-256 (`a=ed25519-sha256`, RFC 8463).
    Ed25519,
}

/// Why a key could not be read or made.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    Read(std::io::Error),
    /// The file holds no PEM private key.
    NotPem,
    /// A PEM private key of a kind DKIM does not sign with (EC, ...).
    Unsupported(&'static str),
    /// An RSA key under [`MIN_RSA_BITS`].
    WeakRsa,
    /// The key data is damaged or the crypto library refused it.
    Invalid(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "cannot read the key: {e}"),
            Self::NotPem => f.write_str(
                "no PEM private key found (expected \"-----BEGIN PRIVATE KEY-----\" \
                 or \"-----BEGIN RSA PRIVATE KEY-----\")",
            ),
            Self::Unsupported(kind) => {
                write!(f, "{kind} keys cannot sign DKIM (use RSA or Ed25519)")
            }
            Self::WeakRsa => write!(
                f,
                "RSA key under {MIN_RSA_BITS} bits: RFC 8301 forbids under 1024 and this \
                 signer (aws-lc-rs) needs {MIN_RSA_BITS} to 8192; make a new one with \
                 `slimta dkim keygen`"
            ),
            Self::Invalid(why) => write!(f, "invalid key: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A private key ready to sign, with its public half for DNS.
///
/// Cheap to clone (the key itself is shared).
#[derive(Clone)]
pub struct DkimKey {
    signing: Arc<MailAuthKey>,
    algorithm: KeyAlgorithm,
    public: Vec<u8>,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The public half's last characters tell a rotated key apart (the
        // app compares sections by their Debug on SIGHUP); never the secret.
        let record = BASE64.encode(&self.public);
        let tail = &record[record.len().saturating_sub(12)..];
        f.debug_struct("DkimKey")
            .field("algorithm", &self.algorithm)
            .field("public", &format_args!("...{tail}"))
            .finish()
    }
}

impl DkimKey {
    /// Reads a PEM key file.
    ///
    /// # Errors
    ///
    /// [`KeyError`]: unreadable, not a PEM private key, not RSA or Ed25519,
    /// RSA too small, or damaged.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(KeyError::Read)?;
        Self::from_pem(&pem)
    }

    /// Parses a PEM private key.
    ///
    /// # Errors
    ///
    /// As [`DkimKey::load`], without the reading.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        let key = match der {
            PrivateKeyDer::Pkcs1(der) => Self::rsa(PrivateKeyDer::Pkcs1(der))?,
            PrivateKeyDer::Pkcs8(der) => match Self::ed25519(der.secret_pkcs8_der()) {
                Ok(key) => key,
                Err(_) => Self::rsa(PrivateKeyDer::Pkcs8(der))?,
            },
            PrivateKeyDer::Sec1(_) => return Err(KeyError::Unsupported("EC")),
            _ => return Err(KeyError::Unsupported("this kind of")),
        };
        key.self_test()?;
        Ok(key)
    }

    fn rsa(der: PrivateKeyDer<'_>) -> Result<Self, KeyError> {
        let pair = match &der {
            PrivateKeyDer::Pkcs1(d) => RsaKeyPair::from_der(d.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(d) => RsaKeyPair::from_pkcs8(d.secret_pkcs8_der()),
            _ => return Err(KeyError::Unsupported("this kind of")),
        };
        let pair = pair.map_err(|e| {
            if e.description_() == "TooSmall" {
                KeyError::WeakRsa
            } else {
                KeyError::Invalid(format!("not an RSA or Ed25519 key ({e})"))
            }
        })?;
        let public = pair
            .public_key()
            .as_der()
            .map_err(|e| KeyError::Invalid(e.to_string()))?
            .as_ref()
            .to_vec();
        let bits = pair.public_modulus_len() * 8;
        let signing =
            RsaKey::<Sha256>::from_key_der(der).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            signing: Arc::new(MailAuthKey::Rsa(signing)),
            algorithm: KeyAlgorithm::Rsa { bits },
            public,
        })
    }

    fn ed25519(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let signing = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            signing: Arc::new(MailAuthKey::Ed25519(signing)),
            algorithm: KeyAlgorithm::Ed25519,
            public: pair.public_key().as_ref().to_vec(),
        })
    }

    fn self_test(&self) -> Result<(), KeyError> {
        self.signing
            .sign(&b"slimta key check"[..])
            .map(|_| ())
            .map_err(|e| KeyError::Invalid(format!("the key cannot sign: {e}")))
    }

    /// A new RSA key of `bits` (2048 to 8192; 2048 is `keygen`'s default)
    /// and its PEM (PKCS#8) text.
    ///
    /// # Errors
    ///
    /// [`KeyError::WeakRsa`] under 2048 bits, [`KeyError::Invalid`] for a
    /// size aws-lc-rs does not make (it makes 2048, 3072, 4096 and 8192).
    pub fn generate_rsa(bits: usize) -> Result<(Self, String), KeyError> {
        use aws_lc_rs::rsa::KeySize;
        let size = match bits {
            0..MIN_RSA_BITS => return Err(KeyError::WeakRsa),
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            _ => {
                return Err(KeyError::Invalid(format!(
                    "cannot make a {bits}-bit RSA key (2048, 3072, 4096 or 8192)"
                )));
            }
        };
        let pair = RsaKeyPair::generate(size).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair
            .as_der()
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let pem = pem_encode("PRIVATE KEY", der.as_ref());
        Ok((Self::from_pem(pem.as_bytes())?, pem))
    }

    /// A new Ed25519 key and its PEM (PKCS#8) text.
    ///
    /// # Errors
    ///
    /// [`KeyError::Invalid`] if the crypto library fails.
    pub fn generate_ed25519() -> Result<(Self, String), KeyError> {
        let pair = Ed25519KeyPair::generate().map_err(|e| KeyError::Invalid(e.to_string()))?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let pem = pem_encode("PRIVATE KEY", der.as_ref());
        Ok((Self::from_pem(pem.as_bytes())?, pem))
    }

    /// The kind and size of the key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN`:
    /// `v=DKIM1; k=rsa; p=...` (or `k=ed25519`).
    pub fn dns_record(&self) -> String {
        let k = match self.algorithm {
            KeyAlgorithm::Rsa { .. } => "rsa",
            KeyAlgorithm::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", BASE64.encode(&self.public))
    }

    /// A zone-file line publishing [`DkimKey::dns_record`], with the text
    /// cut into quoted strings of at most 255 characters (a TXT string's
    /// limit; receivers join them).
    pub fn zone_line(&self, domain: &str, selector: &str) -> String {
        let record = self.dns_record();
        let strings: Vec<String> = record
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!(
            "{selector}._domainkey.{domain}. IN TXT ( {} )",
            strings.join(" ")
        )
    }

    /// The mail-auth key, for the signer.
    pub(crate) fn signing_key(&self) -> SharedKey {
        SharedKey(Arc::clone(&self.signing))
    }
}

/// A shared mail-auth key: mail-auth's signer owns its key, and one key
/// serves every message.
pub(crate) struct SharedKey(Arc<MailAuthKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_and_publish_a_record() {
        let (key, pem) = DkimKey::generate_ed25519().unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = DkimKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(again.dns_record(), key.dns_record());
        assert!(key.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
        // 32 raw bytes: 44 base64 characters.
        assert_eq!(key.dns_record().len(), "v=DKIM1; k=ed25519; p=".len() + 44);

        let (rsa, _) = DkimKey::generate_rsa(2048).unwrap();
        assert_eq!(rsa.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
        let line = rsa.zone_line("example.test", "s1");
        assert!(line.starts_with("s1._domainkey.example.test. IN TXT ( \"v=DKIM1; k=rsa; p="));
        // A 2048-bit SPKI is 294 bytes, 392 base64 characters: two strings.
        assert_eq!(line.matches('"').count(), 4, "{line}");
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert!(matches!(DkimKey::from_pem(b"hello"), Err(KeyError::NotPem)));
        assert!(matches!(
            DkimKey::generate_rsa(1024),
            Err(KeyError::WeakRsa)
        ));
        let garbage = pem_encode("PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        assert!(matches!(
            DkimKey::from_pem(garbage.as_bytes()),
            Err(KeyError::Invalid(_))
        ));
    }
}
