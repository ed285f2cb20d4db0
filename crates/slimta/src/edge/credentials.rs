//! The users an edge accepts for SMTP AUTH and HTTP Basic authentication.
//!
//! Secrets come from the configuration with Dovecot-style scheme prefixes,
//! so an operator can copy entries from a Dovecot `passwd` file or produce
//! them with `doveadm pw`:
//!
//! - `{PLAIN}secret`: the password itself. The only scheme that allows
//!   CRAM-MD5, which needs the shared secret on the server.
//! - `{ARGON2ID}$argon2id$v=19$m=...,t=...,p=...$salt$hash` (a PHC string,
//!   checked with the `argon2` crate using the parameters in the string).
//! - `{SHA512-CRYPT}$6$[rounds=N$]salt$hash` (glibc `crypt(3)` SHA-512,
//!   checked with the `sha-crypt` crate).
//!
//! Decisions:
//! - Scheme names match case-insensitively, as in Dovecot. A missing or
//!   unknown scheme, or a hash that does not parse, is a construction error
//!   naming the user: a typo must stop the configuration from loading, not
//!   lock a user out at run time.
//! - Comparisons are constant-time: `subtle` for plain secrets, the hash
//!   crates' own constant-time checks for hashes, `hmac`'s `verify_slice`
//!   for CRAM-MD5. An unknown user fails at once; its timing may reveal that
//!   the user does not exist (accepted: the failed-login delay of the edge
//!   dominates, and hashing a dummy for every unknown name would hand
//!   attackers free CPU).
//! - Argon2 and SHA-crypt are deliberately slow; async callers use
//!   [`Credentials::verify_async`], which runs them under
//!   `tokio::task::spawn_blocking` so a login never stalls the sessions that
//!   share a runtime thread.
//! - The store is immutable and cheap to clone (an `Arc`); a reload builds
//!   a new one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use hmac::{Hmac, Mac};
use md5::Md5;
use subtle::ConstantTimeEq;

/// Why a credentials store could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsError {
    user: String,
    message: String,
}

impl CredentialsError {
    /// The user whose entry is wrong.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {:?}: {}", self.user, self.message)
    }
}

impl std::error::Error for CredentialsError {}

#[derive(Clone)]
enum Secret {
    Plain(String),
    Argon2id(String),
    Sha512Crypt(String),
}

impl Secret {
    fn parse(user: &str, entry: &str) -> Result<Self, CredentialsError> {
        let error = |message: String| CredentialsError {
            user: user.to_string(),
            message,
        };
        let Some((scheme, rest)) = entry.strip_prefix('{').and_then(|e| e.split_once('}')) else {
            return Err(error(
                "secret has no {SCHEME} prefix (use {PLAIN}, {ARGON2ID} or {SHA512-CRYPT})".into(),
            ));
        };
        match scheme.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Secret::Plain(rest.to_string())),
            "ARGON2ID" => {
                let hash = PasswordHash::new(rest)
                    .map_err(|e| error(format!("bad {{ARGON2ID}} hash: {e}")))?;
                if hash.algorithm.as_str() != "argon2id" {
                    return Err(error(format!(
                        "{{ARGON2ID}} hash is for {}, not argon2id",
                        hash.algorithm
                    )));
                }
                Ok(Secret::Argon2id(rest.to_string()))
            }
            "SHA512-CRYPT" => {
                if !is_sha512_crypt(rest) {
                    return Err(error(
                        "bad {SHA512-CRYPT} hash (expected $6$[rounds=N$]salt$hash)".into(),
                    ));
                }
                Ok(Secret::Sha512Crypt(rest.to_string()))
            }
            other => Err(error(format!("unknown password scheme {{{other}}}"))),
        }
    }

    fn verify(&self, password: &str) -> bool {
        match self {
            Secret::Plain(secret) => secret.as_bytes().ct_eq(password.as_bytes()).into(),
            Secret::Argon2id(phc) => PasswordHash::new(phc).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            }),
            Secret::Sha512Crypt(hash) => sha_crypt::sha512_check(password, hash).is_ok(),
        }
    }

    fn is_slow(&self) -> bool {
        !matches!(self, Secret::Plain(_))
    }
}

