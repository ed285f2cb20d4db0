//! `slimta-index-memory [COUNT]`: what the queue's in-process dispatcher
//! (`LocalDispatch`) costs per queued message, measured as the growth of
//! this process's resident memory while COUNT messages (default 1,000,000,
//! disk-spool ids, spread over 1,000 destinations, all due in an hour) are
//! added. Prints bytes per message. Used for the backlog figures in
//! bench/RESULTS.md.

use std::time::{Duration, SystemTime};

use slimta::queue::{Dispatch, LocalDispatch};
use slimta::relay::Destination;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let destinations: Vec<Destination> = (0..1000)
            .map(|d| Destination::new(format!("domain{d}.example")))
            .collect();
        let dispatch = LocalDispatch::default();
        let due = SystemTime::now() + Duration::from_secs(3600);
        let before = rss_bytes();
        for i in 0..count {
            let id = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            dispatch
                .add(id, due, Some(destinations[i % destinations.len()].clone()))
                .await;
        }
        let after = rss_bytes();
        assert_eq!(dispatch.waiting(), count);
        let per = after.saturating_sub(before) as f64 / count as f64;
        println!("LocalDispatch: {count} messages, RSS {before} -> {after} bytes, {per:.0} bytes per message");
    });
}
