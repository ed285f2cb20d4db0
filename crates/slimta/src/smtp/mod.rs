//! The SMTP protocol, without I/O.
//!
//! Everything here turns bytes into commands, events and replies and back;
//! nothing here owns a socket, a queue or a timer. The tokio drivers in
//! `edge/` (server side) and `relay/smtp/` (client side) do the reading and
//! writing. That keeps the protocol testable byte for byte and lets the SMTP
//! edge, the LMTP edge and the tests share one implementation. STARTTLS,
//! AUTH and LMTP are states of the same machine ([`server`], [`sasl`]): the
//! handshake and the credential check are the driver's, because they need
//! keys and a user database.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod sasl;
pub mod server;

pub use command::{MailParams, RcptParams};
pub use sasl::{AuthAttempt, AuthSecret, Mechanism};
pub use server::{Event, EventKind, Server, ServerConfig, Step, Transaction};
