//! [`Authenticate`]: the inbound verifier. SPF (RFC 7208), every DKIM
//! signature (RFC 6376), DMARC (RFC 7489) and the ARC chain (RFC 8617),
//! recorded in one `Authentication-Results:` field (RFC 8601, see
//! [`auth_results`](super::auth_results)), with DMARC `p=reject` enforced
//! at the end of DATA when asked to.
//!
//! It is a [`QueuePolicy`] rather than an edge check because DKIM and
//! DMARC need the message, and a queue policy sees mail from every edge
//! (SMTP and HTTP) alike; its refusal is the edge's answer to the message.
//! The evaluations are mail-auth's, on a hickory resolver that asks the
//! project's configured nameservers ([`crate::dns::Resolver`]), as in
//! [`EnforceSpf`](crate::edge::spf::EnforceSpf).
//!
//! Decisions:
//! - SPF is evaluated here again, from the envelope's client address, HELO
//!   and sender, not taken from an edge check: the policy must stand alone
//!   (HTTP-edge mail, an SMTP edge without the SPF check), and DMARC needs
//!   mail-auth's own SPF output. The identity is MAIL FROM, or the HELO
//!   name for the null sender. Mail without a client address (a unix
//!   socket, a local program) is `spf=none`.
//! - mail-auth reports a body that no longer matches its signature's body
//!   hash as `neutral`; here it is `fail` (RFC 6376 6.3: the signature does
//!   not verify). A DMARC evaluation with a record in which neither SPF nor
//!   DKIM aligned is `fail` (mail-auth leaves both mechanism results at
//!   "none").
//! - DNS errors and timeouts (one per method, default 10 s) are
//!   `temperror` in the header. A temperror never refuses mail: the message
//!   is taken as it would be without the check. A receiver that refused on
//!   every resolver hiccup would bounce legitimate mail from its own DNS
//!   trouble; DMARC itself (RFC 7489 6.6.2) leaves temperror to local
//!   policy, and most sites accept.
//! - `dmarc_reject` (default off): a DMARC `fail` of a domain publishing
//!   `p=reject` is refused `550 5.7.1` and nothing is queued. Without it,
//!   and for `p=quarantine`, the message is accepted with
//!   `dis=quarantine` in the header, for a later stage to file it. `p=none`
//!   and `t=y` downgrades (mail-auth applies them) are only recorded.
//! - `Authentication-Results:` fields that carry our authserv-id are
//!   removed before ours is added, for every message (RFC 8601 5): a
//!   sender must not be able to pre-write our verdict.
//! - Authenticated submission clients (`ClientInfo::auth`) are not
//!   verified by default: their mail is not signed yet and leaves through
//!   this host, where SPF and DMARC of their own domain would only measure
//!   our outbound path. Forged fields are still removed.
//!   [`Authenticate::verify_authenticated`] turns verification on for them.
//! - With [`Authenticate::arc_seal`], accepted mail is sealed (ARC-Seal,
//!   ARC-Message-Signature, ARC-Authentication-Results with mail-auth's
//!   own rendering of the same results) so a later hop can trust what was
//!   verified here after a forward rewrites the message. A broken incoming
//!   chain (`arc=fail`) is not sealed over (RFC 8617 5.1.2 would seal it
//!   with `cv=fail`, which ends the chain anyway).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    MessageAuthenticator, SpfOutput, SpfResult,
};

use super::QueuePolicy;
use super::arc_seal::ArcSeal;
use super::auth_results::{
    AuthResults, DkimEntry, DmarcEntry, HEADER, SpfEntry, SpfIdentity, Verdict, remove_ours,
};
use crate::dns::Resolver;
use crate::envelope::{ClientInfo, Envelope, domain_of};
use crate::reply::Reply;

