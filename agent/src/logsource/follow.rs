//! Following a log file across rotation, on a thread of its own.
//!
//! The follower polls: every [`POLL`] it reads what was appended to the file it has open, and
//! compares the inode at the path with that file's.
//!
//! - **Start.** Without a saved position it starts at the end of the file (history is not
//!   replayed); with one for the same inode it continues at the saved offset. When the path
//!   holds another inode, the saved one was rotated while the agent was down: the follower
//!   looks for it in the same directory (`auth.log.1`), reads it from the saved offset to its
//!   end, and reads the new file from its start.
//! - **Rotation by rename** (logrotate's default `create`): once the path holds a new inode,
//!   the old file is read to its end, then the new one from its start. The old file stays
//!   open for [`ROTATED_GRACE`] and is read on every poll, because a writer keeps appending to
//!   it until it is told to reopen its log (the `postrotate` signal).
//! - **Truncation** (`copytruncate`): when the file is shorter than what was read, the
//!   follower first looks in the same directory for the copy (a file at least as long whose
//!   bytes before the offset end like the ones it read last) and reads the copy from its
//!   offset to the end: the lines written after its last read and before the copy. Then it
//!   reads the truncated file from offset 0. No line is read twice.
//! - **A missing file** is waited for; a file that appears is read from its start.
//!
//! Limits that polling and the rotation schemes themselves set: with `copytruncate`, lines
//! written between logrotate's copy and its truncation are in neither file and are lost to
//! every reader; a copy compressed before the follower looked (`compress` without
//! `delaycompress`) is not found, and then the lines it had not read are lost too; a truncated
//! file that has grown past the old offset again before the next poll looks unchanged, and the
//! follower continues at the old offset. A file that is created and rotated away again within
//! one poll interval is never seen. A file truncated while the agent was down is read from its
//! start, without looking for the copy.
//!
//! The position is saved at most every [`SAVE_EVERY`] while lines arrive and when the
//! follower stops, so an orderly restart loses and repeats nothing; after a crash the lines
//! read since the last save are read again.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::lines::{self, Lines, Split};
use super::position::{self, FilePosition};
use super::stop::Stop;
use super::{error_chain, journal, Counters, Line, Origin};

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_millis(20);
/// How long a rotated file is still read after the path got a new one.
pub const ROTATED_GRACE: Duration = Duration::from_secs(5);
/// The shortest interval between two saves of the position while lines arrive.
pub const SAVE_EVERY: Duration = Duration::from_millis(250);
/// Bytes read per `read` call.
const CHUNK: usize = 64 * 1024;
/// How many of the last bytes read are kept to recognise the copy of a truncated file.
const RECENT: usize = 256;
/// A copy older than this is not the one a truncation just made.
const COPY_AGE: Duration = Duration::from_secs(600);
/// Bytes read from one file before the follower looks at rotation and the stop signal again,
/// so a writer faster than the follower cannot starve them.
const BURST: u64 = 16 * 1024 * 1024;

