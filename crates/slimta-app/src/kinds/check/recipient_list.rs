//! `type = "recipient_list"`: the local recipients of an edge that delivers
//! (Postfix's `local_recipient_maps`). A recipient whose address is not in
//! `addresses` is refused at RCPT with `550 5.1.1 User unknown`, so mail
//! for a mistyped or departed user is refused while the client is still
//! there, instead of being accepted and bounced later (backscatter).
//!
//! Decisions:
//! - Addresses match case-insensitively (as Postfix's lookups do): mail
//!   for `Alice@Example.com` reaches `alice@example.com`.
//! - A recipient of a domain that has no address in the list is refused
//!   too: list every domain's users, or put the check on the edge that
//!   receives for those domains only.
//! - `<postmaster>` (without a domain, RFC 5321 4.5.1) is always accepted.
//! - An authenticated client's recipients are not judged: submission
//!   relays to any address.

use std::collections::BTreeSet;
use std::sync::Arc;

use slimta::Reply;
use slimta::edge::{DynValidators, SessionInfo, Validators};
use slimta::smtp::RcptParams;

use super::{CheckContext, CheckKind, CheckSettings};
use crate::config::fields::{Errors, Section, email_address};

/// The accepted addresses, lower case.
#[derive(Debug, Clone)]
struct RecipientList {
    addresses: Arc<BTreeSet<String>>,
}

impl Validators for RecipientList {
    async fn rcpt(
        &self,
        reply: &mut Reply,
        session: &SessionInfo,
        recipient: &str,
        _: &RcptParams,
    ) {
        if session.authenticated() || recipient.eq_ignore_ascii_case("postmaster") {
            return;
        }
        if !self.addresses.contains(&recipient.to_lowercase()) {
            reply.set(550, "5.1.1", format!("<{recipient}>: User unknown"));
        }
    }
}

impl CheckSettings for RecipientList {
    fn validators(&self, _: &CheckContext<'_>) -> Result<Arc<dyn DynValidators>, String> {
        Ok(Arc::new(self.clone()))
    }
}

pub(super) const RECIPIENT_LIST: CheckKind = CheckKind {
    name: "recipient_list",
    read: Some(|s: &mut Section<'_>, errors: &mut Errors| {
        let addresses = s.required(errors, "addresses", |v| match v {
            toml::Value::Array(items) if items.is_empty() => {
                Err("must list at least one address".to_owned())
            }
            _ => Ok(()),
        });
        addresses?;
        let list = s.list(errors, "addresses", email_address)?;
        let addresses = list.iter().map(|a| a.to_lowercase()).collect();
        Some(Arc::new(RecipientList {
            addresses: Arc::new(addresses),
        }) as Arc<dyn CheckSettings>)
    }),
};
