//! Per-destination delivery limits: how many attempts may be in flight to
//! one destination, how that grows and shrinks with what the destination
//! does, and when a destination is dead.
//!
//! This is the policy half of the destination-aware [`LocalDispatch`]
//! (`queue/schedule.rs` keeps the lines of messages); it is pure logic on
//! explicit instants, so every rule is unit-tested here.
//!
//! The rules, after Postfix's queue manager:
//! - **Limit.** At most [`DestinationSettings::concurrency`] attempts in
//!   flight per destination (default 20, as Postfix's
//!   `default_destination_concurrency_limit`), overridable per destination
//!   key ([`DestinationSettings::overrides`], a recipient domain for the MX
//!   relay).
//! - **Slow start.** A destination starts at
//!   [`DestinationSettings::initial_concurrency`] (default 5, Postfix's
//!   `initial_destination_concurrency`). Each attempt that reached the
//!   server adds `1/window` to the window (about one more slot per window
//!   of successes), each that could not reach it takes `1/window` away
//!   (never below 1): Postfix's default concurrency feedback. A server that
//!   answers but refuses is "reached": the feedback is about connections,
//!   not about the mail.
//! - **Dead.** After [`DestinationSettings::dead_after`] consecutive
//!   attempts that could not reach the destination (refused, timed out,
//!   421 at the banner), it is dead for [`DestinationSettings::dead_for`]:
//!   its due messages are deferred at once with the last error, without a
//!   connection. When the period ends, one probe attempt goes out alone
//!   (the others wait for its result). A probe that reaches the server
//!   revives the destination (back to the initial window); a failed probe
//!   makes it dead again for twice as long, up to
//!   [`DestinationSettings::dead_for_max`].
//!
//! [`LocalDispatch`]: super::LocalDispatch

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::relay::{Destination, RelayError};
use crate::reply::{EnhancedCode, Reply};

/// The limits every destination of a queue's relay gets (see the module
/// docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationSettings {
    /// Attempts in flight per destination, at most (at least 1).
    pub concurrency: usize,
    /// Where slow start begins (at least 1, at most `concurrency`).
    pub initial_concurrency: usize,
    /// A different `concurrency` for some destination keys (for the MX
    /// relay, lower-case recipient domains).
    pub overrides: HashMap<String, usize>,
    /// Consecutive unreachable attempts that make a destination dead; `0`
    /// never marks one dead.
    pub dead_after: u32,
    /// How long a destination first stays dead.
    pub dead_for: Duration,
    /// The longest a destination stays dead after failed probes.
    pub dead_for_max: Duration,
}

impl Default for DestinationSettings {
    /// 20 per destination, starting at 5; dead after 5 consecutive
    /// unreachable attempts, for 1 minute, doubling up to 30 minutes.
    fn default() -> Self {
        Self {
            concurrency: 20,
            initial_concurrency: 5,
            overrides: HashMap::new(),
            dead_after: 5,
            dead_for: Duration::from_secs(60),
            dead_for_max: Duration::from_secs(30 * 60),
        }
    }
}

impl DestinationSettings {
    /// The concurrency limit of `destination`.
    pub fn limit_for(&self, destination: &Destination) -> usize {
        self.overrides
            .get(destination.as_str())
            .copied()
            .unwrap_or(self.concurrency)
            .max(1)
    }
}

/// What the dispatcher may do with a destination's next due message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Attempt it now.
    Attempt,
    /// The destination is dead: defer the message with this error, no
    /// connection.
    Defer(RelayError),
    /// Every slot is taken (or a probe is out): wait.
    Full,
}

/// One destination's standing: its slow-start window and dead marking.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    window: f64,
    limit: usize,
    failures: u32,
    dead_until: Option<Instant>,
    /// The period the next death lasts.
    dead_for: Duration,
    last_error: Option<RelayError>,
}

/// How a dead destination looks to an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadDestination {
    /// The destination key.
    pub destination: String,
    /// Consecutive attempts that could not reach it.
    pub failures: u32,
    /// How long until the next probe (zero: a probe is due or out).
    pub probe_in: Duration,
    /// The last error, as its deferred messages record it.
    pub last_error: String,
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "windows are small positive numbers"
)]
impl Health {
    pub(crate) fn new(settings: &DestinationSettings, destination: &Destination) -> Self {
        let limit = settings.limit_for(destination);
        Self {
            window: settings.initial_concurrency.clamp(1, limit) as f64,
            limit,
            failures: 0,
            dead_until: None,
            dead_for: settings.dead_for,
            last_error: None,
        }
    }

