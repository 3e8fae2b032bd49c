//! What a backup holds and where each file goes back.
//!
//! An archive holds the files that make this gateway what it is, each under a name that says
//! what it is rather than where it was, so that a restore puts it where the restored
//! configuration says:
//!
//! | name | what | restored to |
//! | --- | --- | --- |
//! | `config` | the configuration file | the `--config` path of `backup restore` |
//! | `deny/N` | the N-th of `[firewall.deny] files` | the N-th of the restored list |
//! | `peers` | `[vpn] peers_file` | the restored `peers_file` |
//! | `tests/N` | the N-th of `[tests] files` | the N-th of the restored list |
//! | `keys/wireguard` | `[vpn] private_key_file` | the restored `private_key_file` |
//! | `keys/audit` | `[audit] key_file` | the restored `key_file` |
//! | `state/PATH` | every regular file under `[agent] state_dir` | the restored `state_dir` |
//!
//! The state directory holds the bans (`bans.json`), detection history
//! (`detection-history.json`), MFA secrets and sessions (`mfa/`), the audit checkpoint
//! (`audit.checkpoint`), peer enable times, remembered endpoints and the last good policy. Left
//! out are the backup signing key and drill identity (see `keys`), hidden files (temporary
//! files of atomic writes) and anything that is not a regular file, such as sockets. Files that
//! do not exist (a peers file before the first `peer add`) are simply not in the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use crmguard_core::config::Config;

use super::keys::{DRILL_IDENTITY_FILE, SIGNING_KEY_FILE};
use super::manifest::FileData;

/// The configuration file's name in an archive.
pub const CONFIG: &str = "config";
/// How deep the state directory is walked.
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the archive holds `{0}`, which the restored configuration has no place for")]
    NoPlace(String),
    #[error("the archive holds `{0}`, which is not a name crmguard writes")]
    BadName(String),
    #[error(
        "the archive's configuration puts `{name}` at {path}, which is not an absolute path \
         without `.` or `..`: nothing is restored"
    )]
    UnsafeTarget { name: String, path: PathBuf },
}

/// Reads the files of a backup of the gateway configured by `config` (read from
/// `config_file`, or the embedded default when `None`).
pub fn gather(
    config: &Config,
    config_file: Option<&Path>,
) -> Result<BTreeMap<String, FileData>, ContentsError> {
    let mut files = BTreeMap::new();
    if let Some(path) = config_file {
        files.insert(CONFIG.to_owned(), read(path)?);
    }
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for (i, path) in config.firewall.deny_files.iter().enumerate() {
        named.push((format!("deny/{i}"), path.clone()));
    }
    for (i, path) in config.test_files.iter().enumerate() {
        named.push((format!("tests/{i}"), path.clone()));
    }
    if let Some(vpn) = &config.vpn {
        named.push(("peers".to_owned(), vpn.peers_file.clone()));
        named.push(("keys/wireguard".to_owned(), vpn.private_key_file.clone()));
    }
    named.push(("keys/audit".to_owned(), config.audit.key_file.clone()));
    let mut taken: BTreeSet<PathBuf> = config_file.map(Path::to_owned).into_iter().collect();
    for (name, path) in named {
        if let Some(data) = read_if_present(&path)? {
            taken.insert(path);
            files.insert(name, data);
        }
    }
    let state_dir = &config.agent.state_dir;
    let mut state = Vec::new();
    walk(state_dir, state_dir, 0, &mut state)?;
    for path in state {
        if taken.contains(&path) || path.starts_with(&config.backup.dir) {
            continue;
        }
        let Ok(relative) = path.strip_prefix(state_dir) else {
            continue;
        };
        if relative == Path::new(SIGNING_KEY_FILE) || relative == Path::new(DRILL_IDENTITY_FILE) {
            continue;
        }
        let Some(relative) = relative.to_str() else {
            continue;
        };
        if let Some(data) = read_if_present(&path)? {
            files.insert(format!("state/{relative}"), data);
        }
    }
    Ok(files)
}

fn read(path: &Path) -> Result<FileData, ContentsError> {
    read_if_present(path)?.ok_or_else(|| ContentsError::Read {
        path: path.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

fn read_if_present(path: &Path) -> Result<Option<FileData>, ContentsError> {
    let error = |source| ContentsError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e)),
    };
    let mode = std::fs::metadata(path).map_err(error)?.permissions().mode() & 0o7777;
    Ok(Some(FileData {
        original: path.display().to_string(),
        mode,
        bytes,
    }))
}

