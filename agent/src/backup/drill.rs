//! The restore drill: an archive restored into a scratch directory, its configuration checked
//! as `crmguard check` would, and every restored file's sum compared with the manifest. A
//! backup nobody has restored is a hope; the agent drills each archive it writes.

use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::{manifest, open_verified, plan, under, write, BackupError, Unsealing, Verified};

/// What a drill found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drill {
    /// The files restored and compared.
    pub files: usize,
    /// Whether the archive held a configuration file, which was then checked.
    pub config_checked: bool,
}

/// Restores the archive at `archive` into a scratch directory, as if its configuration were at
/// `config_file`, and checks it. The scratch directory is removed afterwards.
pub fn run(
    archive: &Path,
    unsealing: &Unsealing,
    signer: &VerifyingKey,
    config_file: &Path,
) -> Result<Drill, BackupError> {
    run_verified(&open_verified(archive, unsealing, signer)?, config_file)
}

/// [`run`] for an archive already opened and checked.
pub fn run_verified(verified: &Verified, config_file: &Path) -> Result<Drill, BackupError> {
    let scratch = tempfile::Builder::new()
        .prefix("crmguard-drill")
        .tempdir()
        .map_err(|source| BackupError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
    let plan = plan(verified, config_file, scratch.path())?;
    write(&plan, scratch.path())?;
    for planned in &plan.writes {
        let path = under(scratch.path(), &planned.target);
        let bytes = std::fs::read(&path).map_err(|source| BackupError::Read {
            path: path.clone(),
            source,
        })?;
        let expected = verified
            .manifest
            .files
            .iter()
            .find(|entry| entry.name == planned.name)
            .map(|entry| entry.sha256.as_str());
        if expected != Some(manifest::sha256_hex(&bytes).as_str()) {
            return Err(BackupError::DrillSum {
                name: planned.name.clone(),
                path,
            });
        }
        if planned.name == "keys/wireguard" {
            let text = String::from_utf8_lossy(&bytes);
            if crmguard_core::keys::decode(&text).is_none() {
                return Err(BackupError::Check(format!(
                    "{}: the restored WireGuard private key is not a key",
                    planned.target.display()
                )));
            }
        }
    }
    Ok(Drill {
        files: plan.writes.len(),
        config_checked: verified.files.contains_key(super::contents::CONFIG),
    })
}
