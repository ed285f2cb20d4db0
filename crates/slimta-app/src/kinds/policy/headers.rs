//! `type = "add_date_header"`, `"add_message_id_header"`,
//! `"add_received_header"`: the header policies, queue policies without
//! keys (usable by their bare names). Message-Id and Received carry
//! `process.hostname`.

use std::sync::Arc;

use slimta::policy::DynQueuePolicy;
use slimta::policy::headers::{AddDateHeader, AddMessageIdHeader, AddReceivedHeader};

use super::{BuildContext, PolicyKind, PolicySettings, Stage};
use crate::config::fields::{Errors, Section};

#[derive(Debug)]
struct DateHeader;

#[derive(Debug)]
struct MessageIdHeader;

#[derive(Debug)]
struct ReceivedHeader;

impl PolicySettings for DateHeader {
    fn queue_policy(&self, _: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(AddDateHeader))
    }
}

impl PolicySettings for MessageIdHeader {
    fn queue_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(AddMessageIdHeader::new(context.hostname)))
    }
}

impl PolicySettings for ReceivedHeader {
    fn queue_policy(&self, context: &BuildContext<'_>) -> Option<Arc<dyn DynQueuePolicy>> {
        Some(Arc::new(AddReceivedHeader::new(context.hostname)))
    }
}

pub(super) const ADD_DATE_HEADER: PolicyKind = PolicyKind {
    name: "add_date_header",
    stages: &[Stage::Queue],
    bare: true,
    read: Some(|_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(DateHeader))),
};

pub(super) const ADD_MESSAGE_ID_HEADER: PolicyKind = PolicyKind {
    name: "add_message_id_header",
    stages: &[Stage::Queue],
    bare: true,
    read: Some(|_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(MessageIdHeader))),
};

pub(super) const ADD_RECEIVED_HEADER: PolicyKind = PolicyKind {
    name: "add_received_header",
    stages: &[Stage::Queue],
    bare: true,
    read: Some(|_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(ReceivedHeader))),
};
