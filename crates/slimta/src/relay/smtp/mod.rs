//! SMTP relays: delivery to another SMTP server.
//!
//! - [`StaticSmtpRelay`] sends everything to one configured host (a smarthost
//!   or the next hop of a gateway).
//! - `MxSmtpRelay` (feature `mx`) sends each recipient domain to its mail
//!   exchangers, found in the DNS.
//! - [`crate::relay::lmtp::StaticLmtpRelay`] is the static relay in the
//!   session driver's LMTP dialect.
//!
//! Both speak through `connection.rs`, the tokio driver of one SMTP client
//! session, which in turn uses the sans-IO client pieces in
//! [`crate::smtp::client`] (reply parsing, EHLO extensions, the smuggling-safe
//! DATA encoder). Keeping the session driver separate from the relays means
//! the MX relay, the static relay and the connection pool share one
//! implementation of the protocol rules and of the error texts.

mod connection;
#[cfg(feature = "mx")]
mod mx;
mod pool;
mod static_relay;
mod stream;

#[cfg(feature = "mx")]
pub use mx::MxSmtpRelay;
pub use static_relay::StaticSmtpRelay;
