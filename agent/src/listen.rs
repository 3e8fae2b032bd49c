//! Accepting connections without letting clients exhaust the agent's file descriptors: the
//! one accept loop of the control socket, `/metrics` and the MFA portal.
//!
//! Every listener bounds the connections it serves at once ([`Limiter`]), gives each
//! connection one deadline for the whole request (read, handle and write; the callers own
//! the constants), and survives accept errors: after a failure it waits ([`Backoff`], 10 ms
//! doubling to 1 s, reset by the next success) instead of spinning, logs at most once a
//! second ([`LogEvery`]), and, when the process has no descriptor left (`EMFILE`), frees a
//! reserved one ([`Reserve`]) to accept and close the connection at the head of the backlog:
//! without that, the pending connection keeps the listener readable and every accept fails
//! again at once.
//!
//! At start the agent raises its soft `RLIMIT_NOFILE` to the hard limit
//! ([`raise_nofile_limit`]); the systemd unit sets the hard limit (`LimitNOFILE`).

use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

/// The first pause after a failed accept.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between two accepts while they keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this period about a listener's failing accepts.
pub const LOG_PERIOD: Duration = Duration::from_secs(1);
/// How long shedding a connection waits for it: the listener was readable a moment ago, so
/// the connection is there unless its client reset it meanwhile.
const SHED_WAIT: Duration = Duration::from_millis(10);

