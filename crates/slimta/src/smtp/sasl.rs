//! SASL for SMTP AUTH (RFC 4954), server side, sans-IO: PLAIN (RFC 4616),
//! LOGIN (draft-murchison-sasl-login) and CRAM-MD5 (RFC 2195).
//!
//! This module only runs the exchange: it decodes what the client sends,
//! produces the `334` continuations and, once the credentials are complete,
//! an [`AuthAttempt`]. It never verifies anything: checking a password or a
//! CRAM-MD5 digest needs the credential store, which belongs to the edge
//! (`edge/credentials.rs`). The server state machine (`server.rs`) decides
//! when AUTH is allowed at all (EHLO, TLS, transaction) and feeds the lines.
//!
//! Decisions:
//! - Base64 is the standard alphabet (RFC 4648 section 4); padding may be
//!   present or left out, anything else (spaces, CR, LF, other characters)
//!   is `501 5.5.2 Invalid base64 data`.
//! - A response (initial or continuation) may be up to [`MAX_RESPONSE`]
//!   octets of base64 (RFC 4954 section 4 asks for at least 12,288); the
//!   server refuses longer lines with `500 5.5.6` without keeping them.
//! - A PLAIN message must be `[authzid] NUL authcid NUL passwd` with a
//!   non-empty authcid and password, all UTF-8 (RFC 4616 section 2); an
//!   empty authzid means none. LOGIN needs a non-empty UTF-8 user name and
//!   a UTF-8 password (an empty one is left to the verifier to refuse).
//!   A CRAM-MD5 response is `user SP digest`, the digest 32 hex digits
//!   (given to the verifier in lower case). Anything else is
//!   `501 5.5.4 Malformed authentication response`.
//! - CRAM-MD5 is server-first: an initial response is refused (501 5.5.4).
//!   Its challenge is `<random.timestamp@hostname>` (RFC 2195 section 2),
//!   the random part from a v4 UUID and the timestamp from the system clock;
//!   the challenge travels in the [`AuthAttempt`] so the verifier checks
//!   the digest against exactly what the client was sent.
//! - Secrets: [`AuthSecret`]'s `Debug` never prints a password or digest,
//!   and buffers of decoded octets are overwritten before they are dropped.
//!   The machine keeps nothing once the attempt is handed to the driver.
//!   (This is best effort without a zeroizing allocator: a `String` the
//!   driver receives is the driver's to clear.)

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::reply::Reply;

/// Longest response (initial or continuation) accepted, in octets of
/// base64, not counting the CRLF (RFC 4954 section 4: at least 12,288).
pub const MAX_RESPONSE: usize = 12_288;

/// Standard alphabet; padding optional on decode, written on encode.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A SASL mechanism the server can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): the password in clear, one message.
    Plain,
    /// `LOGIN`: user name and password in clear, one prompt each.
    Login,
    /// `CRAM-MD5` (RFC 2195): a keyed digest of a server challenge.
    CramMd5,
}

impl Mechanism {
    /// Every mechanism, in the order they are offered when all are enabled.
    pub const ALL: [Mechanism; 3] = [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5];

    /// The registered name (`PLAIN`, `LOGIN`, `CRAM-MD5`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
        }
    }

    /// Recognises a mechanism name, ASCII case-insensitively.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the password crosses the wire in clear (PLAIN, LOGIN), so
    /// the mechanism is offered only over TLS unless configured otherwise.
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What proves the client's identity.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthSecret {
    /// The password as sent (PLAIN, LOGIN).
    Password(String),
    /// CRAM-MD5: the challenge the server sent and the client's
    /// HMAC-MD5 digest of it, 32 lower-case hex digits.
    CramMd5 {
        /// The challenge, `<random.timestamp@hostname>`, as sent (before
        /// base64).
        challenge: String,
        /// The client's digest.
        digest_hex: String,
    },
}

impl fmt::Debug for AuthSecret {
    /// Never prints the password or the digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthSecret::Password(_) => f.write_str("Password(<redacted>)"),
            AuthSecret::CramMd5 { challenge, .. } => f
                .debug_struct("CramMd5")
                .field("challenge", challenge)
                .field("digest_hex", &"<redacted>")
                .finish(),
        }
    }
}

