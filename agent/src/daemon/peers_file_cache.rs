//! The peers file as the agent last parsed it, parsed again only when the file changes.
//!
//! The agent looks for inactive peers every few seconds and reads the peers file to do so. A
//! gateway with tens of thousands of devices has a peers file of megabytes, and parsing it on
//! every check kept a core busy while nothing had changed. The file is replaced whole by every
//! edit (a temporary file renamed over it), so its inode, size and modification time say
//! whether the copy in memory is still the file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crmguard_core::provision::{PeersFile, ProvisionError};

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// The last parsed version of one peers file.
#[derive(Debug, Default)]
pub(super) struct PeersFileCache {
    parsed: Option<(PathBuf, Option<Stamp>, PeersFile)>,
}

impl PeersFileCache {
    /// The peers file at `path` (empty when it does not exist), parsed again only when it
    /// changed since the last call.
    pub(super) fn load(&mut self, path: &Path) -> Result<&PeersFile, ProvisionError> {
        let stamp = match std::fs::metadata(path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ProvisionError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let fresh = matches!(&self.parsed, Some((p, s, _)) if p == path && *s == stamp);
        if !fresh {
            self.parsed = None;
            let file = PeersFile::load(path)?;
            self.parsed = Some((path.to_owned(), stamp, file));
        }
        match &self.parsed {
            Some((_, _, file)) => Ok(file),
            None => Err(ProvisionError::Read {
                path: path.to_owned(),
                source: std::io::Error::other("the peers file was not kept"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, last: u8) -> String {
        format!(
            "[[peer]]\nname = \"{name}\"\npublic_key = \"{}\"\naddress = \"10.77.0.{last}\"\nrole = \"staff\"\n",
            crmguard_core::keys::encode(&[last; 32])
        )
    }

    fn names(file: &PeersFile) -> Vec<String> {
        file.peers().iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn parses_again_only_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peers.toml");
        let mut cache = PeersFileCache::default();
        assert!(cache.load(&path).expect("absent").peers().is_empty());

        std::fs::write(&path, peer("alice", 2)).expect("write");
        assert_eq!(names(cache.load(&path).expect("alice")), ["alice"]);

        // Unchanged: the copy in memory, even though the text on disk is now unreadable as a
        // peers file (which only a change behind the stamp's back could make happen).
        let same = std::fs::metadata(&path).expect("meta");
        std::fs::write(&path, "x".repeat(peer("alice", 2).len())).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_modified(same.modified().expect("mtime"))
            .expect("set mtime");
        assert_eq!(names(cache.load(&path).expect("cached")), ["alice"]);

        // Replaced as every edit replaces it: parsed again.
        let tmp = dir.path().join("peers.toml.tmp");
        std::fs::write(&tmp, format!("{}\n{}", peer("alice", 2), peer("bob", 3))).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert_eq!(names(cache.load(&path).expect("both")), ["alice", "bob"]);

        std::fs::remove_file(&path).expect("remove");
        assert!(cache.load(&path).expect("gone").peers().is_empty());
    }
}
