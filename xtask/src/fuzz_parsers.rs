//! `cargo xtask fuzz`: the coverage-guided fuzz targets (the crate in `fuzz/`): one per
//! inspection parser, one for the reassembly, one for the whole per-packet engine, the
//! detectors and log-line matching; and one for each input an attacker or a broken file hands
//! the agent: the configuration, WireGuard datagrams before a handshake, MFA portal requests,
//! audit logs, peers files and control requests.
//!
//! It works with the stable toolchain alone. libFuzzer comes from the `libfuzzer-sys` crate,
//! which builds it from its C++ source (hence `g++`, installed through `deps`), and the
//! coverage instrumentation is LLVM's SanitizerCoverage pass, which stable rustc runs when
//! asked with `-C passes=sancov-module` and its `-C llvm-args` options: no nightly, no
//! `cargo fuzz`, nothing installed with `cargo install`. There is no AddressSanitizer (it needs
//! a nightly std), which costs little here: inspection has no `unsafe`, so what the fuzzer
//! looks for is panics, arithmetic overflow (checked in these builds), unbounded memory and
//! inputs that take too long; libFuzzer turns each into a failure with the input saved.
//!
//! Each target runs for `--seconds` on its corpus `fuzz/corpus/TARGET/`: its seeds (files
//! named `fixture-*`, written again before each run), plus what earlier runs found
//! interesting. The inspection targets' seeds are the captures in `inspect/fixtures/` packed
//! into the target's input format, written here; the other targets make their own with
//! crmguard's code (real handshakes from boringtun, a real audit log from the writer, the
//! example configuration...) when `CRMGUARD_FUZZ_SEEDS` names the corpus, which this sets. After a run the corpus is
//! minimized in place to a smallest set of inputs that reach every edge reached (libFuzzer's
//! set-cover merge over edges, not hit counts), so what is committed stays a few hundred KiB.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

use crate::deps;

/// The targets, in the order they run, with the longest input each takes.
const TARGETS: [(&str, usize); 18] = [
    ("tls", PARSER_MAX_LEN),
    ("http", PARSER_MAX_LEN),
    ("http2", PARSER_MAX_LEN),
    ("postgresql", PARSER_MAX_LEN),
    ("mysql", PARSER_MAX_LEN),
    ("redis", PARSER_MAX_LEN),
    ("ssh", PARSER_MAX_LEN),
    ("smtp", PARSER_MAX_LEN),
    ("engine", 16 * 1024),
    ("reasm", 4 * 1024),
    ("detect", 7 * 512),
    ("logline", 4 * 1024),
    ("config", 16 * 1024),
    ("wg_framing", 4 * 1024),
    // The portal's head and body bounds, and then some, plus the two bytes of settings.
    ("portal_http", 12 * 1024),
    ("audit_verify", 8 * 1024),
    ("peers_file", 4 * 1024),
    ("control_request", 4 * 1024),
];

/// The targets that write their own seeds (see `fuzz/src/seeds.rs`).
const SELF_SEEDED: [&str; 6] = [
    "config",
    "wg_framing",
    "portal_http",
    "audit_verify",
    "peers_file",
    "control_request",
];

/// The environment variable that has a self-seeded target write its seeds into the corpus.
const SEEDS_ENV: &str = "CRMGUARD_FUZZ_SEEDS";

/// A parser input: three bytes of header, the client window (8 KiB), the server window (4 KiB).
const PARSER_MAX_LEN: usize = 3 + 8 * 1024 + 4 * 1024;

/// The instrumentation: libFuzzer's inline 8-bit counters and PC table at edge level, and
/// comparison tracing so the fuzzer learns the magic bytes the parsers compare with. Overflow
/// checks and debug assertions on, `cfg(fuzzing)` as `cargo fuzz` sets it.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Run only this target (tls, http, http2, postgresql, mysql, redis, ssh, smtp, engine,
    /// reasm, detect, logline, config, wg_framing, portal_http, audit_verify, peers_file,
    /// control_request).
    #[arg(long)]
    target: Option<String>,
    /// Where crashing inputs are saved (default: TARGET_DIR/fuzz/artifacts).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Leave the corpus as the run left it instead of minimizing it.
    #[arg(long)]
    no_minimize: bool,
    /// Do not check or install Debian packages.
    #[arg(long)]
    no_deps: bool,
}

