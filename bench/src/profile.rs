//! Where the gateway's CPU goes: `perf record -g` on the crmguard gateway during one transfer
//! each way, its samples sorted by symbol and put in five classes, and by the system call and
//! the thread they were taken in; and the floor under the data path, ChaCha20-Poly1305 sealing
//! of 1,420-byte packets in this process with the same AEAD implementation (ring's)
//! boringtun's sessions use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crmguard_lab::cmd;
use nix::time::{clock_gettime, ClockId};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Where a sample's symbol belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// ChaCha20, Poly1305, BLAKE2s, Curve25519.
    Crypto,
    /// memcpy/memmove and the kernel's copies to and from user memory.
    Copies,
    /// Mutexes, futexes, spin locks, parking_lot.
    Locks,
    /// Any other kernel symbol: syscalls, the network stack, the scheduler.
    Kernel,
    Other,
}

impl Class {
    pub(crate) const ALL: [Class; 5] = [
        Class::Crypto,
        Class::Copies,
        Class::Locks,
        Class::Kernel,
        Class::Other,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Class::Crypto => "crypto",
            Class::Copies => "copies",
            Class::Locks => "locks",
            Class::Kernel => "kernel",
            Class::Other => "other",
        }
    }
}

/// The class of `symbol`; `kernel` when perf marked it `[k]`. Crypto, copies and locks are
/// looked for first, in user space and in the kernel alike.
pub(crate) fn classify(symbol: &str, kernel: bool) -> Class {
    let s = symbol.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| s.contains(w));
    if any(&["chacha", "poly1305", "blake2", "x25519", "curve25519"]) {
        Class::Crypto
    } else if any(&[
        "memcpy",
        "memmove",
        "copy_user",
        "copy_to_user",
        "copy_from_user",
        "copy_to_iter",
        "copy_from_iter",
    ]) {
        Class::Copies
    } else if any(&["mutex", "futex", "spin", "parking_lot", "rwlock"]) {
        Class::Locks
    } else if kernel {
        Class::Kernel
    } else {
        Class::Other
    }
}

/// The gateway's samples, by class and by symbol.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    /// Per cent of the samples, in the order of [`Class::ALL`].
    pub(crate) shares: [f64; 5],
    /// The heaviest symbols: (per cent, `[k]` or `[.]`, symbol).
    pub(crate) top: Vec<(f64, String, String)>,
    /// The same samples by where they were taken.
    pub(crate) places: Places,
}

impl Profile {
    /// The class shares as `crypto 12.3 %, copies ...`.
    pub(crate) fn shares_text(&self) -> String {
        Class::ALL
            .iter()
            .zip(self.shares)
            .map(|(c, share)| format!("{} {share:.1} %", c.key()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The class shares as a JSON object of class to per cent.
    pub(crate) fn shares_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            Class::ALL
                .iter()
                .zip(self.shares)
                .map(|(c, share)| (c.key().to_owned(), serde_json::json!(share)))
                .collect(),
        )
    }
}

/// Samples by the system call they were taken in (or user space, or the kernel outside a
/// system call) and by thread: (per cent, name), the largest first. The call is what a removed
/// or batched system call would save; kernel work a call does for others (a TUN write runs the
/// receiving socket's stack, a `sendmsg` the peer namespace's) counts in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Places {
    pub(crate) calls: Vec<(f64, String)>,
    pub(crate) threads: Vec<(f64, String)>,
}

/// Where a sample outside any system call and in user code is counted.
const USER_SPACE: &str = "user space";

/// Where a kernel sample outside a system call is counted: interrupts, softirqs run on return
/// to user space, page faults.
const KERNEL_OUTSIDE: &str = "kernel, outside a call";