    /// The slots the window grants now.
    pub(crate) fn slots(&self) -> usize {
        (self.window.floor() as usize).clamp(1, self.limit)
    }

    /// Whether the destination is dead at `now` (a probe not yet sent).
    #[cfg(test)]
    pub(crate) fn is_dead(&self, now: Instant) -> bool {
        self.dead_until.is_some_and(|until| now < until)
    }

    /// May another attempt go to this destination, with `in_flight`
    /// attempts to it running?
    pub(crate) fn verdict(&self, now: Instant, in_flight: usize) -> Verdict {
        match self.dead_until {
            Some(until) if now < until => Verdict::Defer(self.suspended()),
            // The period is over: one probe, alone.
            Some(_) if in_flight == 0 => Verdict::Attempt,
            Some(_) => Verdict::Full,
            None if in_flight < self.slots() => Verdict::Attempt,
            None => Verdict::Full,
        }
    }

    /// The error deferred messages record while the destination is dead.
    fn suspended(&self) -> RelayError {
        let (code, enhanced, text) = match &self.last_error {
            Some(e) => (e.reply().code(), e.reply().enhanced(), e.reply().text()),
            None => (451, None, "unreachable"),
        };
        let text = format!(
            "Delivery suspended after {} failed connection attempts: {text}",
            self.failures
        );
        let enhanced = enhanced.unwrap_or(EnhancedCode::new(4, 4, 1));
        RelayError::unreachable(Reply::from_parts(code, Some(enhanced), text))
    }

    /// An attempt to this destination reached its server.
    pub(crate) fn reached(&mut self, settings: &DestinationSettings) {
        self.failures = 0;
        self.last_error = None;
        if self.dead_until.take().is_some() {
            self.window = settings.initial_concurrency.clamp(1, self.limit) as f64;
            self.dead_for = settings.dead_for;
            return;
        }
        self.window = (self.window + 1.0 / self.window).min(self.limit as f64);
    }

