//! `cargo xtask test`: the whole test run a developer or CI wants, in one command.
//!
//! Installs what is missing, builds every binary, then runs `cargo test` with `CRMGUARD_BIN`
//! pointing at the freshly built daemon. The privileged suite needs root: as a normal user with
//! sudo the test step runs under sudo, otherwise the suite reports its skips (and fails under
//! `CRMGUARD_REQUIRE_PRIVILEGED=1`). cargo's output streams through unchanged; the `test result:`
//! lines are summed into one closing line, `crmguard: N passed, N failed`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::deps;
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Run only the privileged suite (package crmguard-tests, test binary `suite`).
    #[arg(long)]
    privileged_only: bool,
    /// Do not check or install Debian packages.
    #[arg(long)]
    no_deps: bool,
    /// Arguments for the test binaries, e.g. a name filter: `cargo xtask test -- fail_static`.
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_deps {
        deps::ensure(deps::Task::Test)?;
    }
    let ws = Workspace::load()?;
    cmd::run(ws.cargo().args(["build", "--workspace", "--bins"]))?;
    let bin = ws.bin("debug", "crmguard");
    if !bin.is_file() {
        bail!("the build produced no {}", bin.display());
    }

    let mut cargo_args: Vec<&str> = vec!["test", "--no-fail-fast"];
    if args.privileged_only {
        cargo_args.extend(["--package", "crmguard-tests", "--test", "suite"]);
    } else {
        cargo_args.push("--workspace");
    }

    let vars = [("CRMGUARD_BIN", OsString::from(&bin))];
    let mut test = if cmd::is_root() {
        let mut test = ws.cargo();
        test.envs(vars.iter().map(|(key, value)| (key, value)));
        test
    } else if cmd::which("sudo").is_some() {
        // Compile as this user first so the run under sudo finds everything built and leaves
        // no root-owned files in target/.
        cmd::run(ws.cargo().args(&cargo_args).arg("--no-run"))?;
        eprintln!("xtask: the privileged suite needs root; running the tests under sudo");
        let mut vars = vars.to_vec();
        vars.extend(rust_homes()?);
        let mut test = cmd::as_root(&cargo_program(), &vars)?;
        test.current_dir(&ws.root);
        test
    } else {
        eprintln!(
            "xtask: not root and no sudo: the privileged suite will skip its tests \
             (and fail where CRMGUARD_REQUIRE_PRIVILEGED=1)"
        );
        let mut test = ws.cargo();
        test.envs(vars.iter().map(|(key, value)| (key, value)));
        test
    };
    test.args(&cargo_args);
    if !args.test_args.is_empty() {
        test.arg("--").args(&args.test_args);
    }

    let (status, totals) = stream(&mut test)?;
    match totals {
        Some(totals) => println!("crmguard: {totals}"),
        None => println!("crmguard: no test ran"),
    }
    if !status.success() {
        bail!("`{}` failed ({status})", cmd::display(&test));
    }
    match totals {
        None => bail!("cargo test ran no test"),
        Some(totals) if totals.failed > 0 => bail!("{} tests failed", totals.failed),
        Some(_) => Ok(()),
    }
}

/// Runs `cmd`, copying its stdout line by line to ours while summing `test result:` lines.
fn stream(cmd: &mut Command) -> Result<(std::process::ExitStatus, Option<Totals>)> {
    eprintln!("$ {}", cmd::display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
    let pipe = child.stdout.take().context("child has no stdout pipe")?;
    let mut totals: Option<Totals> = None;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(pipe).lines() {
        let line = line.context("cannot read cargo test's output")?;
        writeln!(out, "{line}")?;
        out.flush()?;
        if let Some(result) = Totals::parse(&line) {
            totals = Some(totals.unwrap_or_default().add(result));
        }
    }
    let status = child.wait().context("cannot wait for cargo test")?;
    Ok((status, totals))
}

pub(crate) fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// CARGO_HOME and RUSTUP_HOME as this user sees them, so cargo under sudo finds the same
/// toolchain and registry cache instead of root's.
pub(crate) fn rust_homes() -> Result<Vec<(&'static str, OsString)>> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut vars = Vec::new();
    for (var, default) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
        let value = match (std::env::var_os(var), &home) {
            (Some(value), _) => value,
            (None, Some(home)) => home.join(default).into_os_string(),
            (None, None) => bail!("neither {var} nor HOME is set"),
        };
        vars.push((var, value));
    }
    Ok(vars)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Reads libtest's closing line of one test binary:
    /// `test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ...`.
    fn parse(line: &str) -> Option<Totals> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, counts) = rest.split_once(". ")?;
        let mut totals = Totals::default();
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(number), Some(word)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match word {
                "passed" => totals.passed = number,
                "failed" => totals.failed = number,
                "ignored" => totals.ignored = number,
                _ => {}
            }
        }
        Some(totals)
    }

    fn add(self, other: Totals) -> Totals {
        Totals {
            passed: self.passed + other.passed,
            failed: self.failed + other.failed,
            ignored: self.ignored + other.ignored,
        }
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.ignored > 0 {
            write!(f, ", {} skipped", self.ignored)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<Totals>) {
        assert_eq!(Totals::parse(line), expected, "{line}");
    }

    #[test]
    fn reads_libtest_result_lines() {
        check(
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            Some(Totals { passed: 12, failed: 0, ignored: 0 }),
        );
        check(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 5 filtered out; finished in 1.20s",
            Some(Totals { passed: 3, failed: 2, ignored: 1 }),
        );
        check("running 12 tests", None);
        check("test fail_static ... ok", None);
    }

    #[test]
    fn prints_the_plain_closing_line() {
        let totals = Totals {
            passed: 57,
            failed: 0,
            ignored: 0,
        };
        assert_eq!(totals.to_string(), "57 passed, 0 failed");
        let totals = totals.add(Totals {
            passed: 0,
            failed: 1,
            ignored: 2,
        });
        assert_eq!(totals.to_string(), "57 passed, 1 failed, 2 skipped");
    }
}
