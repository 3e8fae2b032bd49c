//! The mode of every file and directory in the package, decided by its path alone.
//!
//! dpkg-deb packs modes as it finds them on disk, and the staging tree is created under whatever
//! umask the packager has: 077 on a hardened host gives a 0700 DEBIAN/ that dpkg-deb refuses,
//! and data files nobody but root can read. So after staging, every entry gets the mode this
//! table gives it, whatever it was created with.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// What a path in the staging tree is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Paths (relative to the staging root) whose mode is not the default of their kind.
///
/// The configuration directory and file are readable by root and group only: the
/// configuration names the admin networks and the key files. The state directory holds peers
/// and MFA secrets, the log directory the audit log; postinst sets the same modes on upgrades.
const EXCEPTIONS: &[(&str, u32)] = &[
    ("usr/sbin/crmguard", 0o755),
    ("DEBIAN/postinst", 0o755),
    ("DEBIAN/prerm", 0o755),
    ("DEBIAN/postrm", 0o755),
    ("etc/crmguard", 0o750),
    ("etc/crmguard/crmguard.toml", 0o640),
    ("var/lib/crmguard", 0o700),
    ("var/log/crmguard", 0o750),
    ("var/backups/crmguard", 0o700),
];

/// The mode `relative` gets in the package: its exception, else 0755 for a directory and
/// 0644 for a file.
pub fn mode_of(relative: &Path, kind: Kind) -> u32 {
    if let Some((_, mode)) = EXCEPTIONS
        .iter()
        .find(|(path, _)| Path::new(path) == relative)
    {
        return *mode;
    }
    match kind {
        Kind::Dir => 0o755,
        Kind::File => 0o644,
    }
}

/// Sets the mode of `stage` itself and of everything under it.
pub fn assign(stage: &Path) -> Result<()> {
    set(stage, 0o755)?;
    walk(stage, stage)
}

fn walk(stage: &Path, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let relative = path.strip_prefix(stage)?;
        // Staging writes directories and regular files only: no links to follow.
        let kind = if path.is_dir() { Kind::Dir } else { Kind::File };
        set(&path, mode_of(relative, kind))?;
        if kind == Kind::Dir {
            walk(stage, &path)?;
        }
    }
    Ok(())
}

fn set(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_come_from_the_path_and_kind() {
        let check = |path: &str, kind, expected: u32| {
            assert_eq!(
                mode_of(Path::new(path), kind),
                expected,
                "{path} ({kind:?}): {:o} instead of {expected:o}",
                mode_of(Path::new(path), kind)
            );
        };
        check("DEBIAN", Kind::Dir, 0o755);
        check("DEBIAN/control", Kind::File, 0o644);
        check("DEBIAN/conffiles", Kind::File, 0o644);
        check("DEBIAN/md5sums", Kind::File, 0o644);
        check("DEBIAN/postinst", Kind::File, 0o755);
        check("DEBIAN/prerm", Kind::File, 0o755);
        check("DEBIAN/postrm", Kind::File, 0o755);
        check("usr", Kind::Dir, 0o755);
        check("usr/sbin/crmguard", Kind::File, 0o755);
        check("usr/share/man/man1/crmguard-ban.1.gz", Kind::File, 0o644);
        check(
            "usr/share/bash-completion/completions/crmguard",
            Kind::File,
            0o644,
        );
        check("lib/systemd/system/crmguard.service", Kind::File, 0o644);
        check("etc/crmguard", Kind::Dir, 0o750);
        check("etc/crmguard/crmguard.toml", Kind::File, 0o640);
        check("var/lib/crmguard", Kind::Dir, 0o700);
        check("var/log/crmguard", Kind::Dir, 0o750);
        check("var/backups/crmguard", Kind::Dir, 0o700);
        check("var/lib", Kind::Dir, 0o755);
    }

    #[test]
    fn a_tree_made_under_umask_077_gets_the_package_modes() {
        let stage = tempfile::tempdir().expect("temporary directory");
        let root = stage.path();
        let mkdir = |p: &str| {
            fs::create_dir_all(root.join(p)).expect("mkdir");
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o700)).expect("chmod");
        };
        let touch = |p: &str| {
            fs::write(root.join(p), "x").expect("write");
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o600)).expect("chmod");
        };
        mkdir("DEBIAN");
        mkdir("usr/sbin");
        mkdir("etc/crmguard");
        touch("DEBIAN/control");
        touch("DEBIAN/postinst");
        touch("usr/sbin/crmguard");
        touch("etc/crmguard/crmguard.toml");
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).expect("chmod");

        assign(root).expect("assign modes");

        let mode = |p: &str| {
            fs::metadata(root.join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        for (path, expected) in [
            ("", 0o755),
            ("DEBIAN", 0o755),
            ("DEBIAN/control", 0o644),
            ("DEBIAN/postinst", 0o755),
            ("usr", 0o755),
            ("usr/sbin", 0o755),
            ("usr/sbin/crmguard", 0o755),
            ("etc/crmguard", 0o750),
            ("etc/crmguard/crmguard.toml", 0o640),
        ] {
            assert_eq!(mode(path), expected, "{path}: {:o}", mode(path));
        }
    }
}
