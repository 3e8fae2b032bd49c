//! `cargo xtask deb`: a Debian package built with dpkg-deb from packaging/.
//!
//! Layout of the package:
//!
//! | path | from |
//! | --- | --- |
//! | /usr/sbin/crmguard | the release build, debug info stripped |
//! | /usr/share/man/man1/crmguard*.1.gz | `crmguard generate man`: one page per command |
//! | /usr/share/bash-completion/completions/crmguard | `crmguard generate completions bash` |
//! | /usr/share/zsh/vendor-completions/_crmguard | `crmguard generate completions zsh` |
//! | /lib/systemd/system/crmguard.service | packaging/crmguard.service |
//! | /etc/crmguard/crmguard.toml (conffile) | config/crmguard.example.toml, with a header |
//! | /var/lib/crmguard, /var/log/crmguard, /var/backups/crmguard | empty, 0700, 0750 and 0700 |
//! | /usr/share/doc/crmguard/ | README.md, copyright, examples/ (config, nftables, alerts, dashboard) |
//! | DEBIAN/ | packaging/debian/ (control filled in, maintainer scripts, conffiles, md5sums) |
//!
//! Modes come from one table (`modes.rs`), not from the packager's umask.

mod modes;
pub mod test;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::deps;
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Do not check or install Debian packages.
    #[arg(long)]
    no_deps: bool,
    /// The package version [default: the workspace's version]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
}

const EXAMPLE_CONFIG: &str = "config/crmguard.example.toml";

/// Put in front of the shipped configuration: the example's admin network is not the user's.
const CONFIG_HEADER: &str = "\
# /etc/crmguard/crmguard.toml: crmguard's configuration.
#
# This is the example configuration. Before `systemctl enable --now crmguard`:
# set [[interface]] to this host's public interfaces, and put your admin network in the `from`
# list of the ssh service: with default = \"drop\", everything not allowed here is dropped,
# your SSH session included. Delete the example peer alice-laptop and the tests that name it,
# and the [alerts] and [crowdsec] sections unless those services run where they point. Then
# run `crmguard check`.

";