/// Complete credentials, for the driver to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthAttempt {
    /// The mechanism used.
    pub mechanism: Mechanism,
    /// The authorization identity (PLAIN only; `None` when empty or absent):
    /// whom the client wants to act as.
    pub authzid: Option<String>,
    /// The authentication identity: whose secret this is (the user name).
    pub authcid: String,
    /// The password or digest.
    pub secret: AuthSecret,
}

/// An exchange waiting for the client's next line.
#[derive(Debug)]
pub(crate) enum Exchange {
    /// PLAIN without initial response: the message comes next.
    Plain,
    /// LOGIN: the user name comes next.
    LoginUser,
    /// LOGIN: the password comes next.
    LoginPassword { username: String },
    /// CRAM-MD5: `user SP digest` comes next.
    CramMd5 { challenge: String },
}

/// What the server does after a step of the exchange.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send the `334` reply and wait for the next line.
    Continue(Exchange, Reply),
    /// The credentials are complete.
    Done(AuthAttempt),
    /// The exchange failed; send the reply (it counts as a bad command).
    Failed(Reply),
}

/// `501 5.7.0 Authentication cancelled`: the client sent `*`.
pub(crate) fn cancelled() -> Reply {
    Reply::new(501, "5.7.0", "Authentication cancelled")
}

fn bad_base64() -> Reply {
    Reply::new(501, "5.5.2", "Invalid base64 data")
}

fn malformed() -> Reply {
    Reply::new(501, "5.5.4", "Malformed authentication response")
}

fn continuation(text: &str) -> Reply {
    Reply::new(334, "", text)
}

/// `334 VXNlcm5hbWU6` (`Username:`) and `334 UGFzc3dvcmQ6` (`Password:`).
const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// A fresh CRAM-MD5 challenge for `hostname` (RFC 2195 section 2).
pub(crate) fn cram_challenge(hostname: &str) -> String {
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("<{random}.{now}@{hostname}>")
}

/// Starts an exchange for `AUTH mechanism [initial]`. `initial` is the
/// initial response as sent (`=` for an empty one); `challenge` makes the
/// CRAM-MD5 challenge when needed.
pub(crate) fn start(
    mechanism: Mechanism,
    initial: Option<&[u8]>,
    challenge: impl FnOnce() -> String,
) -> Outcome {
    match (mechanism, initial) {
        (Mechanism::Plain, None) => Outcome::Continue(Exchange::Plain, continuation("")),
        (Mechanism::Login, None) => {
            Outcome::Continue(Exchange::LoginUser, continuation(LOGIN_USER_PROMPT))
        }
        (Mechanism::CramMd5, None) => {
            let challenge = challenge();
            let text = BASE64.encode(challenge.as_bytes());
            Outcome::Continue(Exchange::CramMd5 { challenge }, continuation(&text))
        }
        (Mechanism::CramMd5, Some(_)) => Outcome::Failed(Reply::new(
            501,
            "5.5.4",
            "CRAM-MD5 does not take an initial response",
        )),
        (Mechanism::Plain, Some(ir)) => {
            let exchange = Exchange::Plain;
            step(exchange, if ir == b"=" { b"" } else { ir })
        }
        (Mechanism::Login, Some(ir)) => {
            step(Exchange::LoginUser, if ir == b"=" { b"" } else { ir })
        }
    }
}

/// Feeds the client's next line (without CRLF) to `exchange`.
pub(crate) fn respond(exchange: Exchange, line: &[u8]) -> Outcome {
    if line == b"*" {
        return Outcome::Failed(cancelled());
    }
    step(exchange, line)
}