/// What one run of one target did.
struct Outcome {
    target: &'static str,
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
    /// libFuzzer's `cov:` (edges) and `ft:` (features) at the end.
    coverage: Option<(u64, u64)>,
    corpus: usize,
    failure: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let targets: Vec<(&'static str, usize)> = match &args.target {
        None => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|(t, _)| t == name) {
            Some(&target) => vec![target],
            None => bail!(
                "no fuzz target `{name}`; the targets are {}",
                TARGETS.map(|(t, _)| t).join(", ")
            ),
        },
    };
    if !args.no_deps {
        deps::ensure(deps::Task::Fuzz)?;
    }
    let ws = Workspace::load()?;
    let fuzz_dir = ws.root.join("fuzz");
    let out_dir = ws.target_dir.join("fuzz");
    let artifacts = args
        .artifacts
        .clone()
        .unwrap_or_else(|| out_dir.join("artifacts"));

    let host = host_triple()?;
    eprintln!(
        "xtask: building the fuzz targets with the stable toolchain: libFuzzer from the \
         libfuzzer-sys crate, SanitizerCoverage instrumentation, overflow checks on"
    );
    // The fuzz crate is outside the workspace, with a lock file of its own: start it from the
    // workspace's, so the parsers' dependencies are the versions crmguard ships; cargo adds
    // only libfuzzer-sys and what it needs.
    let lock = fuzz_dir.join("Cargo.lock");
    fs::copy(ws.root.join("Cargo.lock"), &lock)
        .with_context(|| format!("cannot write {}", lock.display()))?;
    let mut build = ws.cargo();
    build
        .current_dir(&fuzz_dir)
        .env("CARGO_TARGET_DIR", &out_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--release", "--target", &host]);
    for (target, _) in &targets {
        build.args(["--bin", target]);
    }
    cmd::run(&mut build)?;
    let bin_dir = out_dir.join(&host).join("release");

    let mut outcomes = Vec::new();
    for &(target, max_len) in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let seeds = write_seeds(&ws.root, target, &corpus)?;
        let crashes = artifacts.join(target);
        fs::create_dir_all(&crashes)
            .with_context(|| format!("cannot create {}", crashes.display()))?;
        let log = out_dir.join("logs").join(format!("{target}.log"));
        let bin = bin_dir.join(target);
        if SELF_SEEDED.contains(&target) {
            eprintln!(
                "xtask: fuzzing `{target}` for {} s (it writes its own seed inputs)",
                args.seconds
            );
        } else {
            eprintln!(
                "xtask: fuzzing `{target}` for {} s ({seeds} seed inputs from the fixtures)",
                args.seconds
            );
        }
        let mut outcome = fuzz(&bin, target, max_len, args.seconds, &corpus, &crashes, &log)?;
        if outcome.failure.is_none() && !args.no_minimize {
            minimize(&bin, target, &corpus, &out_dir.join("merge").join(target))?;
        }
        outcome.corpus = count_files(&corpus)?;
        print_outcome(&outcome);
        outcomes.push(outcome);
    }

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    eprintln!("xtask: fuzz summary ({} s per target):", args.seconds);
    for outcome in &outcomes {
        print_outcome(outcome);
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {}",
            failed
                .iter()
                .map(|o| o.target)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let info = cmd::stdout_of(Command::new(rustc).arg("-vV"))?;
    info.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host")
}