pub fn run(args: &Args) -> Result<()> {
    if !args.no_deps {
        deps::ensure(deps::Task::Deb)?;
    }
    let ws = Workspace::load()?;
    let version = match &args.version {
        Some(version) => version.clone(),
        None => ws.version("crmguard")?,
    };
    let deb = build(&ws, &version)?;
    cmd::run(Command::new("dpkg-deb").arg("--info").arg(&deb))?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the release binary and packages it as `version`; returns the .deb's path
/// (target/deb/crmguard_VERSION_ARCH.deb).
pub fn build(ws: &Workspace, version: &str) -> Result<PathBuf> {
    let example = ws.root.join(EXAMPLE_CONFIG);
    if !example.is_file() {
        bail!(
            "{} is missing: the package ships it as /etc/crmguard/crmguard.toml",
            example.display()
        );
    }
    cmd::run(ws.cargo().args([
        "build",
        "--release",
        "--package",
        "crmguard",
        "--bin",
        "crmguard",
    ]))?;
    let bin = ws.bin("release", "crmguard");
    // The package must never ship a configuration its own binary rejects.
    cmd::run(
        Command::new(&bin)
            .arg("check")
            .arg("--config")
            .arg(&example),
    )?;

    let arch = cmd::stdout_of(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let out_dir = ws.target_dir.join("deb");
    let stage = out_dir.join(format!("crmguard_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }

    let packaging = ws.root.join("packaging");
    let doc = Path::new("usr/share/doc/crmguard");
    let examples = doc.join("examples");

    let sbin = copy(&stage, &bin, "usr/sbin/crmguard")?;
    cmd::run(Command::new("strip").arg("--strip-debug").arg(&sbin))?;
    man_pages(&bin, &stage, &out_dir.join("man"))?;
    for (shell, to) in [
        ("bash", "usr/share/bash-completion/completions/crmguard"),
        ("zsh", "usr/share/zsh/vendor-completions/_crmguard"),
    ] {
        let script = cmd::stdout_of(Command::new(&bin).args(["generate", "completions", shell]))?;
        write(&stage, to, &script)?;
    }
    copy(
        &stage,
        &packaging.join("crmguard.service"),
        "lib/systemd/system/crmguard.service",
    )?;
    let config = fs::read_to_string(&example)?;
    write(
        &stage,
        "etc/crmguard/crmguard.toml",
        &format!("{CONFIG_HEADER}{config}"),
    )?;
    for dir in [
        "var/lib/crmguard",
        "var/log/crmguard",
        "var/backups/crmguard",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    copy(&stage, &ws.root.join("README.md"), doc.join("README.md"))?;
    copy(
        &stage,
        &packaging.join("debian/copyright"),
        doc.join("copyright"),
    )?;
    for (from, to) in [
        (example.clone(), "crmguard.example.toml"),
        (
            packaging.join("nftables-baseline.nft"),
            "nftables-baseline.nft",
        ),
        (
            packaging.join("prometheus/crmguard-alerts.yml"),
            "crmguard-alerts.yml",
        ),
        (
            packaging.join("grafana/crmguard-dashboard.json"),
            "crmguard-dashboard.json",
        ),
    ] {
        copy(&stage, &from, examples.join(to))?;
    }

    let debian = packaging.join("debian");
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &stage,
            &debian.join(script),
            Path::new("DEBIAN").join(script),
        )?;
    }
    copy(&stage, &debian.join("conffiles"), "DEBIAN/conffiles")?;
    write(&stage, "DEBIAN/md5sums", &md5sums(&stage)?)?;
    let control = fs::read_to_string(debian.join("control"))?
        .replace("@VERSION@", version)
        .replace("@ARCH@", &arch)
        .replace("@SHLIBS@", &shlibs(&sbin, &out_dir.join("shlibdeps"))?)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string());
    write(&stage, "DEBIAN/control", &control)?;
    // Everything was created under the caller's umask; dpkg-deb takes modes as they are.
    modes::assign(&stage)?;

    let deb = out_dir.join(format!("crmguard_{version}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Writes the binary's man pages into `scratch`, then compresses each into the package's
/// man1 directory as Debian policy wants them (gzip -9n: no name or time stamp, so the same
/// page gives the same bytes).
fn man_pages(bin: &Path, stage: &Path, scratch: &Path) -> Result<()> {
    if scratch.exists() {
        fs::remove_dir_all(scratch)?;
    }
    cmd::run(Command::new(bin).arg("generate").arg("man").arg(scratch))?;
    let man1 = stage.join("usr/share/man/man1");
    fs::create_dir_all(&man1)?;
    let mut pages: Vec<PathBuf> = fs::read_dir(scratch)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    if pages.is_empty() {
        bail!("`crmguard generate man` wrote no pages");
    }
    for page in pages {
        let Some(name) = page.file_name() else {
            continue;
        };
        let mut gz = name.to_owned();
        gz.push(".gz");
        let compressed = cmd::output(Command::new("gzip").args(["-9n", "-c"]).arg(&page))?;
        if !compressed.status.success() {
            bail!("gzip {} failed", page.display());
        }
        fs::write(man1.join(gz), compressed.stdout)?;
    }
    fs::remove_dir_all(scratch)?;
    Ok(())
}

/// Copies `from` to `stage/to`, creating parent directories.
fn copy(stage: &Path, from: &Path, to: impl AsRef<Path>) -> Result<PathBuf> {
    let to = stage.join(to);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, &to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(to)
}

fn write(stage: &Path, to: impl AsRef<Path>, text: &str) -> Result<()> {
    let to = stage.join(to);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&to, text).with_context(|| format!("cannot write {}", to.display()))
}

/// The shared-library dependencies of the binary as dpkg-shlibdeps computes them,
/// e.g. `libc6 (>= 2.34), libgcc-s1 (>= 4.2)`.
fn shlibs(bin: &Path, scratch: &Path) -> Result<String> {
    // dpkg-shlibdeps wants to run in a source tree: a debian/control with a binary stanza.
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        "Source: crmguard\n\nPackage: crmguard\nArchitecture: any\n",
    )?;
    let out = cmd::stdout_of(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(bin)
            .current_dir(scratch),
    )?;
    fs::remove_dir_all(scratch)?;
    match out
        .lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
    {
        Some(depends) => Ok(depends.trim().to_owned()),
        None => bail!("dpkg-shlibdeps printed no shlibs:Depends: {out}"),
    }
}

/// DEBIAN/md5sums: one line per file outside DEBIAN/, as dpkg --verify reads it.
fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(stage, stage, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Ok(String::new());
    }
    cmd::stdout_of(Command::new("md5sum").args(&files).current_dir(stage))
}

fn collect_files(stage: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let relative = path.strip_prefix(stage)?.to_path_buf();
        if relative.starts_with("DEBIAN") {
            continue;
        }
        if path.is_dir() {
            collect_files(stage, &path, files)?;
        } else {
            files.push(relative);
        }
    }
    Ok(())
}

/// Installed-Size in KiB, as dpkg-gencontrol counts it (each file rounded up to 1 KiB).
fn installed_size_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                *total += 1;
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}