/// The system call `frames` (a sample's call chain, innermost first: (kernel, symbol)) was
/// taken in, by the name of the C library function that made it; failing that (or when that
/// is the generic `syscall`), by the kernel function the syscall entry called.
fn place(frames: &[(bool, &str)]) -> String {
    let entry = frames
        .iter()
        .position(|&(kernel, symbol)| kernel && symbol.starts_with("entry_SYSCALL"));
    let Some(entry) = entry else {
        return match frames.first() {
            Some((true, _)) => KERNEL_OUTSIDE.to_owned(),
            _ => USER_SPACE.to_owned(),
        };
    };
    // `syscall(2)` (how the Rust standard library calls `futex`) names no call.
    let wrapper = frames[entry + 1..]
        .iter()
        .find(|(kernel, symbol)| !kernel && !symbol.starts_with('['))
        .map(|(_, symbol)| *symbol)
        .filter(|&symbol| call_name(symbol) != "syscall");
    let handler = frames[..entry]
        .iter()
        .rev()
        .skip_while(|(_, symbol)| !symbol.starts_with("do_syscall"))
        .nth(1)
        .map(|(_, symbol)| *symbol);
    match wrapper.or(handler) {
        Some(name) => call_name(name),
        None => "system call entry".to_owned(),
    }
}

/// `__GI___libc_write` → `write`, `__x64_sys_recvmmsg` → `recvmmsg`, `ksys_read` → `read`.
fn call_name(symbol: &str) -> String {
    let mut name = symbol.split('@').next().unwrap_or(symbol);
    loop {
        let before = name;
        for prefix in [
            "__GI_",
            "__x64_sys_",
            "__se_sys_",
            "__do_sys_",
            "ksys_",
            "__sys_",
        ] {
            name = name.strip_prefix(prefix).unwrap_or(name);
        }
        name = name.trim_start_matches('_');
        name = name.strip_prefix("libc_").unwrap_or(name);
        if name == before {
            break;
        }
    }
    name.to_owned()
}

/// Parses `perf script -F comm,period,ip,sym`: per sample a line `comm period`, then one
/// indented line `address symbol` per frame, innermost first.
fn parse_script(text: &str) -> Result<Places> {
    use std::collections::HashMap;
    let mut calls: HashMap<String, f64> = HashMap::new();
    let mut threads: HashMap<String, f64> = HashMap::new();
    let mut total = 0.0;
    let mut sample: Option<(String, f64)> = None;
    let mut frames: Vec<(bool, &str)> = Vec::new();
    let mut end_sample = |sample: &mut Option<(String, f64)>, frames: &mut Vec<(bool, &str)>| {
        if let Some((thread, weight)) = sample.take() {
            *calls.entry(place(frames)).or_default() += weight;
            *threads.entry(thread).or_default() += weight;
            total += weight;
        }
        frames.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            end_sample(&mut sample, &mut frames);
        } else if line.starts_with(char::is_whitespace) {
            let (address, symbol) = line
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or((line.trim(), "[unknown]"));
            frames.push((
                address.len() == 16 && address.starts_with("ffff"),
                symbol.trim(),
            ));
        } else {
            end_sample(&mut sample, &mut frames);
            let line = line.trim();
            let (thread, weight) = match line.rsplit_once(char::is_whitespace) {
                Some((thread, period)) => match period.parse::<f64>() {
                    Ok(period) => (thread.trim(), period),
                    Err(_) => (line, 1.0),
                },
                None => (line, 1.0),
            };
            sample = Some((thread.to_owned(), weight));
        }
    }
    end_sample(&mut sample, &mut frames);
    if total <= 0.0 {
        bail!("perf script listed no samples");
    }
    let shares = |map: HashMap<String, f64>| {
        let mut v: Vec<(f64, String)> = map
            .into_iter()
            .map(|(name, weight)| (100.0 * weight / total, name))
            .collect();
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        v
    };
    Ok(Places {
        calls: shares(calls),
        threads: shares(threads),
    })
}