/// `$6$[rounds=N$]salt$hash` with a 86-character hash in crypt's base64.
fn is_sha512_crypt(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("$6$") else {
        return false;
    };
    let rest = match rest.strip_prefix("rounds=") {
        Some(r) => {
            let Some((n, r)) = r.split_once('$') else {
                return false;
            };
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            r
        }
        None => rest,
    };
    let Some((salt, hash)) = rest.split_once('$') else {
        return false;
    };
    salt.len() <= 16
        && !salt.contains(['$', ':', '\n'])
        && hash.len() == 86
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

type Users = Arc<BTreeMap<String, Secret>>;

/// Users and their secrets. Cheap to clone; clones share one store, which
/// [`Credentials::replace`] swaps for all of them at once.
#[derive(Clone, Default)]
pub struct Credentials {
    users: Arc<RwLock<Users>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("Credentials")
            .field("users", &self.users().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Builds the store from user names and scheme-prefixed secrets.
    ///
    /// # Errors
    ///
    /// When an entry has no scheme, an unknown scheme, or a hash that does
    /// not parse; the error names the user.
    pub fn from_map(users: BTreeMap<String, String>) -> Result<Self, CredentialsError> {
        let users = users
            .into_iter()
            .map(|(user, entry)| {
                let secret = Secret::parse(&user, &entry)?;
                Ok((user, secret))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            users: Arc::new(RwLock::new(Arc::new(users))),
        })
    }

    /// The users as they are now.
    fn users(&self) -> Users {
        self.users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Gives this store, and every clone of it, `other`'s users (the app's
    /// SIGHUP reload); an AUTH in progress finishes against the old ones.
    pub fn replace(&self, other: &Credentials) {
        let users = other.users();
        *self.users.write().unwrap_or_else(PoisonError::into_inner) = users;
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users().is_empty()
    }

    /// Whether `user` exists.
    pub fn contains(&self, user: &str) -> bool {
        self.users().contains_key(user)
    }

    /// Whether `password` is `user`'s. Blocks for the duration of a password
    /// hash; from async code use [`Credentials::verify_async`].
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.users().get(user).is_some_and(|s| s.verify(password))
    }

    /// [`Credentials::verify`] off the async runtime's threads (hashed
    /// secrets run under `spawn_blocking`; plain ones are checked in place).
    pub async fn verify_async(&self, user: &str, password: &str) -> bool {
        let Some(secret) = self.users().get(user).cloned() else {
            return false;
        };
        if !secret.is_slow() {
            return secret.verify(password);
        }
        let password = password.to_string();
        tokio::task::spawn_blocking(move || secret.verify(&password))
            .await
            .unwrap_or(false)
    }

    /// The plain secret of `user`, if it is stored as `{PLAIN}` (CRAM-MD5
    /// needs it).
    pub fn plain_secret(&self, user: &str) -> Option<String> {
        match self.users().get(user)? {
            Secret::Plain(secret) => Some(secret.clone()),
            _ => None,
        }
    }

    /// Checks a CRAM-MD5 answer (RFC 2195): `response_hex` must be the
    /// HMAC-MD5 of `challenge` keyed with `user`'s plain secret, in hex
    /// (either case). Users without a `{PLAIN}` secret always fail.
    pub fn cram_md5_verify(&self, user: &str, challenge: &[u8], response_hex: &str) -> bool {
        let Some(secret) = self.plain_secret(user) else {
            return false;
        };
        let Some(response) = decode_hex(response_hex) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Md5>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(challenge);
        mac.verify_slice(&response).is_ok()
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    fn store(entries: &[(&str, &str)]) -> Result<Credentials, CredentialsError> {
        Credentials::from_map(
            entries
                .iter()
                .map(|(u, s)| ((*u).to_string(), (*s).to_string()))
                .collect(),
        )
    }

    /// Produced by Python 3.11's `crypt.crypt(pw, crypt.mksalt(METHOD_SHA512))`
    /// (glibc), so they check interoperability, not just a round trip.
    const GLIBC_WONDERLAND: &str = "$6$YtIVYe2u4ntsSxxL$p2ncOYRR8oiXVo8sUh.crDC2WgNS.IAnCm8FvZyKM1KVnvPHt.b5PzXBpMnebEEfA3bfZPJsw8//GAX68gx9R0";
    const GLIBC_ROUNDS: &str = "$6$rounds=10000$kWBrmj1LfWIGwQge$9gsQnl1crN/8spvTQ4dXoc7fYeME6SEBrtXBKrc2xhQQ4qxsYNfkIe5ehT3WMYBEpBUBpmtysLRd1zO1EP/JJ1";

    #[test]
    fn replace_reaches_every_clone() {
        let handle = store(&[("alice", "{PLAIN}old")]).unwrap();
        let edge_copy = handle.clone();
        handle.replace(&store(&[("alice", "{PLAIN}new"), ("bob", "{PLAIN}b")]).unwrap());
        assert!(edge_copy.verify("alice", "new"));
        assert!(!edge_copy.verify("alice", "old"));
        assert!(edge_copy.contains("bob"));
    }

    #[test]
    fn every_scheme_verifies() {
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let argon = Argon2::default()
            .hash_password(b"rabbit hole", &salt)
            .unwrap()
            .to_string();
        assert!(argon.starts_with("$argon2id$"));
        let generated =
            sha_crypt::sha512_simple("queen", &sha_crypt::Sha512Params::new(5000).unwrap())
                .unwrap();
        let creds = store(&[
            ("alice", "{PLAIN}wonderland"),
            ("bob", &format!("{{ARGON2ID}}{argon}")),
            ("carol", &format!("{{SHA512-CRYPT}}{GLIBC_WONDERLAND}")),
            ("dave", &format!("{{sha512-crypt}}{GLIBC_ROUNDS}")),
            ("erin", &format!("{{SHA512-CRYPT}}{generated}")),
        ])
        .unwrap();
        let cases = [
            ("alice", "wonderland", true),
            ("alice", "wonderlan", false),
            ("alice", "wonderland ", false),
            ("alice", "", false),
            ("bob", "rabbit hole", true),
            ("bob", "rabbit-hole", false),
            ("carol", "wonderland", true),
            ("carol", "Wonderland", false),
            ("dave", "s3cret pass", true),
            ("dave", "s3cret", false),
            ("erin", "queen", true),
            ("erin", "king", false),
            ("mallory", "wonderland", false),
            ("Alice", "wonderland", false),
        ];
        for (user, password, want) in cases {
            assert_eq!(creds.verify(user, password), want, "{user} {password}");
        }
        assert_eq!(creds.plain_secret("alice").as_deref(), Some("wonderland"));
        assert_eq!(creds.plain_secret("bob"), None);
        assert_eq!(creds.plain_secret("nobody"), None);
        let debug = format!("{creds:?}");
        assert!(debug.contains("alice") && !debug.contains("wonderland"));
    }

    #[tokio::test]
    async fn async_verification_matches() {
        let creds = store(&[
            ("alice", "{PLAIN}wonderland"),
            ("carol", &format!("{{SHA512-CRYPT}}{GLIBC_WONDERLAND}")),
        ])
        .unwrap();
        assert!(creds.verify_async("alice", "wonderland").await);
        assert!(creds.verify_async("carol", "wonderland").await);
        assert!(!creds.verify_async("carol", "x").await);
        assert!(!creds.verify_async("nobody", "x").await);
    }

    #[test]
    fn cram_md5_rfc2195_vector() {
        let creds = store(&[
            ("tim", "{PLAIN}tanstaaftanstaaf"),
            ("carol", &format!("{{SHA512-CRYPT}}{GLIBC_WONDERLAND}")),
        ])
        .unwrap();
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        assert!(creds.cram_md5_verify("tim", challenge, "b913a602c7eda7a495b4e6e7334d3890"));
        assert!(creds.cram_md5_verify("tim", challenge, "B913A602C7EDA7A495B4E6E7334D3890"));
        assert!(!creds.cram_md5_verify("tim", challenge, "b913a602c7eda7a495b4e6e7334d3891"));
        assert!(!creds.cram_md5_verify("tim", challenge, "b913a602c7eda7a495b4e6e7334d389"));
        assert!(!creds.cram_md5_verify("tim", challenge, "zz13a602c7eda7a495b4e6e7334d3890"));
        assert!(!creds.cram_md5_verify("tim", b"<other>", "b913a602c7eda7a495b4e6e7334d3890"));
        assert!(!creds.cram_md5_verify("carol", challenge, "b913a602c7eda7a495b4e6e7334d3890"));
        assert!(!creds.cram_md5_verify("nobody", challenge, "b913a602c7eda7a495b4e6e7334d3890"));
    }

    #[test]
    fn bad_entries_name_the_user() {
        let cases = [
            "wonderland",
            "{MD5}abc",
            "{CRYPT}abc",
            "{PLAIN",
            "{ARGON2ID}not a hash",
            "{ARGON2ID}$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ",
            "{SHA512-CRYPT}$5$salt$hash",
            "{SHA512-CRYPT}$6$salt$short",
            "{SHA512-CRYPT}$6$rounds=x$salt$p2ncOYRR8oiXVo8sUh.crDC2WgNS.IAnCm8FvZyKM1KVnvPHt.b5PzXBpMnebEEfA3bfZPJsw8//GAX68gx9R0",
        ];
        for entry in cases {
            let e = store(&[("alice", "{PLAIN}ok"), ("zed", entry)]).unwrap_err();
            assert_eq!(e.user(), "zed", "{entry}");
            assert!(e.to_string().starts_with("user \"zed\": "), "{e}");
        }
        assert!(
            store(&[("u", "{XYZ}abc")])
                .unwrap_err()
                .to_string()
                .contains("unknown password scheme {XYZ}")
        );
    }
}
