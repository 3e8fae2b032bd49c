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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp.{}", std::process::id()));
    Ok(dir.join(temp_name))
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