/// The default deadline of each method's evaluation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The inbound verifier; see the module docs.
///
/// ```no_run
/// use slimta::policy::authenticate::Authenticate;
/// # fn f(resolver: slimta::dns::Resolver) {
/// let verify = Authenticate::new(&resolver, "mx.example.test").dmarc_reject(true);
/// # }
/// ```
#[derive(Clone)]
pub struct Authenticate {
    authenticator: MessageAuthenticator,
    authserv_id: String,
    dmarc_reject: bool,
    timeout: Duration,
    verify_authenticated: bool,
    seal: Option<ArcSeal>,
}

impl fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("authserv_id", &self.authserv_id)
            .field("dmarc_reject", &self.dmarc_reject)
            .field("timeout", &self.timeout)
            .field("verify_authenticated", &self.verify_authenticated)
            .field("seal", &self.seal)
            .finish_non_exhaustive()
    }
}

/// What one evaluation decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// What goes in the header.
    pub results: AuthResults,
    /// `Some(domain)`: DMARC failed for a domain publishing `p=reject`.
    pub reject_domain: Option<String>,
    /// The ARC set to prepend (already rendered header fields), if sealed.
    pub arc_set: Option<String>,
}

impl Authenticate {
    /// A verifier asking `resolver`'s nameservers, writing `authserv_id`
    /// (normally this host's name) in its header; DMARC is only recorded.
    pub fn new(resolver: &Resolver, authserv_id: impl Into<String>) -> Self {
        Self {
            authenticator: MessageAuthenticator(resolver.hickory().clone()),
            authserv_id: authserv_id.into(),
            dmarc_reject: false,
            timeout: DEFAULT_TIMEOUT,
            verify_authenticated: false,
            seal: None,
        }
    }

    /// Refuses DMARC failures of `p=reject` domains with 550 5.7.1.
    #[must_use]
    pub fn dmarc_reject(mut self, on: bool) -> Self {
        self.dmarc_reject = on;
        self
    }

    /// The deadline of each method; past it the method is `temperror`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Verifies mail of authenticated clients too (default: skipped).
    #[must_use]
    pub fn verify_authenticated(mut self, on: bool) -> Self {
        self.verify_authenticated = on;
        self
    }

    /// Seals accepted mail with this ARC key.
    #[must_use]
    pub fn arc_seal(mut self, seal: ArcSeal) -> Self {
        self.seal = Some(seal);
        self
    }

    /// Evaluates every method for `message`, sent by `client` with MAIL
    /// FROM `sender` (empty for `<>`).
    pub async fn evaluate(&self, message: &[u8], client: &ClientInfo, sender: &str) -> Evaluation {
        let helo = client
            .helo
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('.');
        let ip = client.ip.map(|ip| ip.to_canonical());
        let (identity, spf_value) = if sender.is_empty() {
            (SpfIdentity::Helo, helo.to_owned())
        } else {
            (SpfIdentity::MailFrom, sender.to_owned())
        };
        let mail_from_domain = match identity {
            SpfIdentity::Helo => helo.to_ascii_lowercase(),
            SpfIdentity::MailFrom => domain_of(sender).unwrap_or(helo).to_ascii_lowercase(),
        };
        let (spf_output, spf_comment) = self.spf(ip, helo, sender, &mail_from_domain).await;
        let spf = SpfEntry {
            result: spf_verdict(spf_output.result()),
            identity,
            value: spf_value,
            comment: spf_comment,
        };

        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            // Not a message mail-auth can read (no header section): only SPF.
            return Evaluation {
                results: AuthResults {
                    authserv_id: self.authserv_id.clone(),
                    spf: Some(spf),
                    dkim: vec![],
                    dmarc: None,
                    arc: None,
                },
                reject_domain: None,
                arc_set: None,
            };
        };

