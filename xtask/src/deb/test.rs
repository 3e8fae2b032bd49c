//! `cargo xtask deb-test`: the Debian package installed, upgraded, removed and purged by a real
//! dpkg in a throwaway Debian root, with the upgrade done while the agent enforces under a flood.
//!
//! The root is a `debootstrap --variant=minbase` tree of Debian bookworm, made once and kept in
//! target/deb-test/bookworm; each run works on a fresh copy of it, so the machine's own dpkg
//! database is never touched and no run sees another's leftovers. The packages of the current
//! tree are built under umask 077, as on a hardened host. By default v1 is the current tree
//! packaged as VERSION~old and v2 the same tree as VERSION: the binaries are the same, and what
//! is tested is dpkg's and the maintainer scripts' handling of an upgrade and the restart that
//! adopts the pinned filter. With `--from-rev REV`, v1 is the package an earlier commit builds,
//! and v2 the current tree (as VERSION, or V1+1 when v1's version is not lower).
//!
//! The chroot has no systemd, so the maintainer scripts must leave the service alone; where
//! systemd would act (the unit's restart after an upgrade, `disable --now` before a removal)
//! this test stops and starts the agent itself, the same way: SIGTERM, then a new
//! `crmguard run` from the upgraded binary. For prerm's handling of a failed uninstall, a
//! `systemctl` that records its calls stands in for systemd. The agent runs from the chroot with its network
//! namespace entered, in the host's mount namespace as the unit runs it, and with the host's
//! bpffs bound into the chroot, so its pinned filter outlives it as in production.
//!
//! Every mount, namespace, process and pin made here is removed when the test ends, also when
//! a step fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::stat::{umask, Mode};
use serde_json::Value;

use crate::deb;
use crate::deps;
use crmguard_lab::cmd;
use crmguard_lab::net::{self, UdpFlood, UdpReceiver};
use crmguard_lab::netns::{self, NetNs};
use crmguard_lab::process::{self, Process};
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Do not check or install Debian packages.
    #[arg(long)]
    no_deps: bool,
    /// The Debian mirror debootstrap fetches bookworm from (first run only).
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    mirror: String,
    /// Upgrade from the package that commit REV of this repository builds with its own
    /// `cargo xtask deb` (cached in target/deb-test), instead of the current tree packaged as
    /// VERSION~old.
    #[arg(long, value_name = "REV")]
    from_rev: Option<String>,
}