/// Parses `perf report --stdio --sort sym` lines: `  12.34%  [k] symbol`.
pub(crate) fn parse_report(text: &str) -> Result<Profile> {
    let mut shares = [0.0; 5];
    let mut top = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((percent, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let Some(Ok(percent)) = percent.strip_suffix('%').map(str::parse::<f64>) else {
            continue;
        };
        let Some((space, symbol)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let symbol = symbol.trim();
        let class = classify(symbol, space == "[k]");
        let i = Class::ALL
            .iter()
            .position(|&c| c == class)
            .unwrap_or(Class::ALL.len() - 1);
        shares[i] += percent;
        top.push((percent, space.to_owned(), symbol.to_owned()));
    }
    if top.is_empty() {
        bail!("perf report listed no symbols");
    }
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    top.truncate(12);
    Ok(Profile {
        shares,
        top,
        places: Places::default(),
    })
}

/// A running `perf record -g -p PID`, for `seconds`.
pub(crate) struct Recording {
    child: Child,
    data: PathBuf,
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts recording `pid`'s samples, with call graphs, for `seconds`, into `dir/NAME.perf.data`.
pub(crate) fn record(pid: u32, seconds: u32, dir: &Path, name: &str) -> Result<Recording> {
    let data = dir.join(format!("{name}.perf.data"));
    // perf would keep a previous run's file as `.old`.
    let _ = std::fs::remove_file(&data);
    let child = Command::new("perf")
        .args(["record", "-g", "-q", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start perf record")?;
    Ok(Recording { child, data })
}

impl Recording {
    /// Waits for the recording to end and reads its samples by symbol.
    pub(crate) fn finish(mut self) -> Result<Profile> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut stderr) = self.child.stderr.take() {
                        use std::io::Read;
                        let _ = stderr.read_to_string(&mut err);
                    }
                    bail!("perf record failed ({status}): {}", err.trim());
                }
                break;
            }
            if std::time::Instant::now() >= deadline {
                bail!("perf record did not stop");
            }
            crate::vpn::pause(Duration::from_millis(100))?;
        }
        let text = cmd::stdout_of(
            Command::new("perf")
                .args(["report", "-i"])
                .arg(&self.data)
                .args([
                    "--stdio",
                    "--no-children",
                    "--sort",
                    "sym",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0",
                ]),
        )?;
        let mut profile = parse_report(&text)?;
        let script = cmd::stdout_of(
            Command::new("perf")
                .args(["script", "-i"])
                .arg(&self.data)
                .args(["-F", "comm,period,ip,sym"]),
        )?;
        profile.places = parse_script(&script)?;
        Ok(profile)
    }
}

/// The CPU seconds the calling thread has used.
pub(crate) fn thread_cpu_seconds() -> Result<f64> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// Bytes of each sealed packet: a full-size tunnel packet.
pub(crate) const FLOOR_PACKET: usize = 1_420;

