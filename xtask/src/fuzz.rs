//! `cargo xtask fuzz-xdp`: the differential test of the XDP program against the agent's
//! reference model (`tests/suite/differential.rs`), run for many more frames than the suite
//! runs by default.
//!
//! It runs that one test of the privileged suite, optimised, with `CRMGUARD_DIFF_FRAMES` and
//! `CRMGUARD_DIFF_SEED` set, as root (through sudo when needed) and with
//! `CRMGUARD_REQUIRE_PRIVILEGED=1`, so that a machine where the test cannot run fails instead of
//! reporting a skip. The test prints its seed first and, on a difference, the frame and the
//! command that replays it.

use std::ffi::OsString;

use anyhow::Result;

use crate::test::{cargo_program, rust_homes};
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Frames to generate and compare.
    #[arg(long, default_value_t = 10_000_000)]
    frames: u64,
    /// Seed of the frame generator (decimal, or hex with 0x); default: drawn from the clock.
    #[arg(long)]
    seed: Option<String>,
    /// Build without optimisations: quicker to build, about half as fast to run.
    #[arg(long)]
    debug: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let ws = Workspace::load()?;
    let mut cargo_args = vec!["test"];
    if !args.debug {
        cargo_args.push("--release");
    }
    cargo_args.extend(["--package", "crmguard-tests", "--test", "suite"]);

    let mut vars: Vec<(&str, OsString)> = vec![
        ("CRMGUARD_DIFF_FRAMES", args.frames.to_string().into()),
        ("CRMGUARD_REQUIRE_PRIVILEGED", "1".into()),
    ];
    if let Some(seed) = &args.seed {
        vars.push(("CRMGUARD_DIFF_SEED", seed.into()));
    }
    let test_filter = ["differential::", "--nocapture"];

    let mut test = if cmd::is_root() {
        let mut test = ws.cargo();
        test.envs(vars.iter().map(|(key, value)| (key, value)));
        test
    } else {
        // Compile as this user first so the run under sudo finds everything built and leaves
        // no root-owned files in target/.
        cmd::run(ws.cargo().args(&cargo_args).arg("--no-run"))?;
        eprintln!("xtask: the differential test loads BPF programs; running it under sudo");
        vars.extend(rust_homes()?);
        let mut test = cmd::as_root(&cargo_program(), &vars)?;
        test.current_dir(&ws.root);
        test
    };
    test.args(&cargo_args).arg("--").args(test_filter);
    cmd::run(&mut test)
}
