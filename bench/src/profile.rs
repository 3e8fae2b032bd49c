//! Where the gateway's CPU goes: `perf record -g` on the crmguard gateway during one transfer
//! each way, its samples sorted by symbol and put in five classes; and the floor under the data
//! path, ChaCha20-Poly1305 sealing of 1,420-byte packets in this process with the same AEAD
//! implementation (ring's) boringtun's sessions use.

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
    Ok(Profile { shares, top })
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

/// Starts recording `pid`'s samples, with call graphs, for `seconds`, into `work/NAME.perf.data`.
pub(crate) fn record(pid: u32, seconds: u32, work: &Path, name: &str) -> Result<Recording> {
    let data = work.join(format!("{name}.perf.data"));
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
        parse_report(&text)
    }
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
    let cpu = || -> Result<f64> {
        let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
        Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
    };
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
    fn the_floor_is_a_plausible_cost() -> Result<()> {
        let floor = aead_floor()?;
        // Between 0.05 s/GB (20 GB/s) and 20 s/GB (50 MB/s) on any machine that runs crmguard.
        assert!(floor > 0.05 && floor < 20.0, "{floor}");
        Ok(())
    }
}
