//! Edges: where mail enters.
//!
//! An edge owns listeners and sessions and turns each finished transaction
//! into an [`Envelope`](crate::Envelope) for a [`Handoff`](crate::Handoff).
//! Its answer to the client says only whether the queue took responsibility,
//! never whether delivery succeeded.

pub mod accept_domains;
pub mod address_rules;
pub mod chain;
pub mod credentials;
#[cfg(feature = "mx")]
pub mod dnsbl;
#[cfg(feature = "http")]
pub mod http;
pub mod ip_range;
pub mod listener;
pub mod proxy;
#[cfg(feature = "mx")]
pub mod reverse_dns;
#[cfg(feature = "mx")]
pub(crate) mod session_cache;
pub mod smtp;
#[cfg(feature = "auth")]
pub mod spf;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
pub mod validators;

pub use accept_domains::AcceptDomains;
pub use chain::{DynValidators, ValidatorChain};
pub use smtp::SmtpEdge;
pub use validators::{AcceptAll, SessionInfo, Validators};