        let dkim_output = if parsed.dkim_headers.is_empty() {
            Vec::new()
        } else {
            tokio::time::timeout(self.timeout, self.authenticator.verify_dkim(&parsed))
                .await
                .unwrap_or_default()
        };
        let mut dkim: Vec<DkimEntry> = dkim_output.iter().map(dkim_entry).collect();
        if dkim.is_empty() && !parsed.dkim_headers.is_empty() {
            dkim.push(DkimEntry {
                result: Verdict::TempError,
                reason: Some("DKIM verification timed out".into()),
                domain: None,
                selector: None,
                b: None,
            });
        }

        let arc_output = tokio::time::timeout(self.timeout, self.authenticator.verify_arc(&parsed))
            .await
            .ok();
        let arc = Some(
            arc_output
                .as_ref()
                .map_or(Verdict::TempError, |o| dkim_verdict(o.result())),
        );

        let dmarc_params = DmarcParameters {
            message: &parsed,
            dkim_output: &dkim_output,
            dkim2_output: None,
            rfc5321_mail_from_domain: &mail_from_domain,
            spf_output: &spf_output,
        };
        let dmarc_output =
            tokio::time::timeout(self.timeout, self.authenticator.verify_dmarc(dmarc_params))
                .await
                .ok();
        let (dmarc, reject_domain) = self.dmarc_entry(dmarc_output.as_ref(), &parsed);

        let results = AuthResults {
            authserv_id: self.authserv_id.clone(),
            spf: Some(spf),
            dkim,
            dmarc,
            arc,
        };
        let arc_set = match (&self.seal, &arc_output, &dmarc_output, &reject_domain) {
            (Some(seal), Some(arc_output), Some(dmarc_output), None) => seal.seal(
                &self.authserv_id,
                &parsed,
                &SealInputs {
                    dkim: &dkim_output,
                    spf: &spf_output,
                    dmarc: dmarc_output,
                    arc: arc_output,
                    ip,
                    helo,
                    sender: &spf_value_for_seal(sender, helo),
                },
            ),
            _ => None,
        };
        Evaluation {
            results,
            reject_domain,
            arc_set,
        }
    }

    async fn spf(
        &self,
        ip: Option<IpAddr>,
        helo: &str,
        sender: &str,
        domain: &str,
    ) -> (SpfOutput, Option<String>) {
        let Some(ip) = ip else {
            return (
                SpfOutput::new(domain.to_owned()).with_result(SpfResult::None),
                Some("no client address".into()),
            );
        };
        if sender.is_empty() && (helo.is_empty() || helo.parse::<IpAddr>().is_ok()) {
            return (
                SpfOutput::new(domain.to_owned()).with_result(SpfResult::None),
                Some("no HELO domain to check".into()),
            );
        }
        let params = if sender.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, &self.authserv_id)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.authserv_id, sender)
        };
        match tokio::time::timeout(self.timeout, self.authenticator.verify_spf(params)).await {
            Ok(output) => (output, None),
            Err(_) => (
                SpfOutput::new(domain.to_owned()).with_result(SpfResult::TempError),
                Some("SPF evaluation timed out".into()),
            ),
        }
    }

    fn dmarc_entry(
        &self,
        output: Option<&DmarcOutput>,
        message: &AuthenticatedMessage<'_>,
    ) -> (Option<DmarcEntry>, Option<String>) {
        let Some(output) = output else {
            let from = message
                .from
                .first()
                .and_then(|f| domain_of(f))
                .map(str::to_ascii_lowercase);
            return (
                Some(DmarcEntry {
                    result: Verdict::TempError,
                    policy: None,
                    disposition: None,
                    header_from: from,
                }),
                None,
            );
        };
        let result = dmarc_verdict(output);
        let has_record = output.dmarc_record().is_some();
        let policy = has_record.then(|| policy_name(output.policy()));
        let reject = result == Verdict::Fail && output.policy() == Policy::Reject;
        let disposition = has_record.then(|| match (result, output.policy()) {
            (Verdict::Fail, Policy::Reject) if self.dmarc_reject => "reject",
            (Verdict::Fail, Policy::Reject | Policy::Quarantine) => "quarantine",
            _ => "none",
        });
        let header_from = (!output.domain().is_empty()).then(|| output.domain().to_owned());
        let reject_domain = (reject && self.dmarc_reject).then(|| output.domain().to_owned());
        (
            Some(DmarcEntry {
                result,
                policy,
                disposition,
                header_from,
            }),
            reject_domain,
        )
    }
}

