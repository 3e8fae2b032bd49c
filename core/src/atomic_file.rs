//! Replacing a file so that a crash or a failed write never leaves half of
//! it: the bytes go to a temporary file in the same directory (mode 0600,
//! not through a symbolic link), which is flushed to disk and renamed over
//! the target, and then the directory itself is flushed. Missing parent
//! directories are created with mode 0700. No temporary file is left
//! behind, also when writing fails.
//!
//! This module is the one place state files are written whole: [`write`]
//! replaces a file, [`create_new`] creates one that must never be replaced
//! (a key), and [`sync_dir`] flushes the directory entry of a file opened
//! in place (the audit log).
//!
//! A file or directory made in a directory of another user takes that user and group
//! ([`give_to_directory_owner`]): the agent runs as user crmguard, and a `crmguard` command run
//! by root that writes into the agent's state (an MFA enrolment, a peer) must leave files the
//! agent can read and replace.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces the file at `path` with `bytes`.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temp_path(path)?;
    let result = write_synced(&temp, bytes)
        .and_then(|()| fs::rename(&temp, path))
        .and_then(|()| sync_dir(path));
    if result.is_err() {
        // The rename may not have happened; a leftover would be picked up by nobody.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates the file at `path` with `bytes` unless it exists, and tells whether it did. The
/// file appears whole or not at all (a flushed temporary file is linked into place), and when
/// two processes race, exactly one file wins and neither is replaced: the loser finds the
/// winner's.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let temp = temp_path(path)?;
    let result = write_synced(&temp, bytes).and_then(|()| match fs::hard_link(&temp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    });
    let _ = fs::remove_file(&temp);
    let created = result?;
    sync_dir(path)?;
    Ok(created)
}

/// Moves a state file that cannot be read out of the way, to `PATH.unreadable-UNIXSECONDS`
/// beside it, and returns where it went: the agent then starts that state afresh, and what the
/// file held stays for the operator instead of being overwritten at the next save.
pub fn keep_aside(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".unreadable-{}", crate::time::unix_now()));
    let aside = PathBuf::from(name);
    fs::rename(path, &aside)?;
    sync_dir(path)?;
    Ok(aside)
}

/// [`keep_aside`] for a log line: where the file went, or why it could not be moved.
pub fn keep_aside_noted(path: &Path) -> String {
    keep_aside(path).map_or_else(
        |e| format!("not kept aside: {e}"),
        |aside| aside.display().to_string(),
    )
}

/// Flushes the directory that holds `path`, so that a file created or renamed there survives
/// a crash.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `.NAME.tmp.PID` next to `path`, creating the directory (mode 0700) when missing.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    if !dir.exists() {
        create_dirs(dir)?;
    }
    // Unique per process and per call: two threads of one process writing the same file
    // must not share a temporary file either.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp.{}.{call}", std::process::id()));
    Ok(dir.join(temp_name))
}

/// Creates `dir` and its missing parents, mode 0700, each owned like the directory it is made
/// in.
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut existing = dir;
    while !existing.exists() {
        missing.push(existing);
        match existing.parent() {
            Some(up) if !up.as_os_str().is_empty() => existing = up,
            _ => break,
        }
    }
    for made in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(made) {
            Ok(()) => {}
            // Made meanwhile by someone else: theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        give_to_directory_owner(&File::open(made)?, made)?;
    }
    Ok(())
}

/// Gives `file` (just created at `path`) the user and group of the directory that holds it,
/// when they differ from its own. Only root can; anyone else gets `EPERM`, which is ignored:
/// their files stay theirs.
pub fn give_to_directory_owner(file: &File, path: &Path) -> io::Result<()> {
    let dir = fs::metadata(parent(path))?;
    let own = file.metadata()?;
    if (own.uid(), own.gid()) == (dir.uid(), dir.gid()) {
        return Ok(());
    }
    match std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid())) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => other,
    }
}

/// Writes `bytes` to a fresh file at `path` and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    give_to_directory_owner(&file, path)?;
    // The mode of `open` applies only when it creates the file; a temporary
    // file left by a crash keeps its own.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_kept_aside_keeps_its_bytes_beside_the_old_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessions.json");
        fs::write(&path, b"{ torn").expect("write");
        let aside = keep_aside(&path).expect("kept aside");
        assert!(!path.exists());
        assert_eq!(aside.parent(), path.parent());
        let name = aside
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("sessions.json.unreadable-"), "{name}");
        assert_eq!(fs::read(&aside).expect("read"), b"{ torn");
    }

    #[test]
    fn replaces_whole_with_0600_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.json");
        write(&path, b"first").expect("write");
        write(&path, b"second").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().expect("parent"))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let entries: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read_dir")
            .collect();
        assert_eq!(entries.len(), 1, "only the file itself");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write(&path, b"kept").expect("write");
        // A directory where the file's name should go: the rename fails.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).expect("mkdir");
        fs::write(blocked.join("x"), b"x").expect("write");
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).expect("read"), b"kept");
        let leftovers = fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .count();
        assert_eq!(leftovers, 0);
    }
}