/// Starting a follower.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("starting the thread that follows log source {name}")]
    Spawn {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A running follower: a thread that hands each line of one source to a callback. Dropping
/// it (or [`Follower::stop`]) stops the thread, saves the position and waits for it; that
/// wait lasts at most the callback's current call and one save, but it blocks, so an async
/// caller stops followers from a blocking context.
///
/// The callback runs on the follower's thread. When it blocks (a full bounded channel), the
/// follower waits and the lines wait in the file: nothing is lost, and the position saved is
/// that of the last line handed over.
pub struct Follower {
    stop: Arc<Stop>,
    counters: Arc<Counters>,
    /// Called by `stop` before joining: wakes a thread blocked outside [`Stop::wait`].
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Follows `origin`, keeping its position in the file `state`, and calls `sink` with
    /// every line on the follower's thread. `name` is the source's configured name, used in
    /// the thread's name and in log messages.
    pub fn start<F>(
        name: &str,
        origin: Origin,
        state: PathBuf,
        sink: F,
    ) -> Result<Follower, FollowError>
    where
        F: FnMut(Line) + Send + 'static,
    {
        match origin {
            Origin::File(path) => Follower::file(name, path, state, sink),
            Origin::Journal(unit) => journal::start(name, unit, state, sink),
        }
    }

    /// Follows the log file at `path`.
    pub fn file<F>(
        name: &str,
        path: PathBuf,
        state: PathBuf,
        sink: F,
    ) -> Result<Follower, FollowError>
    where
        F: FnMut(Line) + Send + 'static,
    {
        let source = name.to_owned();
        Follower::spawn(name, None, move |stop, counters| {
            let mut deliver = Deliver { sink, counters };
            follow_file(&source, &path, &state, stop, &mut deliver);
        })
    }

    /// Runs `body` on a new thread named after the source.
    pub(crate) fn spawn<B>(
        name: &str,
        on_stop: Option<Box<dyn FnOnce() + Send>>,
        body: B,
    ) -> Result<Follower, FollowError>
    where
        B: FnOnce(&Stop, &Counters) + Send + 'static,
    {
        let stop = Arc::new(Stop::default());
        let counters = Arc::new(Counters::default());
        let thread = thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn({
                let stop = Arc::clone(&stop);
                let counters = Arc::clone(&counters);
                move || body(&stop, &counters)
            })
            .map_err(|source| FollowError::Spawn {
                name: name.to_owned(),
                source,
            })?;
        Ok(Follower {
            stop,
            counters,
            on_stop,
            thread: Some(thread),
        })
    }

    /// What the follower has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops the thread after the line it is handing over, saves the position and waits.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.stop();
        if let Some(wake) = self.on_stop.take() {
            wake();
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("a log source's thread panicked");
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The callback and the counters, as the reading code hands lines to them.
pub(crate) struct Deliver<'a, F> {
    pub(crate) sink: F,
    pub(crate) counters: &'a Counters,
}

impl<F: FnMut(Line)> Deliver<'_, F> {
    pub(crate) fn line(&mut self, split: Split<'_>) {
        Counters::bump(&self.counters.lines);
        if split.cut {
            Counters::bump(&self.counters.cut_lines);
        }
        (self.sink)(Line {
            text: lines::text(split.bytes),
            read_at: SystemTime::now(),
            cut: split.cut,
        });
    }
}

/// A file's identity: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One open file and how far it was read.
struct Reader {
    file: File,
    id: FileId,
    /// Bytes read from the file, including those of a partial line held in `lines`.
    read: u64,
    lines: Lines,
    /// The last bytes read (at most [`RECENT`]), which end at offset `read`.
    recent: Vec<u8>,
}

impl Reader {
    /// Opens `path` at `offset`, or at its end when `offset` is `None`; an offset past the end
    /// (the file was truncated) starts at 0.
    fn open(path: &Path, offset: Option<u64>) -> io::Result<Reader> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let at = match offset {
            Some(offset) if offset <= meta.len() => offset,
            Some(_) => 0,
            None => meta.len(),
        };
        file.seek(SeekFrom::Start(at))?;
        Ok(Reader {
            file,
            id: FileId::of(&meta),
            read: at,
            lines: Lines::default(),
            recent: Vec::new(),
        })
    }

    /// Reads what was appended, up to [`BURST`] bytes; true when there may be more.
    fn drain<F: FnMut(Line)>(&mut self, deliver: &mut Deliver<'_, F>) -> io::Result<bool> {
        let mut buf = vec![0; CHUNK];
        let mut burst = 0;
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                return Ok(false);
            }
            let n64 = u64::try_from(n).unwrap_or(u64::MAX);
            self.read += n64;
            burst += n64;
            self.lines.feed(&buf[..n], &mut |split| deliver.line(split));
            self.recent
                .extend_from_slice(&buf[n.saturating_sub(RECENT)..n]);
            let excess = self.recent.len().saturating_sub(RECENT);
            self.recent.drain(..excess);
            if burst >= BURST {
                return Ok(true);
            }
        }
    }

    /// Reads to the end, however much there is.
    fn drain_all<F: FnMut(Line)>(&mut self, deliver: &mut Deliver<'_, F>) -> io::Result<()> {
        while self.drain(deliver)? {}
        Ok(())
    }

    /// Whether the file is now shorter than what was read from it.
    fn truncated(&self) -> io::Result<bool> {
        Ok(self.file.metadata()?.len() < self.read)
    }

    fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.read = 0;
        self.lines.discard();
        self.recent.clear();
        Ok(())
    }

    /// Reads `copy`, positioned at this file's offset, to its end as if it were this file.
    fn drain_copy<F: FnMut(Line)>(
        &mut self,
        copy: File,
        deliver: &mut Deliver<'_, F>,
    ) -> io::Result<()> {
        let live = std::mem::replace(&mut self.file, copy);
        let drained = self.drain_all(deliver);
        self.file = live;
        drained
    }

    fn position(&self) -> FilePosition {
        let pending = u64::try_from(self.lines.pending()).unwrap_or(u64::MAX);
        FilePosition {
            dev: self.id.dev,
            ino: self.id.ino,
            offset: self.read.saturating_sub(pending),
        }
    }
}

