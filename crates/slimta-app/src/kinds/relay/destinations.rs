//! The keys every relay type takes for the queue's per-destination
//! scheduling, read into the library's `DestinationSettings`:
//!
//! ```toml
//! [relay.out]
//! type = "mx"
//! destination_concurrency = 20          # attempts in flight per destination
//! initial_destination_concurrency = 5   # slow start begins here
//! domain_concurrency = { "slow.example" = 2 }   # per-destination overrides
//! dead_after = 5                        # consecutive unreachable attempts; 0 = never dead
//! dead_for = "1m"                       # first dead period, doubled after each failed probe
//! dead_for_max = "30m"
//! ```
//!
//! A destination is what the relay delivers to: a recipient domain for
//! `mx`, the one host (or socket) for `static` and `lmtp`, the one program
//! or service for `pipe`, `maildrop`, `dovecot`, `http` and `blackhole`;
//! `domain_concurrency` therefore only means something for `mx`.
//!
//! Decision: the session pool of one host (`pool_size`, default 20 like
//! `destination_concurrency`) also bounds the connections to it. A
//! destination never gets more attempts in flight than its pool has
//! sessions (a smaller `pool_size` lowers `destination_concurrency` and the
//! overrides to it), so an attempt the queue lets go does not then wait for
//! a pool slot while holding one of the queue's `max_concurrency` slots.
//! (Domains that share one MX host share its pool, and can still wait for
//! it.)

use slimta::queue::DestinationSettings;

use crate::config::fields::{Errors, Section, count, domain_keyed, integer, positive_duration};

/// Reads the destination keys of the relay section `s`; `pool_size` is the
/// relay's session pool size, if it has one (see the module docs).
pub(super) fn read_destinations(
    s: &mut Section<'_>,
    errors: &mut Errors,
    pool_size: Option<usize>,
) -> DestinationSettings {
    let defaults = DestinationSettings::default();
    let concurrency = s.or(
        errors,
        "destination_concurrency",
        defaults.concurrency,
        count,
    );
    let initial_concurrency = s.or(
        errors,
        "initial_destination_concurrency",
        defaults.initial_concurrency.min(concurrency),
        count,
    );
    let overrides: std::collections::HashMap<String, usize> = s
        .table(errors, "domain_concurrency")
        .map(|t| domain_keyed(&t, errors, count).into_iter().collect())
        .unwrap_or_default();
    let dead_after = s.or(
        errors,
        "dead_after",
        u64::from(defaults.dead_after),
        integer(0, 1_000_000),
    );
    let dead_for = s.or(errors, "dead_for", defaults.dead_for, positive_duration);
    let dead_for_max = s.or(
        errors,
        "dead_for_max",
        defaults.dead_for_max.max(dead_for),
        positive_duration,
    );
    if dead_for_max < dead_for {
        errors.push(
            s.key_path("dead_for_max"),
            format!("must be at least dead_for ({}s)", dead_for.as_secs()),
        );
    }
    let pool = pool_size.unwrap_or(usize::MAX);
    let concurrency = concurrency.min(pool);
    let overrides = overrides
        .into_iter()
        .map(|(domain, n)| (domain, n.min(pool)))
        .collect();
    DestinationSettings {
        concurrency,
        initial_concurrency: initial_concurrency.min(concurrency),
        overrides,
        dead_after: u32::try_from(dead_after).unwrap_or(u32::MAX),
        dead_for,
        dead_for_max: dead_for_max.max(dead_for),
    }
}
