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
    let out = Workspace::load()?.target_dir.join("bench");
    match args.suite {
        Some(Suite::Xdp) | None => xdp::run(&out),
    }
}
