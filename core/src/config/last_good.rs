//! The last configuration that loaded, compiled and was applied, kept in
//! `state_dir/last-good-policy.json` so that a configuration that cannot be loaded at start does
//! not leave the host unfiltered: the agent enforces this one instead.
//!
//! What is kept is the text of every file the configuration was read from (the configuration
//! file, its deny files and its peers file) under the paths it was read from, rather than a
//! compiled form. Replaying the texts through the same [`load_with`] gives back exactly the
//! [`Config`] that was applied, deny lists and peers included, so the fallback is the same
//! policy, VPN and ACL included, and not only the kernel's maps. The texts also let an operator
//! read, diff and restore what was last in force. A file absent when the configuration was
//! read (a peers file before the first peer) is absent when it is replayed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{load_with, Config, ConfigErrors, DEFAULT_POLICY_NAME, DEFAULT_POLICY_TOML};

/// The file name under `state_dir`.
pub const FILE_NAME: &str = "last-good-policy.json";

/// The version of the file's layout; a file of another version is not used.
const VERSION: u32 = 1;

/// The files a configuration was read from, with their texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    version: u32,
    /// When it was saved, RFC 3339; set by [`Snapshot::save`].
    #[serde(default)]
    saved_at: Option<String>,
    /// The configuration file.
    config: PathBuf,
    /// Every file read, by path, with its text.
    files: BTreeMap<PathBuf, String>,
}

/// Why a saved snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LastGoodError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a saved policy", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has version {found}, this agent reads version {VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode the policy to save")]
    Encode(#[source] serde_json::Error),
}

impl Snapshot {
    /// Loads the configuration file at `path` as [`super::load`] does, and records every file
    /// read on the way.
    pub fn load(path: &Path) -> Result<(Config, Snapshot), ConfigErrors> {
        let mut files = BTreeMap::new();
        let config = load_with(path, &mut |file: &Path| {
            let text = std::fs::read_to_string(file)?;
            files.insert(file.to_path_buf(), text.clone());
            Ok(text)
        })?;
        let snapshot = Snapshot {
            version: VERSION,
            saved_at: None,
            config: path.to_path_buf(),
            files,
        };
        Ok((config, snapshot))
    }

    /// The embedded default policy, as a snapshot.
    pub fn embedded() -> Snapshot {
        Snapshot {
            version: VERSION,
            saved_at: None,
            config: PathBuf::from(DEFAULT_POLICY_NAME),
            files: BTreeMap::from([(
                PathBuf::from(DEFAULT_POLICY_NAME),
                DEFAULT_POLICY_TOML.to_owned(),
            )]),
        }
    }

    /// The configuration file it was read from.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// When it was saved, if it was.
    pub fn saved_at(&self) -> Option<&str> {
        self.saved_at.as_deref()
    }

    /// The configuration again, read from the saved texts only.
    pub fn config(&self) -> Result<Config, ConfigErrors> {
        load_with(&self.config, &mut |file: &Path| {
            self.files
                .get(file)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        })
    }

    /// `state_dir/last-good-policy.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Saves it as `state_dir`'s last good policy, replacing the previous one atomically.
    pub fn save(&self, state_dir: &Path, now: SystemTime) -> Result<(), LastGoodError> {
        let path = Self::path(state_dir);
        let saved = Snapshot {
            saved_at: Some(crate::time::format_time(now)),
            ..self.clone()
        };
        let mut text = serde_json::to_string_pretty(&saved).map_err(LastGoodError::Encode)?;
        text.push('\n');
        crate::atomic_file::write(&path, text.as_bytes())
            .map_err(|source| LastGoodError::Write { path, source })
    }

