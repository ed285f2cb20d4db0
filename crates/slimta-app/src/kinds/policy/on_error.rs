//! The `on_error` key the scanner and milter policies share: what to do
//! with a message when the scanner or filter cannot be asked.

use slimta::policy::spam_headers::OnError;
use toml::Value;

use crate::config::fields::choice;

/// `"accept"` (store it: the scanners mark it `X-Spam-Status: Unknown,
/// ...`, a milter leaves it unchanged) or `"tempfail"` (451 4.7.1).
pub(super) fn on_error(value: &Value) -> Result<OnError, String> {
    Ok(match choice(&["accept", "tempfail"])(value)? {
        "tempfail" => OnError::Tempfail,
        _ => OnError::Accept,
    })
}
