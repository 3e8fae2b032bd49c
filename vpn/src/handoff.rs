//! The bounded queue that carries handshake messages from `vpn-rx` to `vpn-handshake` in
//! batches.
//!
//! A message handed over one at a time costs a wake of the handshake thread each, and on a
//! gateway with one CPU every wake is a switch between the two threads. Here the receive thread
//! hands over everything one receive brought in with one lock, and wakes the handshake thread
//! only when it is waiting; the handshake thread takes everything queued with one lock. The
//! bound counts messages, not batches: what does not fit is refused (the caller counts it as
//! dropped for load, as WireGuard does when its handshake queue is full).
//!
//! The giver can also wait for the taker to run out of work (`wait_idle`): while handshakes
//! alone come in, the receive thread leaves them to gather in the socket for the time the
//! handshake thread is busy, instead of being woken by each one and switching away from the
//! handshake thread's Diffie-Hellman work to hand over a batch of one.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A bounded queue of `T` handed over and taken in batches.
pub(crate) struct Handoff<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    idle: Condvar,
    capacity: usize,
}

struct State<T> {
    items: Vec<T>,
    /// The taker is waiting on `ready`: the next batch must wake it.
    waiting: bool,
    /// The taker took a batch and has not come back for more.
    busy: bool,
    /// A giver is waiting on `idle`: the taker's return must wake it.
    holding: bool,
}

impl<T> Handoff<T> {
    /// A queue that holds at most `capacity` items.
    pub(crate) fn new(capacity: usize) -> Handoff<T> {
        Handoff {
            state: Mutex::new(State {
                items: Vec::with_capacity(capacity),
                waiting: false,
                busy: false,
                holding: false,
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The state is a list and a flag, whole at every point a holder could panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves what fits of `batch` into the queue (in order) and wakes the taker if it waits.
    /// Returns how many items did not fit; `batch` is left empty either way.
    pub(crate) fn give(&self, batch: &mut Vec<T>) -> usize {
        if batch.is_empty() {
            return 0;
        }
        let mut state = self.lock();
        let room = self.capacity.saturating_sub(state.items.len());
        let refused = batch.len().saturating_sub(room);
        batch.truncate(batch.len() - refused);
        state.items.append(batch);
        let wake = state.waiting && !state.items.is_empty();
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        batch.clear();
        refused
    }

    /// Waits up to `timeout` for items, then moves all queued items into `into` (which should
    /// be empty; its capacity is swapped with the queue's, so neither side allocates). False
    /// when nothing came.
    pub(crate) fn take(&self, into: &mut Vec<T>, timeout: Duration) -> bool {
        let mut state = self.lock();
        state.busy = false;
        if state.holding && state.items.is_empty() {
            self.idle.notify_all();
        }
        if state.items.is_empty() {
            state.waiting = true;
            state = self
                .ready
                .wait_timeout_while(state, timeout, |s| s.items.is_empty())
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
            state.waiting = false;
        }
        if state.items.is_empty() {
            return false;
        }
        std::mem::swap(&mut state.items, into);
        state.busy = true;
        true
    }

    /// Waits up to `timeout` until the taker has worked through everything given to it (it
    /// is back waiting for more, and nothing is queued).
    pub(crate) fn wait_idle(&self, timeout: Duration) {
        let mut state = self.lock();
        state.holding = true;
        let mut state = self
            .idle
            .wait_timeout_while(state, timeout, |s| s.busy || !s.items.is_empty())
            .map(|(guard, _)| guard)
            .unwrap_or_else(|p| p.into_inner().0);
        state.holding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_batch_is_taken_whole_and_in_order() {
        let queue = Handoff::new(8);
        let mut batch = vec![1, 2, 3];
        assert_eq!(queue.give(&mut batch), 0);
        assert!(batch.is_empty());
        let mut more = vec![4];
        assert_eq!(queue.give(&mut more), 0);
        let mut taken = Vec::new();
        assert!(queue.take(&mut taken, Duration::from_millis(1)));
        assert_eq!(taken, [1, 2, 3, 4]);
        taken.clear();
        assert!(!queue.take(&mut taken, Duration::from_millis(1)));
    }

    #[test]
    fn what_does_not_fit_is_refused_and_counted() {
        let queue = Handoff::new(4);
        let mut batch = vec![1, 2, 3];
        assert_eq!(queue.give(&mut batch), 0);
        let mut batch = vec![4, 5, 6];
        assert_eq!(queue.give(&mut batch), 2);
        assert!(batch.is_empty());
        let mut taken = Vec::new();
        assert!(queue.take(&mut taken, Duration::from_millis(1)));
        assert_eq!(taken, [1, 2, 3, 4]);
        // Taking makes room again.
        let mut batch = vec![7, 8, 9, 10, 11];
        assert_eq!(queue.give(&mut batch), 1);
    }

    #[test]
    fn a_waiting_taker_is_woken_by_a_batch() {
        let queue = Arc::new(Handoff::new(16));
        let taker = Arc::clone(&queue);
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let mut taken = Vec::new();
            while taken.is_empty() {
                taker.take(&mut taken, Duration::from_secs(10));
            }
            taken
        });
        std::thread::sleep(Duration::from_millis(20));
        let mut batch = vec![7, 8];
        assert_eq!(queue.give(&mut batch), 0);
        let taken = handle.join().expect("the taker thread panicked");
        assert_eq!(taken, [7, 8]);
        // Woken by the batch, not by the ten-second timeout.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_giver_waits_until_the_taker_has_worked_through_its_batch() {
        let queue = Arc::new(Handoff::new(16));
        // Idle from the start: nothing to wait for.
        let started = Instant::now();
        queue.wait_idle(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));

        let taker = Arc::clone(&queue);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut taken = Vec::new();
            while !taker.take(&mut taken, Duration::from_secs(10)) {}
            // Working on the batch: the giver must still be waiting when this is sent.
            std::thread::sleep(Duration::from_millis(50));
            done_tx.send(taken.clone()).expect("the giver is gone");
            taken.clear();
            // Back for more: the giver's wait ends here, not at its ten-second timeout.
            taker.take(&mut taken, Duration::from_secs(10));
        });
        let mut batch = vec![1, 2];
        assert_eq!(queue.give(&mut batch), 0);
        let started = Instant::now();
        queue.wait_idle(Duration::from_secs(10));
        assert_eq!(
            done_rx
                .try_recv()
                .expect("the wait ended before the batch was done"),
            [1, 2]
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The taker waits for its next batch; one more item ends it.
        let mut batch = vec![3];
        assert_eq!(queue.give(&mut batch), 0);
        handle.join().expect("the taker thread panicked");
    }

    #[test]
    fn a_giver_waits_no_longer_than_its_timeout_for_a_busy_taker() {
        let queue = Handoff::new(16);
        let mut batch = vec![1];
        assert_eq!(queue.give(&mut batch), 0);
        let mut taken = Vec::new();
        assert!(queue.take(&mut taken, Duration::from_millis(1)));
        // The taker never comes back.
        let started = Instant::now();
        queue.wait_idle(Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
