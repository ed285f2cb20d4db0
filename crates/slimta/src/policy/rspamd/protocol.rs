//! rspamd's `/checkv2` answer, sans-IO: the JSON body read into the parts
//! the policy acts on (action, scores, symbols, the SMTP message and the
//! milter header changes).
//!
//! The HTTP framing is reqwest's; what is here is only the JSON, so the
//! tests can feed it answers without a daemon. The body is capped by the
//! driver ([`MAX_RESPONSE`]) before it gets here. Text from rspamd that
//! ends up in headers or replies is cut to one line later
//! (`spam_headers::one_line`).

use serde_json::Value;

/// The longest `/checkv2` answer read (its symbols carry descriptions,
/// a few KiB for a normal message).
pub const MAX_RESPONSE: usize = 1024 * 1024;

/// rspamd's action: what it wants done with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `no action`: clean.
    NoAction,
    /// `greylist`: try again later.
    Greylist,
    /// `add header`: spam, mark it.
    AddHeader,
    /// `rewrite subject`: spam, mark it.
    RewriteSubject,
    /// `soft reject`: refuse for now.
    SoftReject,
    /// `reject`: refuse.
    Reject,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "no action" => Self::NoAction,
            "greylist" => Self::Greylist,
            "add header" => Self::AddHeader,
            "rewrite subject" => Self::RewriteSubject,
            "soft reject" => Self::SoftReject,
            "reject" => Self::Reject,
            _ => return None,
        })
    }
}

/// A header field rspamd asks to remove: `index` 0 means every field of
/// that name, `n > 0` the n-th from the top, `n < 0` the n-th from the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveHeader {
    /// The field name.
    pub name: String,
    /// Which occurrence.
    pub index: i64,
}

/// rspamd's verdict on one message.
#[derive(Clone, Debug, PartialEq)]
pub struct RspamdResponse {
    /// What rspamd wants done.
    pub action: Action,
    /// The message's score.
    pub score: f64,
    /// The score of rspamd's reject action.
    pub required: f64,
    /// The symbols that matched, sorted by name.
    pub symbols: Vec<String>,
    /// `messages.smtp_message`, the text for a refusal.
    pub smtp_message: Option<String>,
    /// `milter.add_headers`, in rspamd's order.
    pub add_headers: Vec<(String, String)>,
    /// `milter.remove_headers`.
    pub remove_headers: Vec<RemoveHeader>,
}

/// Reads a `/checkv2` answer body.
///
/// # Errors
///
/// A description when the body is not JSON or lacks `action` or `score`,
/// or names an action this client does not know.
pub fn parse_response(body: &[u8]) -> Result<RspamdResponse, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let action = json
        .get("action")
        .and_then(Value::as_str)
        .ok_or("answer has no action")?;
    let action = Action::parse(action).ok_or_else(|| format!("unknown action {action:?}"))?;
    let score = json
        .get("score")
        .and_then(Value::as_f64)
        .ok_or("answer has no score")?;
    let required = json
        .get("required_score")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    let mut symbols: Vec<String> = json
        .get("symbols")
        .and_then(Value::as_object)
        .map(|s| s.keys().cloned().collect())
        .unwrap_or_default();
    symbols.sort();
    let smtp_message = json
        .pointer("/messages/smtp_message")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let milter = json.get("milter");
    let add_headers = milter
        .and_then(|m| m.get("add_headers"))
        .and_then(Value::as_object)
        .map(|fields| {
            let mut out = Vec::new();
            for (name, value) in fields {
                for v in header_values(value) {
                    out.push((name.clone(), v));
                }
            }
            out
        })
        .unwrap_or_default();
    let remove_headers = milter
        .and_then(|m| m.get("remove_headers"))
        .and_then(Value::as_object)
        .map(|fields| {
            fields
                .iter()
                .map(|(name, index)| RemoveHeader {
                    name: name.clone(),
                    index: index.as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(RspamdResponse {
        action,
        score,
        required,
        symbols,
        smtp_message,
        add_headers,
        remove_headers,
    })
}

/// An `add_headers` entry: `"value"`, `{"value": .., "order": ..}`, or an
/// array of either (several fields of one name).
fn header_values(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Object(o) => o
            .get("value")
            .and_then(Value::as_str)
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
        Value::Array(items) => items.iter().flat_map(header_values).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_seen_from_rspamd_3_4() {
        let gtube = br#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef","time_real":0.049271}"#;
        assert_eq!(
            parse_response(gtube),
            Ok(RspamdResponse {
                action: Action::Reject,
                score: 15.0,
                required: 15.0,
                symbols: vec!["GTUBE".into()],
                smtp_message: Some("Gtube pattern".into()),
                add_headers: vec![],
                remove_headers: vec![],
            })
        );
        let clean = br#"{"is_skipped":false,"score":3.400000,"required_score":15.0,"action":"no action","symbols":{"MISSING_MID":{"score":2.5},"ARC_NA":{"score":0.0}},"messages":{},"milter":{"remove_headers":{"X-Spam":0}}}"#;
        assert_eq!(
            parse_response(clean),
            Ok(RspamdResponse {
                action: Action::NoAction,
                score: 3.4,
                required: 15.0,
                symbols: vec!["ARC_NA".into(), "MISSING_MID".into()],
                smtp_message: None,
                add_headers: vec![],
                remove_headers: vec![RemoveHeader {
                    name: "X-Spam".into(),
                    index: 0
                }],
            })
        );
    }

    #[test]
    fn actions_and_milter_headers() {
        let cases: &[(&str, Action)] = &[
            ("no action", Action::NoAction),
            ("greylist", Action::Greylist),
            ("add header", Action::AddHeader),
            ("rewrite subject", Action::RewriteSubject),
            ("soft reject", Action::SoftReject),
            ("reject", Action::Reject),
        ];
        for (name, action) in cases {
            let body = format!(r#"{{"action":"{name}","score":1}}"#);
            assert_eq!(parse_response(body.as_bytes()).unwrap().action, *action);
        }
        let body = br#"{"action":"add header","score":7.5,"milter":{"add_headers":{"X-Spam":"Yes","X-Spamd-Bar":{"value":"+++","order":0},"X-Two":[{"value":"a"},"b"],"X-Bad":7}}}"#;
        let r = parse_response(body).unwrap();
        assert!(r.required.is_nan());
        let pairs: Vec<(&str, &str)> = r
            .add_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("X-Spam", "Yes"),
                ("X-Spamd-Bar", "+++"),
                ("X-Two", "a"),
                ("X-Two", "b")
            ]
        );
    }

    #[test]
    fn bad_answers() {
        let cases: &[(&[u8], &str)] = &[
            (b"<html>", "not JSON"),
            (br#"{"score":1}"#, "answer has no action"),
            (br#"{"action":"reject"}"#, "answer has no score"),
            (
                br#"{"action":"discard","score":1}"#,
                "unknown action \"discard\"",
            ),
        ];
        for (body, why) in cases {
            let err = parse_response(body).unwrap_err();
            assert!(err.starts_with(why), "{err}");
        }
    }
}