/// A file the path no longer names, still read for a while.
struct Rotated {
    reader: Reader,
    since: Instant,
}

impl Rotated {
    /// Hands over a last line without newline: nothing more will be appended.
    fn finish<F: FnMut(Line)>(mut self, deliver: &mut Deliver<'_, F>) {
        self.reader.lines.finish(&mut |split| deliver.line(split));
    }
}

fn follow_file<F: FnMut(Line)>(
    name: &str,
    path: &Path,
    state: &Path,
    stop: &Stop,
    deliver: &mut Deliver<'_, F>,
) {
    let saved = position::load::<FilePosition>(state).unwrap_or_else(|e| {
        tracing::warn!(source = name, error = %error_chain(&e), "ignoring the saved position; starting at the end of the file");
        None
    });
    let (mut current, mut rotated) = resume(path, saved);
    if current.is_none() {
        tracing::info!(source = name, path = %path.display(), "waiting for the log file to appear");
    }
    let mut saver = Saver::new(state);
    let mut warned = false;
    loop {
        let mut more = false;
        let mut trouble = None;
        if let Some(old) = &mut rotated {
            match old.reader.drain(deliver) {
                Ok(m) => more |= m,
                Err(e) => trouble = Some(e),
            }
            if !more && old.since.elapsed() >= ROTATED_GRACE {
                if let Some(old) = rotated.take() {
                    old.finish(deliver);
                }
            }
        }
        if let Some(cur) = &mut current {
            let step = cur.truncated().and_then(|truncated| {
                if truncated {
                    Counters::bump(&deliver.counters.truncations);
                    tracing::debug!(source = name, "log file truncated; reading from its start");
                    if let Some(copy) = find_copy(path, cur) {
                        cur.drain_copy(copy, deliver)?;
                    }
                    cur.rewind()?;
                }
                cur.drain(deliver)
            });
            match step {
                Ok(m) => more |= m,
                Err(e) => trouble = Some(e),
            }
        }
        match switch(path, &mut current, &mut rotated, deliver) {
            Ok(switched) => more |= switched,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => trouble = Some(e),
        }
        match trouble {
            Some(e) if !warned => {
                tracing::warn!(source = name, path = %path.display(), error = %e, "cannot read the log file");
                warned = true;
            }
            Some(_) => {}
            None => warned = false,
        }
        if let Some(position) = position_of(&current, &rotated) {
            saver.save_soon(&position, name);
        }
        if more {
            if stop.is_stopped() {
                break;
            }
            continue;
        }
        if stop.wait(POLL) {
            break;
        }
    }
    if let Some(position) = position_of(&current, &rotated) {
        saver.save(&position, name);
    }
}

/// The position worth saving: the current file's, or while the path is missing the rotated
/// one's.
fn position_of(current: &Option<Reader>, rotated: &Option<Rotated>) -> Option<FilePosition> {
    current
        .as_ref()
        .or(rotated.as_ref().map(|r| &r.reader))
        .map(Reader::position)
}

