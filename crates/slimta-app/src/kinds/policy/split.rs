//! `type = "recipient_split"` and `"recipient_domain_split"`: one stored
//! envelope per recipient or per recipient domain (see
//! `slimta::policy::split`). Queue policies only: a split per attempt
//! would mean nothing, the attempt's results map back to one stored
//! message. No keys; usable by their bare names.

use std::sync::Arc;

use slimta::policy::DynQueuePolicy;
use slimta::policy::split::{RecipientDomainSplit, RecipientSplit};

use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{Errors, Section};

#[derive(Debug)]
struct PerRecipient;

#[derive(Debug)]
struct PerDomain;

impl PolicySettings for PerRecipient {
    fn queue_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(RecipientSplit))
    }
}

impl PolicySettings for PerDomain {
    fn queue_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(RecipientDomainSplit))
    }
}

pub(super) const RECIPIENT_SPLIT: PolicyKind = PolicyKind {
    name: "recipient_split",
    stages: &[Stage::Queue],
    bare: true,
    read: Some(|_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(PerRecipient))),
};

pub(super) const RECIPIENT_DOMAIN_SPLIT: PolicyKind = PolicyKind {
    name: "recipient_domain_split",
    stages: &[Stage::Queue],
    bare: true,
    read: Some(|_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(PerDomain))),
};
