//! `cargo xtask bench`: performance measured side by side in one run, printed
//! as ratios against the comparators of PERFORMANCE.md and written as JSON
//! under `target/bench/`.

mod xdp;

use anyhow::Result;
use clap::ValueEnum;

use crate::workspace::Workspace;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Suite {
    /// XDP per-packet cost against the empty program and xdp-filter
    Xdp,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which bench to run (default: all)
    #[arg(value_enum)]
    suite: Option<Suite>,
}

pub fn run(args: &Args) -> Result<()> {
    let workspace = Workspace::load()?;
    // The agent ships optimised; parse and apply times are only meaningful
    // from a release build, so a debug xtask hands over to one.
    if cfg!(debug_assertions) {
        let mut cmd = workspace.cargo();
        cmd.args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
        ]);
        if let Some(suite) = args.suite {
            cmd.arg(
                suite
                    .to_possible_value()
                    .map_or("xdp".to_owned(), |v| v.get_name().to_owned()),
            );
        }
        return crate::cmd::run(&mut cmd);
    }
    let out = workspace.target_dir.join("bench");
    match args.suite {
        Some(Suite::Xdp) | None => xdp::run(&out),
    }
}