/// What the sealer needs besides the message.
pub(super) struct SealInputs<'a> {
    pub(super) dkim: &'a [DkimOutput<'a>],
    pub(super) spf: &'a SpfOutput,
    pub(super) dmarc: &'a DmarcOutput,
    pub(super) arc: &'a ArcOutput<'a>,
    pub(super) ip: Option<IpAddr>,
    pub(super) helo: &'a str,
    pub(super) sender: &'a str,
}

fn spf_value_for_seal(sender: &str, helo: &str) -> String {
    if sender.is_empty() {
        format!("postmaster@{helo}")
    } else {
        sender.to_owned()
    }
}

impl QueuePolicy for Authenticate {
    async fn apply(&self, mut envelope: Envelope) -> Result<Vec<Envelope>, Reply> {
        envelope.message = remove_ours(&envelope.message, &self.authserv_id);
        if envelope.client.auth.is_some() && !self.verify_authenticated {
            return Ok(vec![envelope]);
        }
        let evaluation = self
            .evaluate(&envelope.message, &envelope.client, &envelope.sender)
            .await;
        if let Some(domain) = evaluation.reject_domain {
            tracing::info!(sender = %envelope.sender, domain = %domain, "refused by DMARC policy");
            return Err(Reply::new(
                550,
                "5.7.1",
                format!("Message refused: DMARC policy of {domain} (p=reject) failed"),
            ));
        }
        envelope.prepend_header(HEADER, &evaluation.results.header_value());
        if let Some(set) = evaluation.arc_set {
            let mut out = Vec::with_capacity(set.len() + envelope.message.len());
            out.extend_from_slice(set.as_bytes());
            out.extend_from_slice(&envelope.message);
            envelope.message = out;
        }
        Ok(vec![envelope])
    }
}

fn spf_verdict(r: SpfResult) -> Verdict {
    match r {
        SpfResult::Pass => Verdict::Pass,
        SpfResult::Fail => Verdict::Fail,
        SpfResult::SoftFail => Verdict::SoftFail,
        SpfResult::Neutral => Verdict::Neutral,
        SpfResult::None => Verdict::None,
        SpfResult::TempError => Verdict::TempError,
        SpfResult::PermError => Verdict::PermError,
    }
}

fn dkim_verdict(r: &DkimResult) -> Verdict {
    match r {
        DkimResult::Pass => Verdict::Pass,
        DkimResult::Fail(_) => Verdict::Fail,
        DkimResult::Neutral(mail_auth::Error::Dkim(
            mail_auth::dkim::DkimError::FailedBodyHashMatch,
        )) => Verdict::Fail,
        DkimResult::Neutral(_) => Verdict::Neutral,
        DkimResult::PermError(_) => Verdict::PermError,
        DkimResult::TempError(_) => Verdict::TempError,
        DkimResult::None => Verdict::None,
    }
}