/// Runs one target for `seconds`; its libFuzzer output goes to `log`.
fn fuzz(
    bin: &Path,
    target: &'static str,
    max_len: usize,
    seconds: u64,
    corpus: &Path,
    crashes: &Path,
    log: &Path,
) -> Result<Outcome> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_file =
        fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut fuzz = Command::new(bin);
    fuzz.arg(corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        // One input taking 10 s, or the process passing 2 GiB, is a failure.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", crashes.display()))
        .env(SEEDS_ENV, corpus)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    eprintln!("$ {} (output in {})", cmd::display(&fuzz), log.display());
    let status = fuzz
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let text = fs::read_to_string(log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    let failure = (!status.success()).then(|| describe_failure(bin, &text, status.to_string()));
    Ok(Outcome {
        target,
        runs: stat("stat::number_of_executed_units:"),
        execs_per_sec: stat("stat::average_exec_per_sec:"),
        coverage: last_coverage(&text),
        corpus: 0,
        failure,
    })
}

/// The last `cov: N ft: M` libFuzzer printed.
fn last_coverage(log: &str) -> Option<(u64, u64)> {
    log.lines().rev().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "cov:")?;
        let cov = words.next()?.parse().ok()?;
        words.find(|w| *w == "ft:")?;
        let ft = words.next()?.parse().ok()?;
        Some((cov, ft))
    })
}

/// The panic message or libFuzzer's reason, the saved input and how to replay it.
fn describe_failure(bin: &Path, log: &str, status: String) -> String {
    let lines: Vec<&str> = log.lines().collect();
    // Where the failure starts: a panic, or libFuzzer's own `==N== ERROR:` report.
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
        .unwrap_or(lines.len().saturating_sub(20));
    let mut report: Vec<String> = lines[start..]
        .iter()
        .take(12)
        .map(|l| format!("    {l}"))
        .collect();
    let input = lines.iter().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, path)| path.trim().to_owned())
    });
    match input {
        Some(path) => {
            report.push(format!("  input: {path}"));
            report.push(format!("  replay: {} {path}", bin.display()));
        }
        None => report.push(format!("  exit: {status} (no input saved)")),
    }
    report.join("\n")
}

