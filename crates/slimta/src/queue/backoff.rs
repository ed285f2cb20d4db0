//! How long to wait before retrying a transient failure, and when to give up.
//!
//! The queue asks a [`Backoff`] after every attempt that left recipients with
//! a transient failure. `Some(delay)` reschedules them; `None` gives up, and
//! the queue treats those recipients as permanently failed (they bounce).
//!
//! [`ExponentialBackoff`] is the default, shaped like Postfix's
//! `minimal_backoff_time` / `maximal_backoff_time` /
//! `maximal_queue_lifetime`. Decision: when the next delay would carry the
//! message past `max_age`, the delay is shortened so that one last attempt
//! happens exactly at `max_age`; a failure after that gives up. So a message
//! is never bounced for age while an attempt inside its lifetime was still
//! possible.

use std::time::Duration;

use crate::envelope::Envelope;

use super::clock;

/// Decides retry delays. `attempts` is the number of attempts made so far
/// (1 after the first failure).
pub trait Backoff: Send + Sync + 'static {
    /// The delay before the next attempt, or `None` to give up.
    fn delay(&self, envelope: &Envelope, attempts: u32) -> Option<Duration>;
}

impl<F> Backoff for F
where
    F: Fn(&Envelope, u32) -> Option<Duration> + Send + Sync + 'static,
{
    fn delay(&self, envelope: &Envelope, attempts: u32) -> Option<Duration> {
        self(envelope, attempts)
    }
}

/// Exponential backoff with a cap, a maximum message age and an optional
/// maximum number of attempts.
///
/// The delay after attempt `n` is `initial_delay * factor^(n-1)`, at most
/// `max_delay`, and never past `receive_time + max_age`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExponentialBackoff {
    /// The delay after the first failed attempt. Default 5 minutes.
    pub initial_delay: Duration,
    /// The growth factor between attempts. Default 2.0.
    pub factor: f64,
    /// The longest delay. Default 1 hour.
    pub max_delay: Duration,
    /// How long after `Envelope::receive_time` the queue gives up. Default
    /// 5 days.
    pub max_age: Duration,
    /// Give up after this many attempts; 0 means no limit. Default 0.
    pub max_attempts: u32,
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(5 * 60),
            factor: 2.0,
            max_delay: Duration::from_secs(60 * 60),
            max_age: Duration::from_secs(5 * 24 * 60 * 60),
            max_attempts: 0,
        }
    }
}

impl ExponentialBackoff {
    fn uncapped_delay(&self, attempts: u32) -> Duration {
        let exponent = i32::try_from(attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.factor.powi(exponent);
        // NaN or infinity (a silly factor) falls back to the cap.
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }
}

impl Backoff for ExponentialBackoff {
    fn delay(&self, envelope: &Envelope, attempts: u32) -> Option<Duration> {
        if self.max_attempts != 0 && attempts >= self.max_attempts {
            return None;
        }
        let age = clock::now()
            .duration_since(envelope.receive_time)
            .unwrap_or_default();
        let left = self.max_age.checked_sub(age).filter(|d| !d.is_zero())?;
        Some(self.uncapped_delay(attempts).min(self.max_delay).min(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        let mut e = Envelope::new("a@x", vec!["b@y".into()], Vec::new());
        e.receive_time = clock::now();
        e
    }

    #[test]
    fn grows_and_caps() {
        let b = ExponentialBackoff::default();
        let e = envelope();
        let mins = |n| b.delay(&e, n).unwrap().as_secs() / 60;
        assert_eq!(
            [
                mins(1),
                mins(2),
                mins(3),
                mins(4),
                mins(5),
                mins(6),
                mins(60)
            ],
            [5, 10, 20, 40, 60, 60, 60]
        );
        assert_eq!(b.delay(&e, u32::MAX), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn max_attempts_gives_up() {
        let b = ExponentialBackoff {
            max_attempts: 3,
            ..Default::default()
        };
        let e = envelope();
        assert!(b.delay(&e, 2).is_some());
        assert_eq!(b.delay(&e, 3), None);
    }

    #[test]
    fn last_attempt_lands_on_max_age_then_gives_up() {
        let b = ExponentialBackoff::default();
        let mut e = envelope();
        e.receive_time = clock::now() - b.max_age + Duration::from_secs(600);
        let d = b.delay(&e, 10).unwrap();
        assert!(
            d <= Duration::from_secs(600) && d > Duration::from_secs(590),
            "{d:?}"
        );
        e.receive_time = clock::now() - b.max_age;
        assert_eq!(b.delay(&e, 10), None);
    }

    #[test]
    fn closures_are_backoffs() {
        let b: Box<dyn Backoff> =
            Box::new(|_: &Envelope, n: u32| (n < 2).then_some(Duration::from_secs(1)));
        assert_eq!(b.delay(&envelope(), 1), Some(Duration::from_secs(1)));
        assert_eq!(b.delay(&envelope(), 2), None);
    }
}
