//! The queue's clock: wall-clock time that follows tokio's clock.
//!
//! Storage keeps due times and receive times as [`SystemTime`], because they
//! must survive a restart. Scheduling needs a monotonic clock, and tests need
//! to move time forward with `tokio::time::pause` / `advance`, which moves
//! tokio's [`Instant`] but not [`SystemTime::now`].
//!
//! Decision: the queue reads the wall clock once per process (the anchor) and
//! from then on derives "now" as anchor + elapsed tokio time. So five days of
//! paused test time are five days of queue time (a `max_age` test works), and
//! a wall-clock step (an operator setting the date) cannot make the queue
//! retry everything at once. The cost is that NTP slew over a long uptime is
//! not followed; at the granularity of retry delays (minutes) that does not
//! matter, and a restart re-anchors.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();

fn anchor() -> (SystemTime, std::time::Instant) {
    *ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()))
}

/// The queue's current wall-clock time (see the module docs for why this is
/// not [`SystemTime::now`]).
pub fn now() -> SystemTime {
    let (wall, mono) = anchor();
    wall + Instant::now().into_std().saturating_duration_since(mono)
}

/// The tokio instant at which the queue clock shows `time` (now, if `time`
/// is in the past).
pub(crate) fn instant_at(time: SystemTime) -> Instant {
    let (wall_now, instant_now) = (now(), Instant::now());
    match time.duration_since(wall_now) {
        // A due time centuries away (a corrupt record) is clamped rather
        // than overflowing.
        Ok(ahead) => instant_now
            .checked_add(ahead)
            .unwrap_or_else(|| instant_now + Duration::from_secs(100 * 365 * 86_400)),
        Err(_) => instant_now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let before = now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = now();
        let moved = after.duration_since(before).unwrap();
        assert!(moved >= Duration::from_secs(3599), "moved only {moved:?}");
        let due = after + Duration::from_secs(60);
        assert_eq!(instant_at(due), Instant::now() + Duration::from_secs(60));
        assert_eq!(instant_at(before), Instant::now());
    }
}
