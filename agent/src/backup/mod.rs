//! Backups of the gateway's own state: `crmguard backup create|verify|restore` and the
//! agent's scheduled backups (CONTRACT.md section 2).
//!
//! An archive is a tar of a signed manifest and the files (`contents` says which, and where each
//! goes back), encrypted with age (`archive`). The manifest lists the SHA-256 of every file and
//! is signed with the host's Ed25519 backup signing key (`manifest`, `keys`). Verifying and
//! restoring decrypt, check the signature against the expected signer, then every sum, and only
//! then believe a byte. A restore first validates the restored configuration as `crmguard
//! check` would, and writes nothing when it does not validate; the restore drill (`drill`) does
//! the same into a scratch directory. The agent's schedule is in `schedule`.
//!
//! This module never runs while the agent reads the same files: a restore refuses to write
//! while an agent answers on the restored configuration's control socket.

pub mod archive;
pub mod contents;
pub mod drill;
pub mod keys;
pub mod manifest;
pub mod schedule;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crmguard_core::config::{self, BackupEncryption, Config, ConfigErrors};
use crmguard_core::{atomic_file, exit};
use ed25519_dalek::VerifyingKey;

pub use archive::{ArchiveError, Sealing, Unsealing};
pub use contents::ContentsError;
pub use keys::KeyError;
pub use manifest::{Manifest, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no [backup] recipient or passphrase_file is configured: archives are only written encrypted")]
    NotConfigured,
    #[error("no way to decrypt the archive: give --identity FILE or --passphrase-file FILE")]
    NoUnsealing,
    #[error("this host has no backup signing key ({0}): give the archive's signer with --signer PUBKEY, as `backup create` printed it")]
    NoSigner(PathBuf),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Contents(#[from] ContentsError),
    #[error("the archive's configuration does not validate:\n{0}")]
    Config(ConfigErrors),
    #[error("the archive's configuration does not pass `crmguard check`:\n{0}")]
    Check(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an agent is running (it answers on {0}): stop it (systemctl stop crmguard), restore, then start it again")]
    AgentRunning(PathBuf),
    #[error("the restore drill found {name} restored as {path} with another SHA-256 than the manifest's")]
    DrillSum { name: String, path: PathBuf },
}

impl BackupError {
    /// The exit code of the command that failed with this error (CONTRACT.md section 2).
    pub fn exit_code(&self) -> u8 {
        match self {
            BackupError::NotConfigured
            | BackupError::NoUnsealing
            | BackupError::NoSigner(_)
            | BackupError::Config(_)
            | BackupError::Check(_)
            | BackupError::Key(
                KeyError::Recipient(_)
                | KeyError::Signer(_)
                | KeyError::MalformedIdentity { .. }
                | KeyError::NoIdentity { .. }
                | KeyError::EmptyPassphrase { .. },
            ) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// How archives of `config` are encrypted: to its recipient and, when given, the host's drill
/// identity, or to its passphrase.
pub fn sealing(
    config: &Config,
    drill: Option<&age::x25519::Identity>,
) -> Result<Sealing, BackupError> {
    match &config.backup.encryption {
        None => Err(BackupError::NotConfigured),
        Some(BackupEncryption::Recipient(text)) => {
            let mut recipients = vec![keys::parse_recipient(text)?];
            recipients.extend(drill.map(age::x25519::Identity::to_public));
            Ok(Sealing::Recipients(recipients))
        }
        Some(BackupEncryption::PassphraseFile(path)) => {
            Ok(Sealing::Passphrase(keys::read_passphrase_file(path)?))
        }
    }
}

/// How this host opens its own archives without the operator's identity: with the configured
/// passphrase, or with its drill identity; `None` when it has neither.
pub fn local_unsealing(config: &Config) -> Result<Option<Unsealing>, BackupError> {
    match &config.backup.encryption {
        Some(BackupEncryption::PassphraseFile(path)) => Ok(Some(Unsealing::Passphrase(
            keys::read_passphrase_file(path)?,
        ))),
        _ => {
            let path = config.agent.state_dir.join(keys::DRILL_IDENTITY_FILE);
            if !path.exists() {
                return Ok(None);
            }
            Ok(Some(Unsealing::Identities(keys::read_identity_file(
                &path,
            )?)))
        }
    }
}

/// The signer an archive must have: `--signer` when given, else this host's signing key.
pub fn expected_signer(
    signer: Option<&str>,
    state_dir: Option<&Path>,
) -> Result<VerifyingKey, BackupError> {
    if let Some(text) = signer {
        return Ok(keys::parse_signer(text)?);
    }
    let Some(state_dir) = state_dir else {
        return Err(BackupError::NoSigner(keys::signing_key_path(Path::new(
            "/var/lib/crmguard",
        ))));
    };
    match keys::load_signing_key(state_dir)? {
        Some(key) => Ok(key.verifying_key()),
        None => Err(BackupError::NoSigner(keys::signing_key_path(state_dir))),
    }
}

/// An archive written by [`create`].
#[derive(Debug)]
pub struct Created {
    /// The signer's public key, as `--signer` takes it.
    pub signer: String,
    /// Whether the signing key was created for this archive.
    pub new_signing_key: bool,
    /// The manifest.
    pub manifest: Manifest,
    /// The archive's size in bytes.
    pub size: usize,
}

impl Created {
    /// The `backup_created` audit record of this archive, written to `file` by `actor`.
    pub fn event(&self, actor: &str, file: &Path) -> crmguard_core::audit::Event {
        backup_created(
            actor,
            &file.display().to_string(),
            self.manifest.files.len(),
            self.size,
            &self.signer,
        )
    }
}

/// The `backup_created` audit record of an archive at `file` of `files` files and `size`
/// bytes, signed by `signer`, written by `actor`.
pub fn backup_created(
    actor: &str,
    file: &str,
    files: usize,
    size: usize,
    signer: &str,
) -> crmguard_core::audit::Event {
    use crmguard_core::audit::{Event, EventType, Outcome};
    Event::new(EventType::BackupCreated, Outcome::Success, actor)
        .with_detail("file", file)
        .with_detail("files", files)
        .with_detail("size", size)
        .with_detail("signer", signer)
}

/// Writes an archive of the gateway configured by `config` (read from `config_file`, `None`
/// for the embedded default) to `out`, atomically and with mode 0600.
pub fn create(
    config: &Config,
    config_file: Option<&Path>,
    sealing: &Sealing,
    out: &Path,
    now: SystemTime,
) -> Result<Created, BackupError> {
    let (key, new_signing_key) = keys::load_or_create_signing_key(&config.agent.state_dir)?;
    let files = contents::gather(config, config_file)?;
    let manifest = Manifest::new(rfc3339(now), &key.verifying_key(), &files);
    let manifest_bytes = manifest.to_bytes();
    let signature = manifest::sign(&manifest_bytes, &key);
    let archive = archive::seal(&manifest_bytes, &signature, &files, sealing)?;
    atomic_file::write(out, &archive).map_err(|source| BackupError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(Created {
        signer: manifest.signer.clone(),
        new_signing_key,
        manifest,
        size: archive.len(),
    })
}

/// An archive whose signature and sums were checked.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    /// The files by name, each matching its sum.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads, decrypts and checks the archive at `path`.
pub fn open_verified(
    path: &Path,
    unsealing: &Unsealing,
    signer: &VerifyingKey,
) -> Result<Verified, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let opened = archive::open(&bytes, unsealing)?;
    let manifest = manifest::verify(&opened.manifest, &opened.signature, &opened.files, signer)?;
    Ok(Verified {
        manifest,
        files: opened.files,
    })
}

/// One file a restore writes.
#[derive(Debug)]
pub struct PlannedWrite {
    /// Its name in the archive.
    pub name: String,
    /// Where it goes.
    pub target: PathBuf,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// What a restore writes, for the restored configuration.
#[derive(Debug)]
pub struct Plan {
    /// The restored configuration, validated with the restored files.
    pub config: Config,
    /// The files, in name order.
    pub writes: Vec<PlannedWrite>,
}

/// Plans the restore of `verified` with its configuration at `config_file`. The restored
/// configuration is validated as `crmguard check` does, reading the restored files through
/// `root` (the files are read from `root` joined with their absolute path; `/` for the host).
pub fn plan(verified: &Verified, config_file: &Path, root: &Path) -> Result<Plan, BackupError> {
    let config = match verified.files.get(contents::CONFIG) {
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            config::parse(&text, config_file).map_err(BackupError::Config)?
        }
        None => config::default_policy(),
    };
    let mut writes = Vec::new();
    for entry in &verified.manifest.files {
        let Some(bytes) = verified.files.get(&entry.name) else {
            return Err(ManifestError::Missing(entry.name.clone()).into());
        };
        writes.push(PlannedWrite {
            name: entry.name.clone(),
            target: contents::target(&entry.name, &config, config_file)?,
            // Read and write bits only: no archive makes an executable, setuid or setgid file.
            mode: entry.mode & 0o666,
            bytes: bytes.clone(),
        });
    }
    let config = if verified.files.contains_key(contents::CONFIG) {
        check(config_file, &writes, root)?
    } else {
        config
    };
    Ok(Plan { config, writes })
}

/// `crmguard check` on the restored configuration: it loads (with its deny, peers and test
/// files as restored), compiles, and its policy tests pass. Files the archive does not hold
/// are read from `root`.
fn check(config_file: &Path, writes: &[PlannedWrite], root: &Path) -> Result<Config, BackupError> {
    let planned: BTreeMap<&Path, &[u8]> = writes
        .iter()
        .map(|w| (w.target.as_path(), w.bytes.as_slice()))
        .collect();
    let mut read = |path: &Path| match planned.get(path) {
        Some(bytes) => String::from_utf8(bytes.to_vec())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        None => std::fs::read_to_string(under(root, path)),
    };
    let config = config::load_with(config_file, &mut read).map_err(BackupError::Config)?;
    let policy =
        crmguard_core::policy::compile(&config).map_err(|e| BackupError::Check(e.to_string()))?;
    let failures = crmguard_core::explain::check::run(&config, &policy);
    if !failures.is_empty() {
        let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
        return Err(BackupError::Check(lines.join("\n")));
    }
    Ok(config)
}

/// `path` (absolute) under `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether an agent answers on `socket`.
pub fn agent_running(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Writes the planned files under `root` (`/` for the host), each atomically, with its mode.
/// A file that replaces one keeps that one's owner and group: the package makes the keys in
/// `/etc/crmguard` (a root directory) the agent's, and a restored key owned by root would be
/// one the agent cannot read. A new file gets its directory's, as every state file does.
pub fn write(plan: &Plan, root: &Path) -> Result<(), BackupError> {
    for write in &plan.writes {
        let path = under(root, &write.target);
        let error = |source| BackupError::Write {
            path: path.clone(),
            source,
        };
        let owner = std::fs::symlink_metadata(&path)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| (m.uid(), m.gid()));
        atomic_file::write(&path, &write.bytes).map_err(error)?;
        if let Some((uid, gid)) = owner {
            match std::os::unix::fs::lchown(&path, Some(uid), Some(gid)) {
                // Only root may give a file away; anyone else restores files as their own.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                other => other.map_err(error)?,
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(write.mode))
            .map_err(error)?;
    }
    Ok(())
}

/// `time` as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests;