fn dkim_entry(output: &DkimOutput<'_>) -> DkimEntry {
    let result = dkim_verdict(output.result());
    let reason = match output.result() {
        DkimResult::Fail(e)
        | DkimResult::Neutral(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => Some(e.to_string()),
        DkimResult::Pass | DkimResult::None => None,
    };
    let signature = output.signature();
    DkimEntry {
        result,
        reason,
        domain: signature.map(|s| s.d.to_ascii_lowercase()),
        selector: signature.map(|s| s.s.clone()),
        b: signature.map(|s| {
            let b = base64::engine::general_purpose::STANDARD.encode(&s.b);
            b.chars().take(8).collect()
        }),
    }
}

/// DMARC's result: pass when either mechanism passed aligned; temperror
/// when one could not be checked; fail when a record exists and nothing
/// passed aligned.
fn dmarc_verdict(output: &DmarcOutput) -> Verdict {
    let results = [output.spf_result(), output.dkim_result()];
    if results.iter().any(|r| matches!(r, DmarcResult::Pass)) {
        Verdict::Pass
    } else if results
        .iter()
        .any(|r| matches!(r, DmarcResult::TempError(_)))
    {
        Verdict::TempError
    } else if output.dmarc_record().is_some() {
        Verdict::Fail
    } else if results
        .iter()
        .any(|r| matches!(r, DmarcResult::PermError(_)))
    {
        Verdict::PermError
    } else {
        Verdict::None
    }
}

fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mail_auth::common::parse::TxtRecordParser as _;
    use mail_auth::dkim::DkimError;
    use mail_auth::dmarc::Dmarc;
    use mail_auth::{DnsError, Error};

    use super::*;

    #[test]
    fn dkim_results_map_to_header_verdicts() {
        let cases = [
            (DkimResult::Pass, Verdict::Pass),
            (
                DkimResult::Fail(Error::Dkim(DkimError::SignatureExpired)),
                Verdict::Fail,
            ),
            // mail-auth's "neutral" for a changed body is a failed signature.
            (
                DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)),
                Verdict::Fail,
            ),
            (
                DkimResult::Neutral(Error::Dkim(DkimError::UnsupportedVersion)),
                Verdict::Neutral,
            ),
            (
                DkimResult::TempError(Error::Dns(DnsError::Resolver("x".into()))),
                Verdict::TempError,
            ),
            (
                DkimResult::PermError(Error::Dkim(DkimError::RevokedPublicKey)),
                Verdict::PermError,
            ),
            (DkimResult::None, Verdict::None),
        ];
        for (result, want) in cases {
            assert_eq!(dkim_verdict(&result), want, "{result:?}");
        }
    }

    #[test]
    fn dmarc_outputs_map_to_header_verdicts() {
        let record = Arc::new(Dmarc::parse(b"v=DMARC1; p=reject").unwrap());
        let temp = || DmarcResult::TempError(Error::Dns(DnsError::Resolver("x".into())));
        let out = |spf: DmarcResult, dkim: DmarcResult, with_record: bool| {
            let o = DmarcOutput::new("example.test".into())
                .with_spf_result(spf)
                .with_dkim_result(dkim);
            if with_record {
                o.with_record(Arc::clone(&record))
            } else {
                o
            }
        };
        let cases = [
            (
                out(DmarcResult::Pass, DmarcResult::None, true),
                Verdict::Pass,
            ),
            (
                out(
                    DmarcResult::Fail(Error::NotAligned),
                    DmarcResult::Pass,
                    true,
                ),
                Verdict::Pass,
            ),
            // Neither aligned: mail-auth leaves both at None; with a record it is a fail.
            (
                out(DmarcResult::None, DmarcResult::None, true),
                Verdict::Fail,
            ),
            (
                out(
                    DmarcResult::Fail(Error::NotAligned),
                    DmarcResult::None,
                    true,
                ),
                Verdict::Fail,
            ),
            (out(temp(), DmarcResult::None, true), Verdict::TempError),
            (out(DmarcResult::None, temp(), false), Verdict::TempError),
            (
                out(
                    DmarcResult::PermError(Error::ParseError),
                    DmarcResult::None,
                    false,
                ),
                Verdict::PermError,
            ),
            (
                out(DmarcResult::None, DmarcResult::None, false),
                Verdict::None,
            ),
        ];
        for (output, want) in cases {
            assert_eq!(dmarc_verdict(&output), want, "{output:?}");
        }
    }
}