/// The pause after each failed accept: doubling from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`],
/// back to the start after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The pause after one more failure.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(BACKOFF_MAX);
        pause
    }

    pub fn succeeded(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// Lets one log line through per [`LOG_PERIOD`] and counts the ones it held back, so that a
/// listener failing thousands of times a second writes one line a second saying how often.
#[derive(Debug, Clone, Default)]
pub struct LogEvery {
    last: Option<Instant>,
    held_back: u64,
}

impl LogEvery {
    /// `Some(n)` when a line may be logged at `now`, `n` being the lines held back since the
    /// last one; `None` when this one is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_PERIOD => {
                self.held_back = self.held_back.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// The connections a listener serves at once, oldest first. When all slots are taken, a new
/// connection takes the slot of the oldest connection still sending its request (a client that
/// sends nothing, or trickles, loses its slot to one that arrives after it), so that idle
/// connections cannot keep a scrape or a command out; connections whose request has arrived
/// are never cut for a newcomer. When every slot is busy with a request, what happens to the
/// newcomer is the listener's choice: [`Limiter::try_admit`] refuses it (the caller closes it
/// at once), [`Limiter::admit`] waits for a slot (the caller accepts only then, so that clients
/// wait in the kernel's backlog, where they cost the agent no descriptor).
#[derive(Debug, Clone)]
pub struct Limiter {
    table: Arc<Mutex<Table>>,
    freed: Arc<Notify>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// By admission order: the first entry still reading is the one a newcomer evicts.
    slots: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Still sending its request.
    reading: bool,
    evict: Option<oneshot::Sender<()>>,
}

/// A taken slot, freed when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    table: Arc<Mutex<Table>>,
    freed: Arc<Notify>,
}

/// Resolves when the connection's slot was given to a newer connection: the connection is
/// then closed.
#[derive(Debug)]
pub struct Evicted(oneshot::Receiver<()>);

impl Evicted {
    pub async fn wait(self) {
        // A slot dropped without eviction drops its sender: that is no eviction.
        if self.0.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Slot {
    /// The request has arrived: the connection is no longer one a newcomer may evict.
    pub fn request_read(&self) {
        if let Some(entry) = lock(&self.table).slots.get_mut(&self.id) {
            entry.reading = false;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.table).slots.remove(&self.id);
        self.freed.notify_one();
    }
}

/// The table, even when a thread panicked holding it: every update leaves it consistent.
fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limiter {
    pub fn new(cap: usize) -> Limiter {
        Limiter {
            table: Arc::new(Mutex::new(Table::default())),
            freed: Arc::new(Notify::new()),
            cap,
        }
    }

    /// A slot, free or taken from the oldest connection still reading; `None` when every slot
    /// serves a request.
    pub fn try_admit(&self) -> Option<(Slot, Evicted)> {
        let mut table = lock(&self.table);
        if table.slots.len() >= self.cap {
            let oldest = table
                .slots
                .iter()
                .find(|(_, entry)| entry.reading)
                .map(|(id, _)| *id)?;
            if let Some(evict) = table.slots.remove(&oldest).and_then(|e| e.evict) {
                // The connection may have ended meanwhile; then there is nobody to tell.
                let _ = evict.send(());
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        table.slots.insert(
            id,
            Entry {
                reading: true,
                evict: Some(evict),
            },
        );
        let slot = Slot {
            id,
            table: Arc::clone(&self.table),
            freed: Arc::clone(&self.freed),
        };
        Some((slot, Evicted(evicted)))
    }

    /// A slot, once one is free or can be taken.
    pub async fn admit(&self) -> (Slot, Evicted) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(admitted) = self.try_admit() {
                return admitted;
            }
            // Every slot serves a request: wait until one is freed.
            freed.await;
        }
    }

    /// Returns once [`Limiter::try_admit`] would give a slot, without taking it: a listener
    /// whose clients wait in the backlog accepts only then, and evicts nobody before a
    /// newcomer is there.
    pub async fn admittable(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let table = lock(&self.table);
                if table.slots.len() < self.cap || table.slots.values().any(|e| e.reading) {
                    return;
                }
            }
            freed.await;
        }
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        lock(&self.table).slots.len()
    }
}

/// One descriptor held in reserve (`/dev/null`), given up for a moment when the process runs
/// out of descriptors so that the listener can accept and close the connection that makes
/// every accept fail.
#[derive(Debug)]
pub struct Reserve {
    file: Option<File>,
}

impl Reserve {
    pub fn open() -> Reserve {
        let file = File::open("/dev/null")
            .map_err(|e| tracing::warn!(error = %e, "cannot open /dev/null to keep a file descriptor in reserve"))
            .ok();
        Reserve { file }
    }

    /// Closes the reserved descriptor; false when there was none.
    fn release(&mut self) -> bool {
        self.file.take().is_some()
    }

    fn restore(&mut self) {
        if self.file.is_none() {
            self.file = File::open("/dev/null").ok();
        }
    }
}

/// Errors after which a listener cannot accept again; others concern one connection or pass
/// (a connection reset before it was accepted, no descriptor left for now).
pub fn is_listener_broken(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

/// Whether the process or the system is out of file descriptors.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A listener's accept loop state: its backoff, its log limiter and its reserve descriptor.
#[derive(Debug)]
pub struct Acceptor {
    /// The listener, as log lines name it: `control socket`, `metrics`, `MFA portal`.
    what: &'static str,
    backoff: Backoff,
    log: LogEvery,
    reserve: Reserve,
}

impl Acceptor {
    pub fn new(what: &'static str) -> Acceptor {
        Acceptor {
            what,
            backoff: Backoff::default(),
            log: LogEvery::default(),
            reserve: Reserve::open(),
        }
    }

    /// The next accepted connection, calling `accept` (the listener's accept) until one comes.
    /// Fails only when the listener is broken for good ([`is_listener_broken`]).
    pub async fn next<T, F, Fut>(&mut self, mut accept: F) -> io::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            let e = match accept().await {
                Ok(accepted) => {
                    self.backoff.succeeded();
                    return Ok(accepted);
                }
                Err(e) if is_listener_broken(&e) => return Err(e),
                Err(e) => e,
            };
            if is_out_of_descriptors(&e) && self.reserve.release() {
                // The connection is closed as soon as it is accepted: its client sees a reset
                // at once rather than waiting in a backlog the agent cannot serve.
                let shed = matches!(tokio::time::timeout(SHED_WAIT, accept()).await, Ok(Ok(_)));
                self.reserve.restore();
                if shed {
                    // No pause: each round takes one connection off the backlog, so this
                    // cannot spin, and it empties the backlog of clients that would only time
                    // out. The next accept fails at once again while descriptors are short.
                    if let Some(held_back) = self.log.allow(Instant::now()) {
                        tracing::warn!(
                            listener = self.what,
                            error = %e,
                            failures_not_logged = held_back,
                            "out of file descriptors: connections are closed as soon as they are accepted"
                        );
                    }
                    continue;
                }
            }
            let pause = self.backoff.failed();
            if let Some(held_back) = self.log.allow(Instant::now()) {
                tracing::warn!(
                    listener = self.what,
                    error = %e,
                    ?pause,
                    failures_not_logged = held_back,
                    "cannot accept a connection; pausing before the next accept"
                );
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so that the limit the service
/// manager grants (`LimitNOFILE`) is the one in force; returns the limits before and after.
pub fn raise_nofile_limit() -> Result<(u64, u64), nix::Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let expected_ms = [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000];
        for (attempt, ms) in expected_ms.into_iter().enumerate() {
            assert_eq!(
                backoff.failed(),
                Duration::from_millis(ms),
                "failure {attempt}"
            );
        }
        backoff.succeeded();
        assert_eq!(backoff.failed(), BACKOFF_FIRST);
    }

    #[test]
    fn one_log_line_a_second_counting_the_held_back() {
        let start = Instant::now();
        let mut log = LogEvery::default();
        let ms = Duration::from_millis;
        // (offset from start, expected answer)
        let cases = [
            (ms(0), Some(0)),
            (ms(1), None),
            (ms(500), None),
            (ms(999), None),
            (ms(1000), Some(3)),
            (ms(1500), None),
            (ms(2500), Some(1)),
        ];
        for (offset, expected) in cases {
            assert_eq!(log.allow(start + offset), expected, "at {offset:?}");
        }
    }

    /// A newcomer takes the slot of the oldest connection still reading; connections whose
    /// request arrived keep theirs; with none to evict, the newcomer is refused or waits.
    #[tokio::test]
    async fn the_limiter_evicts_the_oldest_reader_and_never_a_busy_connection() {
        let limiter = Limiter::new(2);
        let (first, first_evicted) = limiter.try_admit().expect("a first slot");
        let (second, _second_evicted) = limiter.try_admit().expect("a second slot");
        second.request_read();
        // Full: the third takes the first's slot, which is still reading.
        let (third, _third_evicted) = limiter.try_admit().expect("the first's slot");
        tokio::time::timeout(Duration::from_secs(5), first_evicted.wait())
            .await
            .expect("the first connection is told");
        assert_eq!(limiter.in_use(), 2);
        drop(first);
        assert_eq!(limiter.in_use(), 2, "an evicted slot is not freed twice");
        third.request_read();
        assert!(limiter.try_admit().is_none(), "both connections are busy");
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.admit().await }
        });
        drop(second);
        let (fourth, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once a slot was freed")
            .expect("the task");
        assert_eq!(limiter.in_use(), 2);
        drop((third, fourth));
        assert_eq!(limiter.in_use(), 0);
    }

    /// Accept errors pass through the backoff; a broken listener ends the loop; an `EMFILE`
    /// sheds the pending connection with the reserved descriptor.
    #[tokio::test]
    async fn the_acceptor_backs_off_sheds_and_stops_on_a_broken_listener() {
        let cases: [(&[i32], Result<u32, i32>, usize); 4] = [
            // (errors returned before success, outcome, accept calls)
            (&[], Ok(7), 1),
            (&[libc::ECONNABORTED, libc::ENOBUFS], Ok(7), 3),
            // One failed accept, one accept that sheds, then the connection served.
            (&[libc::EMFILE], Ok(7), 3),
            (&[libc::EBADF], Err(libc::EBADF), 1),
        ];
        for (errors, expected, calls_expected) in cases {
            let mut acceptor = Acceptor::new("test");
            let mut calls = 0usize;
            let mut queue: Vec<i32> = errors.to_vec();
            queue.reverse();
            let shed_pending = errors.contains(&libc::EMFILE);
            let mut shed_done = false;
            let accepted = acceptor
                .next(|| {
                    calls += 1;
                    let next = match queue.pop() {
                        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                        None if shed_pending && !shed_done => {
                            shed_done = true;
                            Ok(0)
                        }
                        None => Ok(7),
                    };
                    async move { next }
                })
                .await;
            let accepted = accepted.map_err(|e| e.raw_os_error().unwrap_or_default());
            assert_eq!(accepted, expected, "{errors:?}");
            assert_eq!(calls, calls_expected, "{errors:?}");
            assert!(acceptor.reserve.file.is_some(), "the reserve is back");
        }
    }
}
