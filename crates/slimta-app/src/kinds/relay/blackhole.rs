//! `type = "blackhole"`: accepts and discards every message (benchmarks,
//! tests). No keys.

use std::sync::Arc;

use slimta::DynRelay;
use slimta::relay::BlackholeRelay;

use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section};

#[derive(Debug)]
struct Blackhole;

impl RelaySettings for Blackhole {
    fn build(&self, _: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        Ok(Arc::new(BlackholeRelay::new()))
    }
}

pub(super) const BLACKHOLE: RelayKind = RelayKind {
    name: "blackhole",
    dns: false,
    pooled: false,
    read: |_: &mut Section<'_>, _: &mut Errors| Some(Arc::new(Blackhole)),
};
