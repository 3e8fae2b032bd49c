//! Where things are: the workspace root, cargo's target directory, the built binaries and the
//! package versions, read once from `cargo metadata`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd;

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    metadata: Value,
}

impl Workspace {
    pub fn load() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the lab crate's manifest directory has no parent")?
            .to_path_buf();
        let text =
            cmd::stdout_of(cargo(&root).args(["metadata", "--format-version", "1", "--no-deps"]))?;
        let metadata: Value =
            serde_json::from_str(&text).context("cannot parse `cargo metadata` output")?;
        let Some(target_dir) = metadata["target_directory"].as_str() else {
            bail!("`cargo metadata` names no target_directory");
        };
        Ok(Self {
            target_dir: PathBuf::from(target_dir),
            root,
            metadata,
        })
    }

    /// A `cargo` command that runs in the workspace root.
    pub fn cargo(&self) -> Command {
        cargo(&self.root)
    }

    /// The path of binary `name` built with `profile` ("debug" or "release").
    pub fn bin(&self, profile: &str, name: &str) -> PathBuf {
        self.target_dir.join(profile).join(name)
    }

    /// The version of workspace package `name`.
    pub fn version(&self, name: &str) -> Result<String> {
        let packages = self.metadata["packages"].as_array();
        let version = packages
            .into_iter()
            .flatten()
            .find(|package| package["name"] == name)
            .and_then(|package| package["version"].as_str());
        match version {
            Some(version) => Ok(version.to_owned()),
            None => bail!("package `{name}` is not in the workspace"),
        }
    }
}

/// Cargo as chosen by the `cargo xtask` invocation (`$CARGO`), else the one on PATH.
fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    cmd
}