/// CPU seconds per GB to seal `FLOOR_PACKET`-byte packets with ChaCha20-Poly1305 on this CPU
/// (one thread, about half a second of work).
pub(crate) fn aead_floor() -> Result<f64> {
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32])
            .map_err(|_| anyhow::anyhow!("ring refused the key"))?,
    );
    let mut packet = vec![0x5au8; FLOOR_PACKET];
    let cpu = thread_cpu_seconds;
    let start = cpu()?;
    let mut sealed = 0u64;
    let mut counter = 0u64;
    while cpu()? - start < 0.5 {
        for _ in 0..1_000 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            counter += 1;
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut packet,
                )
                .map_err(|_| anyhow::anyhow!("sealing failed"))?;
            let _ = std::hint::black_box(tag);
            sealed += 1;
        }
    }
    let seconds = cpu()? - start;
    Ok(seconds / (sealed as f64 * FLOOR_PACKET as f64 / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_fall_in_their_class() -> Result<()> {
        assert_eq!(
            classify("ring_core_0_17_14__chacha20_poly1305_seal", false),
            Class::Crypto
        );
        assert_eq!(classify("poly1305_blocks_avx2", false), Class::Crypto);
        assert_eq!(
            classify("curve25519_dalek::backend::serial::u64::field::mul", false),
            Class::Crypto
        );
        assert_eq!(
            classify("__memmove_avx_unaligned_erms", false),
            Class::Copies
        );
        assert_eq!(
            classify("copy_user_enhanced_fast_string", true),
            Class::Copies
        );
        assert_eq!(classify("_raw_spin_lock", true), Class::Locks);
        assert_eq!(
            classify("parking_lot::raw_mutex::RawMutex::lock_slow", false),
            Class::Locks
        );
        assert_eq!(classify("udp_sendmsg", true), Class::Kernel);
        assert_eq!(
            classify("crmguard_vpn::tunnel::Core::rx", false),
            Class::Other
        );
        Ok(())
    }

    #[test]
    fn reports_are_summed_by_class() -> Result<()> {
        let text = "# Samples: 10K of event 'cycles'\n#\n# Overhead  Symbol\n\
                    # ........  ......\n#\n\
                    \x20   40.00%  [.] ChaCha20_ctr32_ssse3_4x\n\
                    \x20   25.50%  [k] udp_sendmsg\n\
                    \x20   10.00%  [k] _raw_spin_lock\n\
                    \x20    5.00%  [.] __memmove_avx_unaligned_erms\n\
                    \x20   19.50%  [.] crmguard_vpn::endpoint::rx_loop\n";
        let profile = parse_report(text)?;
        assert_eq!(profile.shares, [40.0, 5.0, 10.0, 25.5, 19.5]);
        assert_eq!(profile.top[0].2, "ChaCha20_ctr32_ssse3_4x");
        assert!(parse_report("# nothing\n").is_err());
        Ok(())
    }

    #[test]
    fn samples_are_placed_in_the_call_that_took_them() {
        let read = [
            (true, "read_zero"),
            (true, "vfs_read"),
            (true, "ksys_read"),
            (true, "do_syscall_64"),
            (true, "entry_SYSCALL_64_after_hwframe"),
            (false, "__GI___libc_read"),
            (false, "crmguard_vpn::tun::Tun::recv"),
        ];
        assert_eq!(place(&read), "read");
        // No user frame (the stack was cut): the kernel's handler names the call.
        assert_eq!(place(&read[..5]), "read");
        let recvmmsg = [
            (true, "udpv6_recvmsg"),
            (true, "__x64_sys_recvmmsg"),
            (true, "do_syscall_64"),
            (true, "entry_SYSCALL_64_after_hwframe"),
            (false, "[unknown]"),
        ];
        assert_eq!(place(&recvmmsg), "recvmmsg");
        let futex = [
            (true, "__x64_sys_futex"),
            (true, "do_syscall_64"),
            (true, "entry_SYSCALL_64_after_hwframe"),
            (false, "syscall"),
        ];
        assert_eq!(place(&futex), "futex");
        assert_eq!(
            place(&[(true, "do_syscall_64"), (true, "entry_SYSCALL_64")]),
            "system call entry"
        );
        assert_eq!(
            place(&[
                (true, "handle_softirqs"),
                (false, "crmguard_vpn::endpoint::rx_thread")
            ]),
            KERNEL_OUTSIDE
        );
        assert_eq!(
            place(&[(false, "ring_core_0_17_14__chacha20_poly1305_open_avx2")]),
            USER_SPACE
        );
        assert_eq!(place(&[]), USER_SPACE);
        assert_eq!(call_name("clock_nanosleep@GLIBC_2.2.5"), "clock_nanosleep");
        assert_eq!(call_name("__libc_sendmsg"), "sendmsg");
    }

    #[test]
    fn scripts_are_summed_by_call_and_thread() -> Result<()> {
        let text = "vpn-rx     300000 \n\
                    \tffffffff816dd38f ksys_read\n\
                    \tffffffff8223df91 do_syscall_64\n\
                    \tffffffff81000130 entry_SYSCALL_64_after_hwframe\n\
                    \t           f82ad read\n\
                    \n\
                    vpn-tx     100000 \n\
                    \t           1469e ring_core_0_17_14__chacha20_poly1305_seal_avx2\n\
                    \n\
                    vpn rx 2     100000 \n\
                    \tffffffff81d74e97 handle_softirqs\n";
        let places = parse_script(text)?;
        assert_eq!(
            places.calls,
            [
                (60.0, "read".to_owned()),
                (20.0, KERNEL_OUTSIDE.to_owned()),
                (20.0, USER_SPACE.to_owned()),
            ]
        );
        assert_eq!(
            places.threads,
            [
                (60.0, "vpn-rx".to_owned()),
                (20.0, "vpn rx 2".to_owned()),
                (20.0, "vpn-tx".to_owned()),
            ]
        );
        assert!(parse_script("\n").is_err());
        Ok(())
    }

    #[test]
    fn the_floor_is_a_plausible_cost() -> Result<()> {
        let floor = aead_floor()?;
        // Between 0.05 s/GB (20 GB/s) and 20 s/GB (50 MB/s) on any machine that runs crmguard.
        assert!(floor > 0.05 && floor < 20.0, "{floor}");
        Ok(())
    }
}