/// Opens where the last run stopped; see the module's comment.
fn resume(path: &Path, saved: Option<FilePosition>) -> (Option<Reader>, Option<Rotated>) {
    let Some(saved) = saved else {
        return (Reader::open(path, None).ok(), None);
    };
    let saved_id = FileId {
        dev: saved.dev,
        ino: saved.ino,
    };
    let current = Reader::open(path, Some(0)).ok();
    if let Some(mut current) = current {
        if current.id == saved_id {
            let resumed = current
                .file
                .metadata()
                .map(|meta| meta.len() >= saved.offset)
                .unwrap_or(false);
            if resumed && current.file.seek(SeekFrom::Start(saved.offset)).is_ok() {
                current.read = saved.offset;
            }
            return (Some(current), None);
        }
        let rotated = find_sibling(path, saved_id, saved.offset);
        return (Some(current), rotated);
    }
    (None, find_sibling(path, saved_id, saved.offset))
}

/// The file in `path`'s directory with inode `id`, opened at `offset`.
fn find_sibling(path: &Path, id: FileId, offset: u64) -> Option<Rotated> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_file() && FileId::of(&meta) == id {
            let reader = Reader::open(&entry.path(), Some(offset)).ok()?;
            if reader.id != id {
                return None;
            }
            return Some(Rotated {
                reader,
                since: Instant::now(),
            });
        }
    }
    None
}

/// The copy `copytruncate` made of `reader`'s file before truncating it, opened at the offset
/// `reader` had read to: of the regular files beside it modified in the last [`COPY_AGE`],
/// at least that long and whose bytes before that offset are the ones `reader` read last, the
/// one modified last (an older copy can end the same way when a program logs the same line
/// over and over).
fn find_copy(path: &Path, reader: &Reader) -> Option<File> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let recent = u64::try_from(reader.recent.len()).ok()?;
    let at = reader.read.checked_sub(recent)?;
    if recent == 0 {
        return None;
    }
    let mut bytes = vec![0; reader.recent.len()];
    let mut best: Option<(SystemTime, File)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        let young = modified.elapsed().is_ok_and(|age| age < COPY_AGE);
        if !meta.is_file()
            || !young
            || FileId::of(&meta) == reader.id
            || meta.len() < reader.read
            || best.as_ref().is_some_and(|(newest, _)| *newest >= modified)
        {
            continue;
        }
        let Ok(mut file) = File::open(entry.path()) else {
            continue;
        };
        let same = file.seek(SeekFrom::Start(at)).is_ok()
            && file.read_exact(&mut bytes).is_ok()
            && bytes == reader.recent;
        if same {
            best = Some((modified, file));
        }
    }
    best.map(|(_, file)| file)
}

/// Moves to the file the path names when it is not the one open: the old one is read to its
/// end first and kept as the rotated file. True when it switched.
fn switch<F: FnMut(Line)>(
    path: &Path,
    current: &mut Option<Reader>,
    rotated: &mut Option<Rotated>,
    deliver: &mut Deliver<'_, F>,
) -> io::Result<bool> {
    let id = FileId::of(&fs::metadata(path)?);
    if current.as_ref().map(|c| c.id) == Some(id) {
        return Ok(false);
    }
    let new = Reader::open(path, Some(0))?;
    if current.as_ref().map(|c| c.id) == Some(new.id) {
        return Ok(false);
    }
    if let Some(mut old) = current.take() {
        let drained = old.drain_all(deliver);
        if let Some(previous) = rotated.take() {
            previous.finish(deliver);
        }
        Counters::bump(&deliver.counters.rotations);
        *rotated = Some(Rotated {
            reader: old,
            since: Instant::now(),
        });
        *current = Some(new);
        drained?;
    } else {
        *current = Some(new);
    }
    Ok(true)
}

/// Saves positions, at most every [`SAVE_EVERY`] unless told to save now, and warns once per
/// run of failures.
pub(crate) struct Saver<T> {
    path: PathBuf,
    saved: Option<T>,
    at: Option<Instant>,
    failing: bool,
}

