//! The BPF filesystem that holds crmguard's pinned maps and links.
//!
//! Pins are what keep the filter enforcing when the agent is gone, so the
//! directory must be on a real bpffs. When no bpffs is mounted on the way to
//! `bpffs_dir`, one is mounted at `/sys/fs/bpf` (where every tool looks for
//! it) or, for a directory elsewhere, at the directory itself.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount bpffs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

const SYS_FS_BPF: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpffs, mounting one when needed.
pub fn ensure(dir: &Path) -> Result<(), BpffsError> {
    if !on_bpffs(dir) {
        let mount_point = if dir.starts_with(SYS_FS_BPF) {
            Path::new(SYS_FS_BPF)
        } else {
            dir
        };
        create_dir(mount_point)?;
        mount(
            Some("bpffs"),
            mount_point,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| BpffsError::Mount {
            path: mount_point.to_owned(),
            source,
        })?;
        tracing::info!(path = %mount_point.display(), "mounted bpffs");
    }
    create_dir(dir)
}

/// Whether the nearest existing ancestor of `dir` is on a bpffs.
fn on_bpffs(dir: &Path) -> bool {
    dir.ancestors().find(|p| p.exists()).is_some_and(is_bpffs)
}

fn create_dir(path: &Path) -> Result<(), BpffsError> {
    std::fs::create_dir_all(path).map_err(|source| BpffsError::Create {
        path: path.to_owned(),
        source,
    })
}