fn step(exchange: Exchange, response: &[u8]) -> Outcome {
    let Some(mut decoded) = decode(response) else {
        return Outcome::Failed(bad_base64());
    };
    let outcome = match exchange {
        Exchange::Plain => {
            parse_plain(&decoded).map_or_else(|| Outcome::Failed(malformed()), Outcome::Done)
        }
        Exchange::LoginUser => match std::str::from_utf8(&decoded) {
            Ok(user) if !user.is_empty() => Outcome::Continue(
                Exchange::LoginPassword {
                    username: user.to_owned(),
                },
                continuation(LOGIN_PASSWORD_PROMPT),
            ),
            _ => Outcome::Failed(malformed()),
        },
        Exchange::LoginPassword { username } => match std::str::from_utf8(&decoded) {
            Ok(password) => Outcome::Done(AuthAttempt {
                mechanism: Mechanism::Login,
                authzid: None,
                authcid: username,
                secret: AuthSecret::Password(password.to_owned()),
            }),
            Err(_) => Outcome::Failed(malformed()),
        },
        Exchange::CramMd5 { challenge } => parse_cram(&decoded, challenge)
            .map_or_else(|| Outcome::Failed(malformed()), Outcome::Done),
    };
    decoded.fill(0);
    outcome
}

fn decode(response: &[u8]) -> Option<Vec<u8>> {
    if response.is_empty() {
        return Some(Vec::new());
    }
    BASE64.decode(response).ok()
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616 section 2).
fn parse_plain(message: &[u8]) -> Option<AuthAttempt> {
    let mut parts = message.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() || password.is_empty() {
        return None;
    }
    Some(AuthAttempt {
        mechanism: Mechanism::Plain,
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: authcid.to_owned(),
        secret: AuthSecret::Password(password.to_owned()),
    })
}