    /// The last good policy saved in `state_dir`; `None` when none was ever saved.
    pub fn read(state_dir: &Path) -> Result<Option<Snapshot>, LastGoodError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LastGoodError::Read { path, source }),
        };
        let snapshot: Snapshot =
            serde_json::from_str(&text).map_err(|source| LastGoodError::Decode {
                path: path.clone(),
                source,
            })?;
        if snapshot.version != VERSION {
            return Err(LastGoodError::Version {
                path,
                found: snapshot.version,
            });
        }
        Ok(Some(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A configuration with a deny file and a peers file.
    fn setup(dir: &Path) -> PathBuf {
        write(dir, "deny.txt", "192.0.2.7\n# a comment\n198.51.100.0/24\n");
        write(
            dir,
            "peers.toml",
            "[[peer]]\nname = \"alice\"\npublic_key = \"gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=\"\naddress = \"10.77.0.2\"\nrole = \"staff\"\n",
        );
        write(
            dir,
            "crmguard.toml",
            "[firewall.deny]\nfiles = [\"deny.txt\"]\n\n[vpn]\naddress = \"10.77.0.1/24\"\npeers_file = \"peers.toml\"\n\n[[role]]\nname = \"staff\"\nallow = [\"tcp/443\"]\n",
        )
    }

    #[test]
    fn a_saved_policy_gives_back_the_same_config_without_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = setup(dir.path());
        let (config, snapshot) = Snapshot::load(&path).expect("load");
        assert_eq!(config.firewall.deny.len(), 2);
        assert_eq!(config.peers.len(), 1);
        let state = dir.path().join("state");
        snapshot.save(&state, SystemTime::UNIX_EPOCH).expect("save");
        // The files change, or go; the saved policy does not.
        for name in ["deny.txt", "peers.toml", "crmguard.toml"] {
            std::fs::remove_file(dir.path().join(name)).expect("remove");
        }
        let read = Snapshot::read(&state).expect("read").expect("saved");
        assert_eq!(read.saved_at(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(read.config_path(), path);
        assert_eq!(read.config().expect("replay"), config);
    }

    #[test]
    fn an_absent_peers_file_stays_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = setup(dir.path());
        std::fs::remove_file(dir.path().join("peers.toml")).expect("remove");
        let (config, snapshot) = Snapshot::load(&path).expect("load");
        assert!(config.peers.is_empty());
        assert_eq!(snapshot.config().expect("replay"), config);
    }

    #[test]
    fn the_embedded_snapshot_is_the_default_policy() {
        let snapshot = Snapshot::embedded();
        assert_eq!(
            snapshot.config().expect("replay"),
            crate::config::default_policy()
        );
    }

    #[test]
    fn a_bad_file_is_refused_as_it_is_by_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = setup(dir.path());
        write(dir.path(), "deny.txt", "192.0.2.7\nnot an address\n");
        let errors = Snapshot::load(&path).expect_err("refused");
        assert_eq!(errors, crate::config::load(&path).expect_err("refused"));
    }

    #[test]
    fn nothing_saved_or_something_unusable() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Snapshot::read(dir.path()).expect("read").is_none());
        let cases = [
            ("not JSON", "{\"version\": 1, \"conf"),
            ("not a snapshot", "{\"version\": 1}"),
            (
                "another version",
                "{\"version\": 99, \"config\": \"x\", \"files\": {}}",
            ),
        ];
        for (what, text) in cases {
            write(dir.path(), FILE_NAME, text);
            assert!(Snapshot::read(dir.path()).is_err(), "{what} was read");
        }
    }

    #[test]
    fn a_saved_file_that_no_longer_validates_is_refused_on_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = setup(dir.path());
        let (_, mut snapshot) = Snapshot::load(&path).expect("load");
        snapshot
            .files
            .insert(dir.path().join("deny.txt"), "bogus\n".to_owned());
        assert!(snapshot.config().is_err());
    }

    /// The plumbing of a configuration that does not load is kept when its own sections are
    /// valid, so that a fallback policy still finds its state, pins and control socket.
    #[test]
    fn plumbing_survives_errors_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = "[agent]\nstate_dir = \"/srv/state\"\n";
        let cases = [
            (
                "a bad deny file line",
                format!("{agent}[firewall.deny]\nfiles = [\"deny.txt\"]\n"),
                true,
            ),
            (
                "port 0",
                format!(
                    "{agent}[[firewall.service]]\nname = \"x\"\nproto = \"tcp\"\nports = [0]\n"
                ),
                true,
            ),
            (
                "a bad [agent] value",
                "[agent]\nmode = \"sometimes\"\n".to_owned(),
                false,
            ),
            ("a syntax error", format!("{agent}[firewall\n"), false),
            (
                "an unknown key",
                format!("{agent}[firewall]\nports = 1\n"),
                false,
            ),
        ];
        write(dir.path(), "deny.txt", "not an address\n");
        for (what, text, kept) in cases {
            let path = write(dir.path(), "crmguard.toml", &text);
            assert!(crate::config::load(&path).is_err(), "{what} loaded");
            let plumbing = crate::config::plumbing(&path);
            assert_eq!(plumbing.is_some(), kept, "{what}: {plumbing:?}");
            if let Some(p) = plumbing {
                assert_eq!(p.agent.state_dir, Path::new("/srv/state"), "{what}");
            }
        }
    }
}
