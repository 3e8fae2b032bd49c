//! Whether a privileged test can run here, and what to do when it cannot.
//!
//! A privileged test needs root, a working `bpf(2)`, bpffs at `/sys/fs/bpf` and iproute2. When
//! one is missing the test reports `SKIP <name>: <reason>` and returns; under
//! `CRMGUARD_REQUIRE_PRIVILEGED=1` (what CI sets) the same situation is a failure, because a green
//! run that skipped the datapath proves nothing.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;

/// Where the suite expects bpffs: the host's, so that pins survive the agent process.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Returns true when the privileged test `test` can run. Otherwise panics under
/// `CRMGUARD_REQUIRE_PRIVILEGED=1`, or prints `SKIP {test}: {reason}` and returns false.
pub fn require(test: &str) -> bool {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    let verdict = VERDICT.get_or_init(|| check().map_err(|e| format!("{e:#}")));
    let Err(reason) = verdict else {
        return true;
    };
    if std::env::var("CRMGUARD_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("privileged test {test} cannot run: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

fn check() -> Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        bail!("needs root (effective uid is {euid})");
    }
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .context("iproute2's `ip` is not installed")?;
    if !ip.status.success() {
        bail!("`ip -V` failed: {}", String::from_utf8_lossy(&ip.stderr));
    }
    ensure_bpffs()?;
    create_array_map().context("the kernel refused to create a BPF array map")?;
    Ok(())
}

/// Creates and closes a one-entry BPF array map: the cheapest proof that `bpf(2)` works here.
#[allow(unsafe_code)]
fn create_array_map() -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};

    /// The head of `union bpf_attr` for `BPF_MAP_CREATE` (uapi/linux/bpf.h); the kernel reads
    /// the size it is given and treats the rest as zero.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` and the size passed is
    // its own; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MapCreate>(),
        )
    };
    let fd =
        i32::try_from(fd).map_err(|_| std::io::Error::other("bpf(2) returned no descriptor"))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Mounts bpffs at `/sys/fs/bpf` in the current (host) mount namespace unless one is there.
pub fn ensure_bpffs() -> Result<()> {
    mount_bpffs_if_missing().map(drop)
}

/// Mounts bpffs at `/sys/fs/bpf` in the current (host) mount namespace unless one is there, and
/// tells whether it did (systemd mounts it at boot; bare containers and minimal machines do
/// not, and the demo says so).
pub fn mount_bpffs_if_missing() -> Result<bool> {
    // Tests run in parallel threads: serialise the check-then-mount so it mounts once.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if bpffs_mounted(Path::new(BPFFS))? {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    Ok(true)
}

/// Whether a bpffs is mounted exactly at `dir` (field 5 of mountinfo is the mount point, the
/// filesystem type follows the ` - ` separator).
fn bpffs_mounted(dir: &Path) -> Result<bool> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let mount_point = left.split(' ').nth(4);
        let fs_type = right.split(' ').next();
        mount_point.map(Path::new) == Some(dir) && fs_type == Some("bpf")
    }))
}

/// Fails naming the Debian package when a tool a scenario runs is missing
/// (`cargo xtask test` installs them all): pairs of (program, package).
pub fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    for (tool, package) in tools {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` is not installed: apt-get install {package} (cargo xtask test does)");
        }
    }
    Ok(())
}