/// `user SP digest` (RFC 2195 section 2); the user name may contain spaces.
fn parse_cram(response: &[u8], challenge: String) -> Option<AuthAttempt> {
    let response = std::str::from_utf8(response).ok()?;
    let (user, digest) = response.rsplit_once(' ')?;
    if user.is_empty() || digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(AuthAttempt {
        mechanism: Mechanism::CramMd5,
        authzid: None,
        authcid: user.to_owned(),
        secret: AuthSecret::CramMd5 {
            challenge,
            digest_hex: digest.to_ascii_lowercase(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        BASE64.encode(s).into_bytes()
    }

    fn done(outcome: Outcome) -> AuthAttempt {
        match outcome {
            Outcome::Done(a) => a,
            other => panic!("not done: {other:?}"),
        }
    }

    fn failed(outcome: Outcome) -> String {
        match outcome {
            Outcome::Failed(r) => r.to_string(),
            other => panic!("not failed: {other:?}"),
        }
    }

    fn cont(outcome: Outcome) -> (Exchange, String) {
        match outcome {
            Outcome::Continue(e, r) => (e, r.to_string()),
            other => panic!("not a continuation: {other:?}"),
        }
    }

    fn password(p: &str) -> AuthSecret {
        AuthSecret::Password(p.into())
    }

    #[test]
    fn mechanism_names() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
            assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::from_name("CRAM-SHA1"), None);
        assert_eq!(Mechanism::CramMd5.to_string(), "CRAM-MD5");
        assert!(Mechanism::Plain.sends_password() && !Mechanism::CramMd5.sends_password());
    }

    #[test]
    fn plain() {
        let ir = b64(b"admin\0alice\0wonderland");
        let a = done(start(Mechanism::Plain, Some(&ir), String::new));
        assert_eq!(
            a,
            AuthAttempt {
                mechanism: Mechanism::Plain,
                authzid: Some("admin".into()),
                authcid: "alice".into(),
                secret: password("wonderland"),
            }
        );
        let (e, r) = cont(start(Mechanism::Plain, None, String::new));
        assert_eq!(r, "334 ");
        let a = done(respond(e, &b64(b"\0alice\0p w\xc3\xbc")));
        assert_eq!((a.authzid, a.secret), (None, password("p wü")));
        let bad: &[&[u8]] = &[
            b"",
            b"alice",
            b"\0alice",
            b"\0\0pw",
            b"\0alice\0",
            b"\0alice\0pw\0",
            b"\0alice\0\xff",
        ];
        for m in bad {
            let e = Exchange::Plain;
            assert_eq!(
                failed(respond(e, &b64(m))),
                "501 5.5.4 Malformed authentication response",
                "{m:?}"
            );
        }
        assert_eq!(
            failed(start(Mechanism::Plain, Some(b"="), String::new)),
            "501 5.5.4 Malformed authentication response"
        );
    }

    #[test]
    fn padding_optional_and_bad_base64() {
        // "\0a\0bc" is 5 octets: "AGEAYmM=" padded.
        let a = done(respond(Exchange::Plain, b"AGEAYmM"));
        assert_eq!(a.secret, password("bc"));
        let a = done(respond(Exchange::Plain, b"AGEAYmM="));
        assert_eq!(a.authcid, "a");
        for bad in [
            &b"AGEAYmM=="[..],
            b"AGEA YmM=",
            b"AGEAYmM=\r",
            b"!!!!",
            b"A",
        ] {
            assert_eq!(
                failed(respond(Exchange::Plain, bad)),
                "501 5.5.2 Invalid base64 data",
                "{bad:?}"
            );
        }
        assert_eq!(
            failed(respond(Exchange::LoginUser, b"*")),
            "501 5.7.0 Authentication cancelled"
        );
    }

    #[test]
    fn login() {
        let (e, r) = cont(start(Mechanism::Login, None, String::new));
        assert_eq!(r, "334 VXNlcm5hbWU6");
        let (e, r) = cont(respond(e, &b64(b"alice")));
        assert_eq!(r, "334 UGFzc3dvcmQ6");
        let a = done(respond(e, &b64(b"wonderland")));
        assert_eq!(
            a,
            AuthAttempt {
                mechanism: Mechanism::Login,
                authzid: None,
                authcid: "alice".into(),
                secret: password("wonderland"),
            }
        );
        // Initial response is the user name.
        let (e, r) = cont(start(Mechanism::Login, Some(&b64(b"bob")), String::new));
        assert_eq!(r, "334 UGFzc3dvcmQ6");
        assert_eq!(done(respond(e, b"")).secret, password(""));
        assert_eq!(
            failed(respond(Exchange::LoginUser, b"")),
            "501 5.5.4 Malformed authentication response"
        );
        let e = Exchange::LoginPassword {
            username: "x".into(),
        };
        assert_eq!(
            failed(respond(e, b"*")),
            "501 5.7.0 Authentication cancelled"
        );
    }

    #[test]
    fn cram_md5() {
        let (e, r) = cont(start(Mechanism::CramMd5, None, || "<1.2@mx>".into()));
        assert_eq!(r, format!("334 {}", BASE64.encode("<1.2@mx>")));
        let digest = "B913A602C7EDA7A495B4E6E7334D3890";
        let a = done(respond(e, &b64(format!("tim smith {digest}").as_bytes())));
        assert_eq!(
            a,
            AuthAttempt {
                mechanism: Mechanism::CramMd5,
                authzid: None,
                authcid: "tim smith".into(),
                secret: AuthSecret::CramMd5 {
                    challenge: "<1.2@mx>".into(),
                    digest_hex: digest.to_lowercase(),
                },
            }
        );
        for bad in [
            "tim",
            " b913a602c7eda7a495b4e6e7334d3890",
            "tim b913a602c7eda7a495b4e6e7334d389",
            "tim b913a602c7eda7a495b4e6e7334d389g",
        ] {
            let e = Exchange::CramMd5 {
                challenge: "<c>".into(),
            };
            assert_eq!(
                failed(respond(e, &b64(bad.as_bytes()))),
                "501 5.5.4 Malformed authentication response",
                "{bad}"
            );
        }
        assert_eq!(
            failed(start(Mechanism::CramMd5, Some(b"="), String::new)),
            "501 5.5.4 CRAM-MD5 does not take an initial response"
        );
        let c = cram_challenge("mx.test");
        assert!(c.starts_with('<') && c.ends_with("@mx.test>"), "{c}");
        assert_ne!(c, cram_challenge("mx.test"));
    }

    #[test]
    fn debug_hides_secrets() {
        let a = AuthAttempt {
            mechanism: Mechanism::Plain,
            authzid: None,
            authcid: "alice".into(),
            secret: password("wonderland"),
        };
        let s = format!("{a:?}");
        assert!(s.contains("alice") && !s.contains("wonderland"), "{s}");
        let c = AuthSecret::CramMd5 {
            challenge: "<c>".into(),
            digest_hex: "0123456789abcdef0123456789abcdef".into(),
        };
        let s = format!("{c:?}");
        assert!(s.contains("<c>") && !s.contains("0123"), "{s}");
    }
}
