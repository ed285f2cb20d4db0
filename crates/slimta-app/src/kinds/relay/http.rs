//! `type = "http"`: POSTs each message to `url` (required, http or https;
//! our HTTP edge speaks the same headers), with `timeout` (default 60 s)
//! and `ehlo_as` (the EHLO header; default `process.hostname`).

use std::sync::Arc;
use std::time::Duration;

use slimta::DynRelay;
use slimta::relay::http::HttpRelay;

use super::{BuildContext, RelayKind, RelaySettings};
use crate::config::fields::{Errors, Section, domain, positive_duration, string};

/// `[relay.NAME]` keys of an HTTP relay.
#[derive(Debug, PartialEq, Eq)]
struct Http {
    url: String,
    timeout: Duration,
    ehlo_as: Option<String>,
}

impl RelaySettings for Http {
    fn build(&self, context: &BuildContext<'_>) -> Result<Arc<dyn DynRelay>, String> {
        let relay = HttpRelay::new(&self.url)
            .map_err(|e| format!("{}.url: {e}", context.section))?
            .timeout(self.timeout)
            .ehlo_as(
                self.ehlo_as
                    .clone()
                    .unwrap_or_else(|| context.hostname.to_string()),
            );
        Ok(Arc::new(relay))
    }
}

pub(super) const HTTP: RelayKind = RelayKind {
    name: "http",
    dns: false,
    pooled: false,
    read: |s: &mut Section<'_>, errors: &mut Errors| {
        let url = s.required(errors, "url", |v| {
            let u = string(v)?;
            if u.starts_with("http://") || u.starts_with("https://") {
                Ok(u)
            } else {
                Err(format!(
                    "invalid URL \"{u}\" (expected http:// or https://)"
                ))
            }
        });
        let timeout = s.or(
            errors,
            "timeout",
            Duration::from_secs(60),
            positive_duration,
        );
        let ehlo_as = s.opt(errors, "ehlo_as", domain);
        url.map(|url| {
            Arc::new(Http {
                url,
                timeout,
                ehlo_as,
            }) as Arc<dyn RelaySettings>
        })
    },
};