/// The regular files under `dir`, not hidden ones, sorted.
fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> Result<(), ContentsError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return Ok(()),
        Err(source) => {
            return Err(ContentsError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut paths: Vec<(PathBuf, std::fs::FileType)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ContentsError::Read {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|source| ContentsError::Read {
            path: entry.path(),
            source,
        })?;
        paths.push((entry.path(), kind));
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in paths {
        if kind.is_dir() {
            walk(root, &path, depth + 1, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Where the file `name` of an archive is restored, for the restored `config` read from
/// `config_file`.
///
/// A restore runs as root and the configuration it follows is the archive's: a place that
/// climbs out with `..` (`key_file = "../../../etc/cron.d/x"`), or is not absolute, is refused,
/// also in `backup verify`'s drill, which writes the same places under a scratch directory.
pub fn target(name: &str, config: &Config, config_file: &Path) -> Result<PathBuf, ContentsError> {
    let path = place(name, config, config_file)?;
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(ContentsError::UnsafeTarget {
            name: name.to_owned(),
            path,
        })
    }
}

fn place(name: &str, config: &Config, config_file: &Path) -> Result<PathBuf, ContentsError> {
    let no_place = || ContentsError::NoPlace(name.to_owned());
    let indexed = |list: &[PathBuf], index: &str| {
        index
            .parse::<usize>()
            .ok()
            .and_then(|i| list.get(i).cloned())
            .ok_or_else(no_place)
    };
    if name == CONFIG {
        return Ok(config_file.to_owned());
    }
    if let Some(index) = name.strip_prefix("deny/") {
        return indexed(&config.firewall.deny_files, index);
    }
    if let Some(index) = name.strip_prefix("tests/") {
        return indexed(&config.test_files, index);
    }
    if let Some(relative) = name.strip_prefix("state/") {
        let relative = Path::new(relative);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() {
            return Err(ContentsError::BadName(name.to_owned()));
        }
        return Ok(config.agent.state_dir.join(relative));
    }
    match name {
        "peers" => config
            .vpn
            .as_ref()
            .map(|v| v.peers_file.clone())
            .ok_or_else(no_place),
        "keys/wireguard" => config
            .vpn
            .as_ref()
            .map(|v| v.private_key_file.clone())
            .ok_or_else(no_place),
        "keys/audit" => Ok(config.audit.key_file.clone()),
        _ => Err(ContentsError::BadName(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> (Config, PathBuf) {
        let path = dir.join("crmguard.toml");
        let text = format!(
            "[agent]\nstate_dir = \"{d}/state\"\n[firewall.deny]\nfiles = [\"deny.txt\"]\n\
             [vpn]\naddress = \"10.77.0.1/24\"\nprivate_key_file = \"{d}/wg.key\"\n\
             peers_file = \"{d}/state/peers.toml\"\n[audit]\nkey_file = \"{d}/audit.key\"\n\
             [backup]\ndir = \"{d}/state/backups\"\n",
            d = dir.display()
        );
        std::fs::write(&path, text).expect("config");
        std::fs::write(dir.join("deny.txt"), "203.0.113.0/24\n").expect("deny");
        (crmguard_core::config::load(&path).expect("loads"), path)
    }

    #[test]
    fn gathers_named_files_and_the_state_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, path) = config(dir.path());
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("mfa")).expect("mfa");
        std::fs::create_dir_all(state.join("backups")).expect("backups");
        for (file, text) in [
            ("state/bans.json", "{}"),
            ("state/mfa/alice.secret", "MZXW6"),
            ("state/peers.toml", ""),
            ("state/.bans.json.tmp.1", "half"),
            ("state/backup-signing.key", "k"),
            ("state/backups/old.age", "x"),
            ("wg.key", "key"),
            ("audit.key", "key"),
        ] {
            std::fs::write(dir.path().join(file), text).expect("written");
        }
        let files = gather(&config, Some(&path)).expect("gathered");
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "config",
                "deny/0",
                "keys/audit",
                "keys/wireguard",
                "peers",
                "state/bans.json",
                "state/mfa/alice.secret"
            ]
        );
        for name in names {
            let target = target(name, &config, &path).expect("has a place");
            assert_eq!(files[name].original, target.display().to_string());
        }
    }

    #[test]
    fn names_outside_the_state_directory_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, path) = config(dir.path());
        for name in [
            "state/../etc/shadow",
            "state//etc/shadow",
            "state/",
            "other",
            "deny/7",
        ] {
            assert!(target(name, &config, &path).is_err(), "{name}");
        }
    }
}