    /// An attempt to this destination could not reach it; returns whether
    /// that made the destination dead (or dead again).
    pub(crate) fn unreachable(
        &mut self,
        now: Instant,
        error: RelayError,
        settings: &DestinationSettings,
    ) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        self.window = (self.window - 1.0 / self.window).max(1.0);
        if self.dead_until.is_some() {
            // A failed probe (or an attempt that started before the death).
            if self.dead_until.is_some_and(|until| now >= until) {
                self.dead_for = (self.dead_for * 2).min(settings.dead_for_max);
                self.dead_until = Some(now + self.dead_for);
                return true;
            }
            return false;
        }
        if settings.dead_after > 0 && self.failures >= settings.dead_after {
            self.dead_until = Some(now + self.dead_for);
            return true;
        }
        false
    }

    /// An operator asked for a retry: a dead destination is alive again
    /// (back to slow start). Returns whether it was dead.
    pub(crate) fn revive(&mut self, settings: &DestinationSettings) -> bool {
        let was_dead = self.dead_until.is_some();
        if was_dead {
            self.reached(settings);
        }
        was_dead
    }

    /// How an operator sees it, if it is dead (or probing).
    pub(crate) fn dead_view(
        &self,
        destination: &Destination,
        now: Instant,
    ) -> Option<DeadDestination> {
        let until = self.dead_until?;
        Some(DeadDestination {
            destination: destination.to_string(),
            failures: self.failures,
            probe_in: until.saturating_duration_since(now),
            last_error: self
                .last_error
                .as_ref()
                .map(|e| e.reply().to_string())
                .unwrap_or_default(),
        })
    }

    /// Nothing worth keeping: the window is back where it starts and the
    /// destination is not dead (the dispatcher may forget it).
    pub(crate) fn is_fresh(&self, settings: &DestinationSettings) -> bool {
        self.dead_until.is_none()
            && self.failures == 0
            && self.slots() <= settings.initial_concurrency.clamp(1, self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> RelayError {
        RelayError::unreachable(Reply::new(
            451,
            "4.4.1",
            "Connection to x:25 failed: refused",
        ))
    }

    fn settings() -> DestinationSettings {
        DestinationSettings::default()
    }

    #[test]
    fn the_window_starts_small_grows_on_success_and_shrinks_on_failure() {
        let s = settings();
        let d = Destination::new("example.test");
        let mut h = Health::new(&s, &d);
        let now = Instant::now();
        assert_eq!(h.slots(), 5);
        assert_eq!(h.verdict(now, 4), Verdict::Attempt);
        assert_eq!(h.verdict(now, 5), Verdict::Full);
        // About one more slot per window of successes.
        for _ in 0..5 {
            h.reached(&s);
        }
        assert_eq!(h.slots(), 5, "4 successes are not a whole window yet");
        h.reached(&s);
        assert_eq!(h.slots(), 6);
        for _ in 0..1000 {
            h.reached(&s);
        }
        assert_eq!(h.slots(), 20, "never above the limit");
        // Failures take it down again, never below one.
        for _ in 0..3 {
            h.unreachable(now, refused(), &s);
        }
        assert_eq!(h.slots(), 19);
        h.reached(&s);
        for _ in 0..4000 {
            h.unreachable(now, refused(), &s);
            h.failures = 0; // not dead: only the window is tested here
        }
        assert_eq!(h.slots(), 1);
    }

    #[test]
    fn overrides_set_a_destinations_limit() {
        let mut s = settings();
        s.overrides.insert("slow.test".into(), 2);
        let slow = Health::new(&s, &Destination::new("slow.test"));
        assert_eq!(slow.slots(), 2, "the initial window is capped by the limit");
        let other = Health::new(&s, &Destination::new("other.test"));
        assert_eq!(other.slots(), 5);
    }

    #[test]
    fn consecutive_failures_make_a_destination_dead_and_a_probe_decides() {
        let s = settings();
        let d = Destination::new("down.test");
        let mut h = Health::new(&s, &d);
        let t0 = Instant::now();
        for k in 1..5 {
            assert!(!h.unreachable(t0, refused(), &s), "{k} failures");
        }
        // A success in between starts the count again.
        h.reached(&s);
        for _ in 1..5 {
            h.unreachable(t0, refused(), &s);
        }
        assert!(!h.is_dead(t0));
        assert!(h.unreachable(t0, refused(), &s), "the fifth makes it dead");
        assert!(h.is_dead(t0));
        let Verdict::Defer(e) = h.verdict(t0, 0) else {
            panic!("a dead destination defers");
        };
        assert!(e.is_transient() && e.is_unreachable());
        assert_eq!(e.reply().code(), 451);
        assert!(e.reply().text().contains("refused"), "{}", e.reply());
        let view = h.dead_view(&d, t0).unwrap();
        assert_eq!(view.failures, 5);
        assert_eq!(view.probe_in, Duration::from_secs(60));

        // The period ends: one probe, alone.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(h.verdict(t1, 0), Verdict::Attempt);
        assert_eq!(h.verdict(t1, 1), Verdict::Full);
        // It fails: dead again, for twice as long.
        assert!(h.unreachable(t1, refused(), &s));
        assert_eq!(
            h.dead_view(&d, t1).unwrap().probe_in,
            Duration::from_secs(120)
        );
        // Failures of attempts that started before the death do not extend it.
        assert!(!h.unreachable(t1, refused(), &s));
        let mut t = t1 + Duration::from_secs(120);
        for _ in 0..10 {
            h.unreachable(t, refused(), &s);
            t += h.dead_view(&d, t).unwrap().probe_in;
        }
        assert_eq!(
            h.dead_view(&d, t - Duration::from_secs(1))
                .unwrap()
                .probe_in,
            Duration::from_secs(1),
            "capped at dead_for_max"
        );
        assert!(h.dead_for <= s.dead_for_max);

        // A probe that reaches the server revives it, at the initial window.
        assert_eq!(h.verdict(t, 0), Verdict::Attempt);
        h.reached(&s);
        assert!(!h.is_dead(t));
        assert_eq!(h.verdict(t, 4), Verdict::Attempt);
        assert_eq!(h.verdict(t, 5), Verdict::Full);
        assert!(h.dead_view(&d, t).is_none());
    }

    #[test]
    fn an_operator_revives_a_dead_destination() {
        let s = settings();
        let d = Destination::new("down.test");
        let mut h = Health::new(&s, &d);
        let t0 = Instant::now();
        assert!(!h.revive(&s));
        for _ in 0..5 {
            h.unreachable(t0, refused(), &s);
        }
        assert!(h.is_dead(t0));
        assert!(h.revive(&s));
        assert_eq!(h.verdict(t0, 0), Verdict::Attempt);
        assert!(h.is_fresh(&s));
    }

    #[test]
    fn dead_after_zero_never_marks_dead() {
        let s = DestinationSettings {
            dead_after: 0,
            ..settings()
        };
        let mut h = Health::new(&s, &Destination::new("x"));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!h.unreachable(t0, refused(), &s));
        }
        assert_eq!(h.verdict(t0, 0), Verdict::Attempt);
    }
}