impl<T: Serialize + PartialEq + Clone> Saver<T> {
    pub(crate) fn new(path: &Path) -> Saver<T> {
        Saver {
            path: path.to_path_buf(),
            saved: None,
            at: None,
            failing: false,
        }
    }

    /// Saves `position` if it changed and the last save is [`SAVE_EVERY`] old.
    pub(crate) fn save_soon(&mut self, position: &T, name: &str) {
        if self.at.is_some_and(|at| at.elapsed() < SAVE_EVERY) {
            return;
        }
        self.save(position, name);
    }

    /// Saves `position` if it changed.
    pub(crate) fn save(&mut self, position: &T, name: &str) {
        if self.saved.as_ref() == Some(position) {
            return;
        }
        self.at = Some(Instant::now());
        match position::save(&self.path, position) {
            Ok(()) => {
                self.saved = Some(position.clone());
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(source = name, error = %error_chain(&e), "cannot save the log position; a restart may read lines again");
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::mpsc::{self, Receiver};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(20);

    fn start(path: &Path, state: &Path) -> (Follower, Receiver<Line>) {
        let (tx, rx) = mpsc::channel();
        let follower = Follower::file(
            "test",
            path.to_path_buf(),
            state.to_path_buf(),
            move |line| {
                // The receiver is gone only when the test is over.
                let _ = tx.send(line);
            },
        )
        .unwrap_or_else(|e| panic!("start: {e}"));
        (follower, rx)
    }

    /// Waits until the follower has looked at the file once: it saves its first position then.
    fn wait_started(state: &Path) {
        let deadline = Instant::now() + DEADLINE;
        while !state.exists() {
            assert!(
                Instant::now() < deadline,
                "the follower never saved a position"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        file.write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    fn receive(rx: &Receiver<Line>, n: usize) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => got.push(line.text),
                Err(e) => panic!("after {} of {n} lines: {e}: {got:?}", got.len()),
            }
        }
        got
    }

    /// Nothing more arrives within a few poll intervals.
    fn assert_quiet(rx: &Receiver<Line>) {
        if let Ok(line) = rx.recv_timeout(POLL * 4) {
            panic!("unexpected line {:?}", line.text);
        }
    }

    fn numbered(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|n| format!("line {n}")).collect()
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    #[test]
    fn appends_partial_lines_and_odd_bytes() {
        let dir = dir();
        let path = dir.path().join("auth.log");
        let state = dir.path().join("auth.pos");
        append(&path, b"history, not replayed\n");
        let (follower, rx) = start(&path, &state);
        wait_started(&state);
        append(&path, b"first\nsec");
        assert_eq!(receive(&rx, 1), ["first"]);
        assert_quiet(&rx);
        append(&path, b"ond\r\nbad \xff byte\n");
        assert_eq!(receive(&rx, 2), ["second", "bad \u{fffd} byte"]);
        let mut long = vec![b'x'; lines::MAX_LINE + 100];
        long.extend_from_slice(b"\nafter\n");
        append(&path, &long);
        let got = receive(&rx, 2);
        assert_eq!(got[0].len(), lines::MAX_LINE);
        assert_eq!(got[1], "after");
        assert_eq!(follower.counters().totals().cut_lines, 1);
        assert_eq!(follower.counters().totals().lines, 5);
        follower.stop();
    }

    #[test]
    fn a_missing_file_is_read_from_its_start_when_it_appears() {
        let dir = dir();
        let path = dir.path().join("app.log");
        let state = dir.path().join("app.pos");
        let (follower, rx) = start(&path, &state);
        assert_quiet(&rx);
        append(&path, b"one\ntwo\n");
        assert_eq!(receive(&rx, 2), ["one", "two"]);
        follower.stop();
    }

    /// A writer appending numbered lines at a steady pace and rotating the file with
    /// `rotate` after every `every` lines.
    fn write_stream(path: &Path, total: u32, every: u32, mut rotate: impl FnMut(u32)) {
        let mut file: Option<File> = None;
        for n in 0..total {
            if n > 0 && n % every == 0 {
                file = None;
                rotate(n / every);
            }
            let out = file.get_or_insert_with(|| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open: {e}"))
            });
            out.write_all(format!("line {n}\n").as_bytes())
                .unwrap_or_else(|e| panic!("write: {e}"));
            if n % 20 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn rename_rotation_under_a_steady_writer() {
        let dir = dir();
        let path = dir.path().join("auth.log");
        let state = dir.path().join("auth.pos");
        append(&path, b"");
        let (follower, rx) = start(&path, &state);
        wait_started(&state);
        let writer = {
            let path = path.clone();
            thread::spawn(move || {
                write_stream(&path, 20_000, 3_500, |k| {
                    let rotated = path.with_extension(format!("log.{k}"));
                    fs::rename(&path, rotated).unwrap_or_else(|e| panic!("rename: {e}"));
                });
            })
        };
        let got = receive(&rx, 20_000);
        writer.join().unwrap_or_else(|_| panic!("writer panicked"));
        assert!(
            got == numbered(0..20_000),
            "lines lost, repeated or out of order"
        );
        assert_quiet(&rx);
        assert_eq!(follower.counters().totals().rotations, 5);
        follower.stop();
    }

    #[test]
    fn copytruncate_rotation_under_a_steady_writer() {
        let dir = dir();
        let path = dir.path().join("app.log");
        let state = dir.path().join("app.pos");
        append(&path, b"");
        let (follower, rx) = start(&path, &state);
        wait_started(&state);
        let writer = {
            let path = path.clone();
            thread::spawn(move || {
                write_stream(&path, 20_000, 3_500, |k| {
                    // The writer copies and truncates between two lines, so no line falls
                    // between copy and truncation (logrotate cannot promise that); the lines
                    // the follower had not read yet are only in the copy.
                    fs::copy(&path, path.with_extension(format!("log.{k}")))
                        .unwrap_or_else(|e| panic!("copy: {e}"));
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(0))
                        .unwrap_or_else(|e| panic!("truncate: {e}"));
                });
            })
        };
        let got = receive(&rx, 20_000);
        writer.join().unwrap_or_else(|_| panic!("writer panicked"));
        assert!(
            got == numbered(0..20_000),
            "lines lost, repeated or out of order"
        );
        assert_quiet(&rx);
        assert_eq!(follower.counters().totals().truncations, 5);
        follower.stop();
    }

    #[test]
    fn a_restart_resumes_where_the_last_run_stopped() {
        let dir = dir();
        let path = dir.path().join("auth.log");
        let state = dir.path().join("auth.pos");
        append(&path, b"");
        let (follower, rx) = start(&path, &state);
        wait_started(&state);
        append(&path, numbered(0..100).join("\n").as_bytes());
        append(&path, b"\nhalf");
        assert_eq!(receive(&rx, 100), numbered(0..100));
        follower.stop();

        // Written while the agent is down: the partial line's end and more lines.
        append(&path, b" and its end\n");
        append(&path, (numbered(100..200).join("\n") + "\n").as_bytes());
        let (follower, rx) = start(&path, &state);
        let mut expected = vec!["half and its end".to_owned()];
        expected.extend(numbered(100..200));
        assert_eq!(receive(&rx, 101), expected);
        assert_quiet(&rx);
        follower.stop();

        // Rotated while the agent is down: the rest of the old file, then the new one.
        append(&path, b"old tail\n");
        fs::rename(&path, dir.path().join("auth.log.1")).unwrap_or_else(|e| panic!("{e}"));
        append(&path, b"new head\n");
        let (follower, rx) = start(&path, &state);
        assert_eq!(receive(&rx, 2), ["old tail", "new head"]);
        assert_quiet(&rx);
        follower.stop();

        // Truncated while the agent is down: the new content from its start.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .unwrap_or_else(|e| panic!("truncate: {e}"));
        append(&path, b"x\n");
        let (follower, rx) = start(&path, &state);
        assert_eq!(receive(&rx, 1), ["x"]);
        assert_quiet(&rx);
        follower.stop();
    }
}