/// What the root has beyond minbase: the package's own dependency (`ip`), which dpkg -i
/// cannot fetch.
const ROOT_EXTRA: &str = "iproute2";
/// The PATH of commands run in the root, Debian's default for root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The agent's pin directory on the host's bpffs is this followed by the test's process id.
const PIN_PREFIX: &str = "cgdeb-";
/// The configuration file, inside the root.
const CONFIG: &str = "/etc/crmguard/crmguard.toml";
/// A port no service of the test policy opens: the flood's target.
const DENIED_PORT: u16 = 9;
/// How long the agent may take to start, stop, or count what it dropped.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Datagrams sent to the denied port once the package is removed.
const OPEN_PROBES: u64 = 5;
/// Datagrams the flood sends before the upgrade, and again after the new agent is ready.
const FLOOD_MARK: u64 = 500;

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!("the package test needs root (chroot, mounts, network namespaces, XDP)");
    }
    let started = Instant::now();
    // The packages must come out right under a hardened umask, and dpkg runs under it too.
    umask(Mode::from_bits_truncate(0o077));
    if !args.no_deps {
        deps::ensure(deps::Task::DebTest)?;
    }
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(interrupted()))
            .context("cannot install the Ctrl-C handler")?;
    }
    let ws = Workspace::load()?;
    let version = ws.version("crmguard")?;
    let work = ws.target_dir.join("deb-test");
    remove_stale(&work)?;
    let (old, old_version) = match &args.from_rev {
        Some(rev) => {
            let old = package_of_commit(&ws, &work, rev)?;
            let version =
                cmd::stdout_of(Command::new("dpkg-deb").arg("-f").arg(&old).arg("Version"))?
                    .trim()
                    .to_owned();
            say(&format!(
                "v1: {} as commit {rev} builds it",
                file_name(&old)
            ));
            (old, version)
        }
        None => {
            let version = format!("{version}~old");
            let old = deb::build(&ws, &version).context("building v1")?;
            say(&format!(
                "v1: the current tree packaged under umask 077 as {}",
                file_name(&old)
            ));
            (old, version)
        }
    };
    go_on()?;
    let new_version = newer_version(&old_version, &version)?;
    let new = deb::build(&ws, &new_version).context("building v2")?;
    say(&format!(
        "v2: the current tree packaged under umask 077 as {}",
        file_name(&new)
    ));
    go_on()?;

    let cache = cached_root(&work, &args.mirror)?;
    let root = Root::copy_of(&cache, &work.join(format!("root-{}", std::process::id())))?;
    let logs = work.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs)?;
    }
    fs::create_dir_all(&logs)?;

    install(&root, &old, &old_version)?;
    shipped_config(&root)?;
    go_on()?;
    if let Err(e) = lifecycle(&root, &new, &new_version, &logs) {
        say(&format!("the agents' logs are in {}", logs.display()));
        return Err(e);
    }
    say(&format!(
        "all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Set by SIGINT or SIGTERM: the test stops at the next step and removes what it made.
fn interrupted() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

fn go_on() -> Result<()> {
    if interrupted().load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Removes what a run killed before its cleanup left: roots (mounts first) and pin directories
/// of processes that no longer exist.
fn remove_stale(work: &Path) -> Result<()> {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let entries = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|list| list.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for dir in entries(work) {
        let name = file_name(&dir);
        if !dead(&name, "root-") {
            continue;
        }
        say(&format!("removing {}, left by a killed run", dir.display()));
        let mut mounted = mounts_below(&dir)?;
        // Deepest first: /sys/fs/bpf before /sys.
        mounted.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
        for point in mounted {
            cmd::run(Command::new("umount").arg("-l").arg(&point))?;
        }
        ensure_unmounted(&dir)?;
        fs::remove_dir_all(&dir)?;
    }
    for dir in entries(Path::new(crmguard_lab::privileged::BPFFS)) {
        if dead(&file_name(&dir), PIN_PREFIX) {
            say(&format!("removing {}, left by a killed run", dir.display()));
            fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

/// `current`, or `old+1` when `old` is not lower: the second package must be an upgrade.
fn newer_version(old: &str, current: &str) -> Result<String> {
    let lower =
        cmd::succeeds(Command::new("dpkg").args(["--compare-versions", old, "lt", current]));
    Ok(if lower {
        current.to_owned()
    } else {
        format!("{old}+1")
    })
}

/// The package commit `rev` builds, made by that commit's own `cargo xtask deb` from a `git
/// archive` of it (the repository is not touched) and the same target directory, and kept as
/// target/deb-test/crmguard-COMMIT.deb for later runs. Commits before the package's modes were
/// set explicitly cannot build under umask 077, so that build runs under 022.
fn package_of_commit(ws: &Workspace, work: &Path, rev: &str) -> Result<PathBuf> {
    let commit = cmd::stdout_of(Command::new("git").arg("-C").arg(&ws.root).args([
        "rev-parse",
        "--verify",
        &format!("{rev}^{{commit}}"),
    ]))?;
    let short: String = commit.trim().chars().take(12).collect();
    let cached = work.join(format!("crmguard-{short}.deb"));
    if cached.is_file() {
        return Ok(cached);
    }
    let src = work.join(format!("src-{short}"));
    let tar = work.join(format!("src-{short}.tar"));
    if src.exists() {
        fs::remove_dir_all(&src)?;
    }
    fs::create_dir_all(&src)?;
    say(&format!(
        "building the package of commit {short} (first run only)"
    ));
    cmd::run(
        Command::new("git")
            .arg("-C")
            .arg(&ws.root)
            .args(["archive", "--format=tar", "-o"])
            .arg(&tar)
            .arg(&short),
    )?;
    cmd::run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src))?;
    fs::remove_file(&tar)?;
    let printed = cmd::stdout_of(
        Command::new("sh")
            .args(["-c", "umask 022 && exec cargo xtask deb --no-deps"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &ws.target_dir),
    )?;
    let Some(built) = printed.lines().last().map(PathBuf::from) else {
        bail!("`cargo xtask deb` of commit {short} printed no package path");
    };
    fs::copy(&built, &cached)
        .with_context(|| format!("cannot copy {} to {}", built.display(), cached.display()))?;
    fs::remove_file(&built)?;
    fs::remove_dir_all(&src)?;
    Ok(cached)
}

fn say(line: &str) {
    println!("deb-test: {line}");
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The pristine minbase tree, made by debootstrap on first use. It is built under a temporary
/// name and renamed when complete, so an interrupted debootstrap is never taken for a root.
fn cached_root(work: &Path, mirror: &str) -> Result<PathBuf> {
    let cache = work.join("bookworm");
    // Only a finished debootstrap is renamed to `cache`; one made without ROOT_EXTRA is redone.
    if cache
        .join(format!("var/lib/dpkg/info/{ROOT_EXTRA}.list"))
        .is_file()
    {
        return Ok(cache);
    }
    for stale in [&cache, &work.join("bookworm.partial")] {
        if stale.exists() {
            ensure_unmounted(stale)?;
            fs::remove_dir_all(stale)?;
        }
    }
    let partial = work.join("bookworm.partial");
    fs::create_dir_all(work)?;
    say("making the Debian root with debootstrap (first run only)");
    cmd::run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={ROOT_EXTRA}"))
            .arg("bookworm")
            .arg(&partial)
            .arg(mirror),
    )?;
    fs::rename(&partial, &cache)?;
    Ok(cache)
}

/// Fails when anything is mounted at or below `dir`: removing such a tree would recurse into
/// the host's /proc or /sys.
fn ensure_unmounted(dir: &Path) -> Result<()> {
    let mounted = mounts_below(dir)?;
    ensure!(
        mounted.is_empty(),
        "still mounted below {}: {mounted:?}; unmount them first",
        dir.display()
    );
    Ok(())
}

fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(&dir))
        .collect())
}

/// A copy of the cached root with /proc, /sys and the host's bpffs mounted; unmounted and
/// deleted on drop.
struct Root {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Root {
    fn copy_of(cache: &Path, dir: &Path) -> Result<Root> {
        if dir.exists() {
            ensure_unmounted(dir)?;
            fs::remove_dir_all(dir)?;
        }
        cmd::run(Command::new("cp").arg("-a").arg(cache).arg(dir))?;
        let mut root = Root {
            dir: dir.to_owned(),
            mounts: Vec::new(),
        };
        crmguard_lab::privileged::ensure_bpffs()?;
        root.mount(&["-t", "proc", "proc"], "/proc")?;
        root.mount(&["--bind", "/sys"], "/sys")?;
        root.mount(&["--bind", "/sys/fs/bpf"], "/sys/fs/bpf")?;
        Ok(root)
    }

    fn mount(&mut self, how: &[&str], at: &str) -> Result<()> {
        let point = self.path(at);
        fs::create_dir_all(&point)?;
        cmd::run(Command::new("mount").args(how).arg(&point))?;
        self.mounts.push(point);
        Ok(())
    }

    /// `inside` (an absolute path in the root) as seen from the host.
    fn path(&self, inside: &str) -> PathBuf {
        self.dir.join(inside.trim_start_matches('/'))
    }

    /// `program ARGS` run inside the root, as dpkg would run it on a plain Debian host.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("chroot");
        command
            .arg(&self.dir)
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    /// Runs `program ARGS` in the root (in `ns` when given) and fails with its output when it
    /// fails.
    fn run(&self, ns: Option<&NetNs>, program: &str, args: &[&str]) -> Result<Output> {
        let command = self.command(program, args);
        let out = match ns {
            Some(ns) => process::output_in(ns, command)?,
            None => cmd::output(&mut { command })?,
        };
        ensure!(
            out.status.success(),
            "`{program} {}` in the root failed ({}):\n{}{}",
            args.join(" "),
            process::describe(out.status),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// dpkg's record of the crmguard package: `Status Version`.
    fn dpkg_status(&self) -> Result<String> {
        let out = self
            .command(
                "dpkg-query",
                &["-W", "-f=${db:Status-Abbrev}${Version}", "crmguard"],
            )
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn mode(&self, inside: &str) -> Result<u32> {
        let path = self.path(inside);
        Ok(fs::metadata(&path)
            .with_context(|| format!("{inside} is missing"))?
            .permissions()
            .mode()
            & 0o7777)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for point in self.mounts.iter().rev() {
            if !cmd::succeeds(Command::new("umount").arg(point)) {
                let _ = cmd::run(Command::new("umount").arg("-l").arg(point));
            }
        }
        match mounts_below(&self.dir) {
            Ok(left) if left.is_empty() => {
                if let Err(e) = fs::remove_dir_all(&self.dir) {
                    eprintln!("deb-test: removing {}: {e}", self.dir.display());
                }
            }
            Ok(left) => eprintln!(
                "deb-test: {} kept: still mounted {left:?}",
                self.dir.display()
            ),
            Err(e) => eprintln!("deb-test: reading the mount table: {e:#}"),
        }
    }
}

/// The uid and gid of `user` in the root's /etc/passwd.
fn system_user(root: &Root, user: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string(root.path("/etc/passwd"))?;
    let fields: Vec<&str> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .with_context(|| format!("postinst made no user {user}"))?;
    let number = |i: usize| -> Result<u32> {
        fields
            .get(i)
            .with_context(|| format!("a short /etc/passwd line for {user}"))?
            .parse()
            .with_context(|| format!("/etc/passwd field {i} of {user}"))
    };
    Ok((number(2)?, number(3)?))
}

/// Copies `deb` into the root's /tmp and returns its path inside the root.
fn stage_deb(root: &Root, deb: &Path) -> Result<String> {
    let inside = format!("/tmp/{}", file_name(deb));
    fs::copy(deb, root.path(&inside))?;
    Ok(inside)
}

/// Step 1: a first installation on a host with no configuration and no systemd.
fn install(root: &Root, deb: &Path, version: &str) -> Result<()> {
    let inside = stage_deb(root, deb)?;
    let out = root.run(None, "dpkg", &["-i", &inside])?;
    let status = root.dpkg_status()?;
    ensure!(
        status == format!("ii {version}"),
        "after dpkg -i, dpkg says {status:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("crmguard is installed but not running"),
        "postinst did not say how to enable the service: {stderr}"
    );
    for (path, mode) in [
        ("/usr/sbin/crmguard", 0o755),
        ("/etc/crmguard", 0o750),
        (CONFIG, 0o640),
        ("/etc/crmguard/wg.key", 0o600),
        ("/etc/crmguard/audit.key", 0o600),
        ("/var/lib/crmguard", 0o700),
        ("/var/log/crmguard", 0o750),
        ("/var/backups/crmguard", 0o700),
        ("/lib/systemd/system/crmguard.service", 0o644),
    ] {
        let found = root.mode(path)?;
        ensure!(found == mode, "{path} has mode {found:o}, not {mode:o}");
    }
    // The agent's user (the unit's User=), made by postinst with what the minimal root has.
    let (uid, gid) = system_user(root, "crmguard")?;
    ensure!(
        uid != 0 && uid < 1000,
        "user crmguard has uid {uid}, not a system uid"
    );
    for (path, owner) in [
        ("/etc/crmguard", (0, gid)),
        (CONFIG, (0, gid)),
        ("/etc/crmguard/wg.key", (uid, gid)),
        ("/etc/crmguard/audit.key", (uid, gid)),
        ("/var/lib/crmguard", (uid, gid)),
        ("/var/log/crmguard", (uid, gid)),
        ("/var/backups/crmguard", (uid, gid)),
    ] {
        let meta = fs::metadata(root.path(path))?;
        let found = (meta.uid(), meta.gid());
        ensure!(
            found == owner,
            "{path} is owned by {found:?}, not {owner:?}"
        );
    }
    say(&format!(
        "install: dpkg -i {} on a host without configuration or systemd: installed, user crmguard and keys made, modes and owners right",
        file_name(deb)
    ));
    Ok(())
}

/// Step 2: the shipped conffile passes the shipped binary's own check.
fn shipped_config(root: &Root) -> Result<()> {
    root.run(None, "/usr/sbin/crmguard", &["check", "--config", CONFIG])?;
    root.run(None, "/usr/sbin/crmguard", &["check"])?;
    say("check: `crmguard check` accepts the shipped /etc/crmguard/crmguard.toml");
    Ok(())
}

/// Step 3: a man page for every command, and the completions, installed and usable.
fn documentation(root: &Root) -> Result<()> {
    // What the installed binary documents, one page per command...
    let out = root.run(
        None,
        "/usr/sbin/crmguard",
        &["generate", "man", "/tmp/expected-man"],
    )?;
    let mut expected: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .map(|page| format!("{page}.gz"))
        .collect();
    expected.sort();
    // ...is what the package installed.
    let man1 = root.path("/usr/share/man/man1");
    let mut installed: Vec<String> = fs::read_dir(&man1)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("crmguard"))
        .collect();
    installed.sort();
    ensure!(
        installed == expected && expected.iter().any(|p| p == "crmguard-ban-add.1.gz"),
        "man pages installed {installed:?}, the binary documents {expected:?}"
    );
    for page in &installed {
        let inside = format!("/usr/share/man/man1/{page}");
        let roff = root.run(None, "zcat", &[&inside])?;
        let title = page.trim_end_matches(".1.gz");
        ensure!(
            String::from_utf8_lossy(&roff.stdout).contains(&format!(".TH {title} 1")),
            "{inside} has no .TH {title} 1 header"
        );
        // The host's man renders it: the roff is well-formed.
        let rendered = cmd::output(
            Command::new("man")
                .args(["-P", "cat", "-l"])
                .arg(man1.join(page))
                .env("MANWIDTH", "80"),
        )?;
        ensure!(
            rendered.status.success() && String::from_utf8_lossy(&rendered.stdout).contains("NAME"),
            "man -l {page} failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    let bash = root.run(
        None,
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/crmguard && complete -p crmguard",
        ],
    )?;
    ensure!(
        String::from_utf8_lossy(&bash.stdout).contains("crmguard"),
        "bash did not register a completion for crmguard"
    );
    let zsh = fs::read_to_string(root.path("/usr/share/zsh/vendor-completions/_crmguard"))?;
    ensure!(
        zsh.starts_with("#compdef crmguard"),
        "_crmguard is not a zsh completion: {}",
        zsh.lines().next().unwrap_or_default()
    );
    say(&format!(
        "docs: {} man pages (one per command, rendered by man -l), bash and zsh completions",
        installed.len()
    ));
    Ok(())
}

/// A pin directory on the host's bpffs, removed on drop if anything is left in it.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = fs::remove_dir_all(&self.0) {
                eprintln!("deb-test: removing {}: {e}", self.0.display());
            }
        }
    }
}

/// The agent from the root's /usr/sbin/crmguard, with only its network namespace entered
/// (nsenter execs chroot, which execs crmguard: the process id is the agent's). Its output goes
/// to `logs/LABEL.log`.
fn start_agent(root: &Root, ns: &NetNs, logs: &Path, label: &str) -> Result<Process> {
    let mut command = netns::nsenter(ns.name(), "chroot");
    command
        .arg(&root.dir)
        .args(["/usr/sbin/crmguard", "run", "--config", CONFIG])
        .env_clear()
        .env("PATH", ROOT_PATH);
    let log = logs.join(format!("{label}.log"));
    let mut agent = Process::spawn_logged(command, label, &log, TIMEOUT)?;
    // A probe error only means "not yet": an agent that exits ends the wait with its status.
    let exited = wait_for(TIMEOUT, "the agent to answer `crmguard status`", || {
        if let Some(status) = agent.try_wait()? {
            return Ok(Some(Some(status)));
        }
        Ok(status(root, ns).ok().map(|_| None))
    })?;
    if let Some(status) = exited {
        bail!(
            "{label} exited ({}) before it was ready:\n{}",
            process::describe(status),
            agent.log_tail(40)
        );
    }
    Ok(agent)
}

fn status(root: &Root, ns: &NetNs) -> Result<Value> {
    let out = root.run(
        Some(ns),
        "/usr/sbin/crmguard",
        &["status", "--json", "--config", CONFIG],
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Packets the filter dropped on `iface` as `default_drop`.
fn dropped(root: &Root, ns: &NetNs, iface: &str) -> Result<u64> {
    let status = status(root, ns)?;
    let counters = status["counters"]
        .as_array()
        .with_context(|| format!("status has no counters: {status}"))?;
    Ok(counters
        .iter()
        .filter(|c| {
            c["interface"] == iface && c["action"] == "drop" && c["reason"] == "default_drop"
        })
        .filter_map(|c| c["packets"].as_u64())
        .sum())
}

/// Packets a full veth ring dropped between the two ends (the flood's sender learns nothing of
/// them): the outside end's tx_dropped plus the host end's rx_dropped.
fn veth_losses(t: &Topology) -> Result<u64> {
    let read = |ns: &NetNs, iface: &str, counter: &str| -> Result<u64> {
        let text = ns.exec(&[
            "cat",
            &format!("/sys/class/net/{iface}/statistics/{counter}"),
        ])?;
        Ok(text.trim().parse()?)
    };
    Ok(read(&t.out, t.out_if.name(), "tx_dropped")?
        + read(&t.host, t.host_if.name(), "rx_dropped")?)
}

fn test_config(t: &Topology, pins: &Path) -> String {
    format!(
        r#"# The package test's configuration: an administrator's edit of the conffile.
[agent]
mode = "enforce"
bpffs_dir = "{pins}"

[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["{admin}"]
"#,
        pins = pins.display(),
        iface = t.host_if.name(),
        admin = t.addrs.admin4,
    )
}

/// Steps 4 to 6: upgrade under a flood, remove, purge.
fn lifecycle(root: &Root, new: &Path, version: &str, logs: &Path) -> Result<()> {
    let t = Topology::ipv4_only(230, 1)?;
    // A permanent neighbour entry: the flood never waits on ARP, so every datagram it hands to
    // the stack goes onto the wire.
    let mac = t
        .host_if
        .mac()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    t.out.ip(&[
        "neigh",
        "replace",
        &t.addrs.host4.to_string(),
        "lladdr",
        &mac,
        "dev",
        t.out_if.name(),
        "nud",
        "permanent",
    ])?;
    let pins = Pins(
        Path::new(crmguard_lab::privileged::BPFFS)
            .join(format!("{PIN_PREFIX}{}", std::process::id())),
    );
    let config = root.path(CONFIG);
    fs::write(&config, test_config(&t, &pins.0))?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o640))?;
    root.run(None, "/usr/sbin/crmguard", &["check"])?;
    // What the unit's RuntimeDirectory= makes.
    let run_dir = root.path("/run/crmguard");
    fs::create_dir_all(&run_dir)?;
    fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o750))?;

    let mut v1 = start_agent(root, &t.host, logs, "crmguard-v1")?;
    let iface = t.host_if.name();
    ensure!(
        t.host_if.xdp()?.is_some(),
        "no XDP program on {iface} after the agent started"
    );

    let listener = UdpReceiver::start(&t.host, DENIED_PORT)?;
    let dropped_before = dropped(root, &t.host, iface)?;
    let lost_before = veth_losses(&t)?;
    let dst = t.host_addr(t.addrs.host4, DENIED_PORT);
    let flood = UdpFlood::start(&t.out, t.addrs.out4, dst, 64)?;
    wait_for(TIMEOUT, "the flood to send its first datagrams", || {
        Ok((flood.sent() >= FLOOD_MARK).then_some(()))
    })?;

    // The upgrade: dpkg replaces the binary while the old agent runs; prerm and postinst leave
    // it alone without systemd.
    let inside = stage_deb(root, new)?;
    let upgrade_started = Instant::now();
    root.run(Some(&t.host), "dpkg", &["-i", &inside])?;
    let status_after = root.dpkg_status()?;
    ensure!(
        status_after == format!("ii {version}"),
        "after the upgrade dpkg says {status_after:?}"
    );
    ensure!(
        v1.try_wait()?.is_none(),
        "the agent stopped during dpkg -i:\n{}",
        v1.log_tail(40)
    );
    let kept = fs::read_to_string(&config)?;
    ensure!(
        kept.contains(iface),
        "the upgrade replaced the administrator's configuration"
    );

    // What `systemctl restart crmguard` does after postinst's `crmguard check`.
    root.run(None, "/usr/sbin/crmguard", &["check", "--config", CONFIG])?;
    v1.terminate(TIMEOUT)?;
    ensure!(
        t.host_if.xdp()?.is_some(),
        "the filter left {iface} when the old agent stopped"
    );
    let v2 = start_agent(root, &t.host, logs, "crmguard-v2")?;
    let restart = upgrade_started.elapsed();
    let exe = fs::read_link(format!("/proc/{}/exe", v2.id()))?;
    ensure!(
        exe == root.path("/usr/sbin/crmguard"),
        "the new agent runs {}, not the upgraded binary",
        exe.display()
    );
    let status_v2 = status(root, &t.host)?;
    let adopted = status_v2["interfaces"][0]["adopted"].as_bool();
    ensure!(
        adopted == Some(true),
        "the new agent did not adopt the pinned filter: {status_v2}"
    );
    let log = v2.log_tail(200);
    ensure!(
        log.contains("adopted the pinned XDP filter"),
        "the new agent's log does not say it adopted the filter:\n{log}"
    );

    // Keep flooding past the adoption, then count.
    let at_ready = flood.sent();
    wait_for(TIMEOUT, "the flood to go on after the restart", || {
        Ok((flood.sent() >= at_ready + FLOOD_MARK).then_some(()))
    })?;
    let sent = flood.stop();
    let mut accounted = (0, 0);
    let counted = wait_for(TIMEOUT, "the filter to count every flood datagram", || {
        let xdp = dropped(root, &t.host, iface)? - dropped_before;
        let lost = veth_losses(&t)? - lost_before;
        accounted = (xdp, lost);
        Ok((xdp + lost == sent).then_some(()))
    });
    let (xdp, lost) = accounted;
    counted.with_context(|| {
        format!("sent {sent}: the filter dropped {xdp}, the veth ring dropped {lost}")
    })?;
    ensure!(
        listener.received() == 0,
        "{} of {sent} flood datagrams reached the listener on udp/{DENIED_PORT}",
        listener.received()
    );
    say(&format!(
        "upgrade: dpkg -i {} and the restart under a flood took {:.1} s; the new agent adopted \
         the pinned filter; {sent} datagrams to udp/{DENIED_PORT}: {xdp} dropped by XDP \
         (default_drop), {lost} lost in the veth ring, 0 reached the listener",
        file_name(new),
        restart.as_secs_f64()
    ));

    go_on()?;
    documentation(root)?;
    go_on()?;
    refused_remove(root, &t, &pins.0)?;
    go_on()?;
    remove(root, &t, v2, &pins.0)?;
    // With the filter gone the same datagrams arrive: the listener did count, and the removal
    // really took the filter away.
    net::udp_send(&t.out, t.addrs.out4, dst, OPEN_PROBES, 64)?;
    wait_for(
        TIMEOUT,
        "the datagrams sent after dpkg -r to arrive",
        || Ok((listener.received() == OPEN_PROBES).then_some(())),
    )?;
    say(&format!(
        "remove: with the filter gone, {OPEN_PROBES} of {OPEN_PROBES} datagrams to udp/{DENIED_PORT} reach the listener"
    ));
    go_on()?;
    purge(root, &pins.0)?;
    Ok(())
}

