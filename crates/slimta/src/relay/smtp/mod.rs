//! SMTP relays (filled in by the relay work).