/// Replaces the corpus by the smallest subset libFuzzer finds that reaches the same edges. The
/// seeds keep their `fixture-*` names and the regression inputs their `regression-*` names.
fn minimize(bin: &Path, target: &str, corpus: &Path, work: &Path) -> Result<()> {
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let out = cmd::output(
        Command::new(bin)
            .args(["-set_cover_merge=1", "-use_counters=0"])
            .env_remove(SEEDS_ENV)
            .arg(work)
            .arg(corpus),
    )?;
    if !out.status.success() {
        eprintln!(
            "xtask: minimizing the `{target}` corpus failed ({}); it is left as the run left it",
            out.status
        );
        return Ok(());
    }
    let mut seeds = BTreeSet::new();
    for path in files(corpus)? {
        if is_seed(&path) {
            seeds.insert(read(&path)?);
        } else {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for path in files(work)? {
        if seeds.contains(&read(&path)?) {
            continue;
        }
        let Some(name) = path.file_name() else {
            continue;
        };
        fs::copy(&path, corpus.join(name))
            .with_context(|| format!("cannot copy {}", path.display()))?;
    }
    fs::remove_dir_all(work).with_context(|| format!("cannot remove {}", work.display()))
}

/// Seeds and regression inputs (`regression-*`: inputs that once found a defect) survive the
/// minimization whatever their coverage.
fn is_seed(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        let name = n.to_string_lossy();
        name.starts_with("fixture-") || name.starts_with("regression-")
    })
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn count_files(dir: &Path) -> Result<usize> {
    Ok(files(dir)?.len())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn print_outcome(o: &Outcome) {
    let num = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let coverage = o.coverage.map_or_else(
        || "?".to_owned(),
        |(cov, ft)| format!("{cov} edges, {ft} features"),
    );
    let verdict = if o.failure.is_some() { "FAILED" } else { "ok" };
    eprintln!(
        "  {:<11} {verdict:<6} runs {:>10}  exec/s {:>7}  coverage {coverage}  corpus {}",
        o.target,
        num(o.runs),
        num(o.execs_per_sec),
        o.corpus
    );
    if let Some(failure) = &o.failure {
        eprintln!("{failure}");
    }
}

/// One capture of `inspect/fixtures/PROTOCOL/`: what the client and the server sent.
struct Capture {
    protocol: String,
    name: String,
    client: Vec<u8>,
    server: Vec<u8>,
}

fn captures(root: &Path) -> Result<Vec<Capture>> {
    let fixtures = root.join("inspect").join("fixtures");
    let mut out = Vec::new();
    if !fixtures.is_dir() {
        return Ok(out);
    }
    for entry in fs::read_dir(&fixtures)? {
        let dir = entry?.path();
        let Some(protocol) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !dir.is_dir() {
            continue;
        }
        for client in files(&dir)? {
            if client.extension().is_none_or(|e| e != "client") {
                continue;
            }
            let server = client.with_extension("server");
            let Some(name) = client.file_stem().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            out.push(Capture {
                protocol: protocol.clone(),
                name,
                client: read(&client)?,
                server: if server.exists() {
                    read(&server)?
                } else {
                    Vec::new()
                },
            });
        }
    }
    out.sort_by(|a, b| (&a.protocol, &a.name).cmp(&(&b.protocol, &b.name)));
    Ok(out)
}

/// Writes the captures `target` starts from into its corpus; returns how many.
fn write_seeds(root: &Path, target: &str, corpus: &Path) -> Result<usize> {
    let mut written = 0;
    if target == "logline" {
        // The real sshd, nginx and Apache lines the log sources' tests use.
        let dir = root.join("agent/src/logsource/fixtures");
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("log");
            for (i, line) in text.lines().enumerate() {
                let seed = corpus.join(format!("fixture-{stem}-{i}"));
                fs::write(&seed, line)
                    .with_context(|| format!("cannot write {}", seed.display()))?;
                written += 1;
            }
        }
        return Ok(written);
    }
    if SELF_SEEDED.contains(&target) {
        return Ok(0);
    }
    for capture in captures(root)? {
        let input = match target {
            "engine" => engine_input(&capture),
            "reasm" | "detect" | "logline" => continue,
            parser if parser == capture.protocol => parser_input(&capture),
            _ => continue,
        };
        let path = corpus.join(format!("fixture-{}-{}", capture.protocol, capture.name));
        fs::write(&path, input).with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
    }
    Ok(written)
}

/// The capture in a parser target's format (fuzz/src/parser.rs): flags (both sides done at
/// the end, steps of 128 bytes, the client first), the client's length, both sides' bytes cut
/// at their windows.
fn parser_input(capture: &Capture) -> Vec<u8> {
    let client = &capture.client[..capture.client.len().min(8 * 1024)];
    let server = &capture.server[..capture.server.len().min(4 * 1024)];
    let mut input = vec![0x03 | (7 << 2)];
    input.extend_from_slice(&u16::try_from(client.len()).unwrap_or(0).to_be_bytes());
    input.extend_from_slice(client);
    input.extend_from_slice(server);
    input
}

/// The capture as one connection in the engine target's format (fuzz/src/engine.rs): the
/// handshake, each side's bytes in segments of at most 1400 bytes, a FIN from each side. The
/// gateway port is the protocol's well-known one (an index into its port table); the side
/// that speaks first in the protocol sends first.
fn engine_input(capture: &Capture) -> Vec<u8> {
    let port_index: u8 = match capture.protocol.as_str() {
        "ssh" => 0,
        "smtp" => 1,
        "http" | "http2" => 2,
        "tls" => 3,
        "mysql" => 8,
        "postgresql" => 9,
        "redis" => 10,
        _ => 11,
    };
    let conn = (port_index << 4) | 1;
    let mut input = Vec::new();
    let mut record = |ctl: u8, payload: &[u8]| {
        input.extend_from_slice(&[ctl, conn, 0]);
        input.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        input.extend_from_slice(payload);
    };
    // ctl: bit 0 to the peer; kind << 1 with 0 data, 1 SYN, 2 SYN+ACK, 3 FIN, 5 bare ACK.
    record(1 << 1, &[]);
    record(1 | (2 << 1), &[]);
    record(5 << 1, &[]);
    let server_first = matches!(capture.protocol.as_str(), "smtp" | "mysql" | "ssh");
    let sides = if server_first {
        [(1, &capture.server), (0, &capture.client)]
    } else {
        [(0, &capture.client), (1, &capture.server)]
    };
    for (to_peer, bytes) in sides {
        for chunk in bytes.chunks(1400) {
            record(to_peer, chunk);
        }
    }
    record(3 << 1, &[]);
    record(1 | (3 << 1), &[]);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_read_from_the_last_status_line() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 200 ft: 300 corp: 20/1Kb lim: 43 exec/s: 2048 rss: 31Mb\n\
                   #9000\tDONE   cov: 210 ft: 333 corp: 22/1Kb lim: 43 exec/s: 3000 rss: 31Mb\n\
                   stat::number_of_executed_units: 9000\n";
        assert_eq!(last_coverage(log), Some((210, 333)));
    }

    /// Every target runs: it is a binary of the fuzz crate with its source, and the ones that
    /// seed themselves are targets that get no fixture seeds.
    #[test]
    fn every_target_is_a_binary_of_the_fuzz_crate() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
        for (target, max_len) in TARGETS {
            assert!(
                manifest.contains(&format!(
                    "name = \"{target}\"\npath = \"fuzz_targets/{target}.rs\""
                )),
                "no [[bin]] for {target}"
            );
            assert!(fuzz.join(format!("fuzz_targets/{target}.rs")).is_file());
            assert!(max_len >= 1024, "{target} takes {max_len} bytes at most");
        }
        for target in SELF_SEEDED {
            assert!(TARGETS.iter().any(|(t, _)| *t == target), "{target}");
            let source = fs::read_to_string(fuzz.join(format!("fuzz_targets/{target}.rs")))
                .expect("the target's source");
            assert!(
                source.contains("crmguard_fuzz::seeds::write("),
                "{target} does not write its seeds"
            );
            let dir = tempfile::tempdir().expect("a temporary directory");
            assert_eq!(
                write_seeds(&fuzz.join(".."), target, dir.path()).expect("seeds"),
                0
            );
        }
    }

    /// The example configuration, a self-seeded target's seed, fits in the target's inputs.
    #[test]
    fn the_example_configuration_fits_the_config_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let example = fs::metadata(root.join("config/crmguard.example.toml")).expect("example");
        let (_, max_len) = TARGETS
            .iter()
            .find(|(t, _)| *t == "config")
            .expect("the config target");
        assert!(usize::try_from(example.len()).expect("size") <= *max_len);
    }

    #[test]
    fn a_parser_seed_holds_both_sides_after_the_client_length() {
        let capture = Capture {
            protocol: "http".to_owned(),
            name: "get".to_owned(),
            client: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            server: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        };
        let input = parser_input(&capture);
        assert_eq!(input[0] & 3, 3, "both sides done at the end");
        assert_eq!(u16::from_be_bytes([input[1], input[2]]), 18);
        assert_eq!(&input[3..21], capture.client.as_slice());
        assert_eq!(&input[21..], capture.server.as_slice());
    }

    #[test]
    fn an_engine_seed_is_records_whose_lengths_add_up() {
        let capture = Capture {
            protocol: "tls".to_owned(),
            name: "big".to_owned(),
            client: vec![0x16; 3000],
            server: vec![0x16; 10],
        };
        let input = engine_input(&capture);
        let mut at = 0;
        let mut payload = 0;
        let mut records = 0;
        while at < input.len() {
            assert_eq!(input[at + 1] >> 4, 3, "the TLS port's index");
            let len = usize::from(u16::from_be_bytes([input[at + 3], input[at + 4]]));
            payload += len;
            at += 5 + len;
            records += 1;
        }
        assert_eq!(at, input.len());
        assert_eq!(payload, 3010);
        // SYN, SYN+ACK, ACK, three client segments, one server segment, two FINs.
        assert_eq!(records, 9);
    }
}