/// What prerm asks of `systemctl` when `crmguard uninstall` fails, in order.
const REFUSED_REMOVE_CALLS: &str = "is-enabled --quiet crmguard.service\n\
                                    disable --now crmguard.service\n\
                                    enable --now crmguard.service\n";

/// Step 5a: `dpkg -r` while `crmguard uninstall` fails (here the agent still runs, as when its
/// unit could not be stopped): the removal stops, the package, the binary and the filter stay,
/// and prerm enables and starts the service again, since a host whose service was left
/// disabled would boot unfiltered. systemd is stood in for by `/run/systemd/system` and a
/// `systemctl` in /usr/local/sbin that records its calls and says the unit is enabled; both
/// are gone again before the real removal.
fn refused_remove(root: &Root, t: &Topology, pins: &Path) -> Result<()> {
    let systemctl = root.path("/usr/local/sbin/systemctl");
    let calls = root.path("/tmp/systemctl.calls");
    let systemd = root.path("/run/systemd/system");
    fs::write(
        &systemctl,
        "#!/bin/sh\necho \"$*\" >> /tmp/systemctl.calls\nexit 0\n",
    )?;
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755))?;
    fs::create_dir_all(&systemd)?;
    let out = process::output_in(&t.host, root.command("dpkg", &["-r", "crmguard"]));
    let recorded = fs::read_to_string(&calls).unwrap_or_default();
    let cleanup = [
        fs::remove_file(&systemctl),
        fs::remove_dir(&systemd),
        fs::remove_file(&calls).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        }),
    ];
    let out = out?;
    for done in cleanup {
        done.context("removing the stand-in for systemd")?;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("`crmguard uninstall` failed, so the package is not removed")
            && stderr.contains("the service is enabled and started again"),
        "dpkg -r with a failing uninstall: {}\n{stderr}",
        process::describe(out.status)
    );
    ensure!(
        recorded == REFUSED_REMOVE_CALLS,
        "prerm's calls of systemctl: {recorded:?}"
    );
    // `ri`: asked to be removed, still installed.
    let status = root.dpkg_status()?;
    ensure!(
        root.path("/usr/sbin/crmguard").exists() && status.get(1..2) == Some("i"),
        "the package went with a failing uninstall: dpkg says {status:?}"
    );
    ensure!(
        t.host_if.xdp()?.is_some() && pins.exists(),
        "the filter went with a failing uninstall"
    );
    say("remove refused: with `crmguard uninstall` failing, dpkg -r stops, the package and the filter stay, and prerm enables and starts the service again");
    Ok(())
}

