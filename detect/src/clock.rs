//! Time arithmetic that never panics: the wall clock may step back between two observations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after `earlier` `later` is; zero when `later` is not after it.
pub(crate) fn since(earlier: SystemTime, later: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

/// Whole seconds since the Unix epoch; zero before it.
pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    since(UNIX_EPOCH, at).as_secs()
}
