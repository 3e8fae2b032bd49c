//! Prometheus counters that mirror a count kept elsewhere (the endpoint's atomics, the audit
//! sink's tallies), set when a scrape refreshes them.

use prometheus::IntCounter;

/// Brings `counter` to `count`. The counts mirrored only grow while their owner runs; a lower
/// one is a count that started over (the endpoint or the agent restarted), which Prometheus
/// understands as a counter reset.
pub fn mirror(counter: &IntCounter, count: u64) {
    let current = counter.get();
    if count < current {
        counter.reset();
        counter.inc_by(count);
    } else {
        counter.inc_by(count - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_growth_and_resets() {
        let counter = IntCounter::new("c_total", "test").expect("a valid name");
        for (count, expected) in [(3, 3), (3, 3), (10, 10), (4, 4), (0, 0), (7, 7)] {
            mirror(&counter, count);
            assert_eq!(counter.get(), expected, "after mirroring {count}");
        }
    }
}