/// Step 5: `dpkg -r`: the filter and binary go, the configuration and state stay.
fn remove(root: &Root, t: &Topology, mut agent: Process, pins: &Path) -> Result<()> {
    // What `systemctl disable --now` in prerm does under systemd.
    agent.terminate(TIMEOUT)?;
    // prerm runs `crmguard uninstall`, which must find the interface: dpkg runs in the agent's
    // network namespace, as on the host itself.
    let out = root.run(Some(&t.host), "dpkg", &["-r", "crmguard"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("no crmguard XDP filter remains"),
        "prerm did not report the filter's removal: {stderr}"
    );
    ensure!(
        !root.path("/usr/sbin/crmguard").exists(),
        "/usr/sbin/crmguard is still there after dpkg -r"
    );
    for kept in [CONFIG, "/etc/crmguard/audit.key", "/var/lib/crmguard"] {
        ensure!(
            root.path(kept).exists(),
            "{kept} is gone after dpkg -r (only purge removes it)"
        );
    }
    ensure!(
        t.host_if.xdp()?.is_none(),
        "an XDP program is still attached to {} after dpkg -r",
        t.host_if.name()
    );
    ensure!(
        !pins.exists(),
        "{} is still there after dpkg -r",
        pins.display()
    );
    let status = root.dpkg_status()?;
    ensure!(
        status.starts_with("rc"),
        "after dpkg -r dpkg says {status:?}"
    );
    say("remove: dpkg -r: binary gone, filter detached and pins removed; configuration, keys and state kept");
    Ok(())
}

/// Step 6: `dpkg -P`: the configuration and state go; the audit log stays.
fn purge(root: &Root, pins: &Path) -> Result<()> {
    // The agents wrote audit records: the log is evidence, and purge keeps it.
    let audit_log = root.path("/var/log/crmguard/audit.jsonl");
    let records = fs::read_to_string(&audit_log)
        .with_context(|| format!("the agents wrote no {}", audit_log.display()))?;
    root.run(None, "dpkg", &["-P", "crmguard"])?;
    ensure!(
        fs::read_to_string(&audit_log).ok().as_ref() == Some(&records),
        "dpkg -P removed or changed /var/log/crmguard/audit.jsonl"
    );
    for gone in ["/etc/crmguard", "/var/lib/crmguard"] {
        ensure!(
            !root.path(gone).exists(),
            "{gone} is still there after dpkg -P"
        );
    }
    ensure!(!pins.exists(), "{} is there after dpkg -P", pins.display());
    let status = root.dpkg_status()?;
    ensure!(
        status.is_empty() || status.starts_with("un") || status.starts_with("pn"),
        "after dpkg -P dpkg says {status:?}"
    );
    say(&format!(
        "purge: dpkg -P: /etc/crmguard and /var/lib/crmguard gone, no pins; the audit log ({} records) kept",
        records.lines().count()
    ));
    Ok(())
}
