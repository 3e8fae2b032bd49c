//! Waiting for conditions with a deadline.
//!
//! The suite never sleeps a fixed time and hopes: it polls a condition until it holds or the
//! deadline passes, and a timeout names what was awaited.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How long to wait between two polls: short at first, so fast conditions are seen quickly, then
/// longer, so slow ones do not burn a core the system under test needs.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(match attempt {
        0..=9 => 10,
        10..=29 => 50,
        _ => 100,
    })
}

/// Polls `cond` until it returns true; panics naming `what` when `timeout` passes first.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if let Err(e) = wait_for(timeout, what, || Ok(cond().then_some(()))) {
        panic!("{e:#}");
    }
}

/// Polls `probe` until it returns `Some`; fails naming `what` (and the last probe error, if any)
/// when `timeout` passes first. A probe error is not fatal: the condition may not be observable
/// yet (an agent that has not opened its control socket, a file not written yet).
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        let last_error = match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(backoff(attempt));
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_the_probe_yields() {
        let mut calls = 0;
        let value = wait_for(Duration::from_secs(5), "the third call", || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        })
        .expect("the probe succeeds on its third call");
        assert_eq!(value, 3);
    }

    #[test]
    fn a_timeout_names_what_was_awaited_and_the_last_error() {
        let err = wait_for::<()>(Duration::from_millis(30), "the moon", || {
            bail!("still night")
        })
        .expect_err("the probe never succeeds");
        let message = format!("{err:#}");
        assert!(message.contains("waiting for the moon"), "{message}");
        assert!(message.contains("still night"), "{message}");
    }
}
