//! The segments of a rotated audit log: `audit.jsonl` becomes `audit-000000012345.jsonl`, named
//! after the `seq` of its last record (the seal of the rotation), next to the live log. Twelve
//! digits keep the names in chain order when listed, and the newest segment is found from the
//! checkpoint alone, which is what lets the writer finish a rotation a crash interrupted.

use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags};

/// The segment of the log at `live` whose last record is `seq`.
pub fn segment_path(live: &Path, seq: u64) -> PathBuf {
    let (stem, ext) = parts(live);
    let name = match ext {
        Some(ext) => format!("{stem}-{seq:012}.{ext}"),
        None => format!("{stem}-{seq:012}"),
    };
    live.with_file_name(name)
}

/// The segments next to the log at `live`, oldest first.
pub fn segments(live: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(numbered(live)?.into_iter().map(|(_, path)| path).collect())
}

/// The segments next to the log at `live` with the `seq` their names give, oldest first.
pub(crate) fn numbered(live: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match live.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| segment_seq(live, n))
        {
            if entry.file_type()?.is_file() {
                found.push((seq, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The `seq` in `name` when it names a segment of the log at `live`.
fn segment_seq(live: &Path, name: &str) -> Option<u64> {
    let (stem, ext) = parts(live);
    let rest = name.strip_prefix(stem.as_str())?.strip_prefix('-')?;
    let digits = match ext {
        Some(ext) => rest.strip_suffix(ext.as_str())?.strip_suffix('.')?,
        None => rest,
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // One spelling per `seq`, the one `segment_path` writes: no second name for a segment.
    let seq: u64 = digits.parse().ok()?;
    (format!("{seq:012}") == digits).then_some(seq)
}

/// The live log's file name without and with its extension (`audit`, `jsonl`).
fn parts(live: &Path) -> (String, Option<String>) {
    let stem = live
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".to_owned());
    let ext = live.extension().map(|e| e.to_string_lossy().into_owned());
    (stem, ext)
}

/// Renames `from` to `to`, failing when `to` exists: a segment is never overwritten.
pub(crate) fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_named_after_their_last_record_and_listed_in_chain_order() {
        let live = Path::new("/var/log/crmguard/audit.jsonl");
        assert_eq!(
            segment_path(live, 12_345),
            Path::new("/var/log/crmguard/audit-000000012345.jsonl")
        );
        assert_eq!(
            segment_path(Path::new("log/trail"), 7),
            Path::new("log/trail-000000000007")
        );
        assert_eq!(segment_seq(live, "audit-000000012345.jsonl"), Some(12_345));
        assert_eq!(
            segment_seq(live, "audit-1234567890123.jsonl"),
            Some(1_234_567_890_123)
        );
        for other in [
            "audit.jsonl",
            "audit-0000000012345.jsonl",
            "audit-12345.jsonl",
            "audit-00000001234x.jsonl",
            "audit-000000012345.jsonl.gz",
            "other-000000012345.jsonl",
            ".audit-000000012345.jsonl.tmp.7",
        ] {
            assert_eq!(segment_seq(live, other), None, "{other}");
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("audit.jsonl");
        for name in [
            "audit-1000000000000.jsonl",
            "audit-000000000020.jsonl",
            "audit.jsonl",
            "audit-000000000003.jsonl",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        std::fs::create_dir(dir.path().join("audit-000000000009.jsonl")).expect("mkdir");
        let names: Vec<String> = segments(&live)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit-000000000003.jsonl",
                "audit-000000000020.jsonl",
                "audit-1000000000000.jsonl"
            ]
        );
    }

    #[test]
    fn a_rename_never_replaces_a_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"live").expect("write");
        std::fs::write(&b, b"segment").expect("write");
        let err = rename_new(&a, &b).expect_err("b exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).expect("read"), b"segment");
        std::fs::remove_file(&b).expect("remove");
        rename_new(&a, &b).expect("rename");
        assert_eq!(std::fs::read(&b).expect("read"), b"live");
        assert!(!a.exists());
    }
}
