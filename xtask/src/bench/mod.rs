//! `cargo xtask bench`: performance measured side by side in one run, printed
//! as ratios against the comparators of PERFORMANCE.md and written as JSON
//! under `target/bench/`.

mod vpn;
mod xdp;

use anyhow::Result;
use clap::ValueEnum;

use crate::deps;
use crate::workspace::Workspace;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Suite {
    /// XDP per-packet cost against the empty program and xdp-filter
    Xdp,
    /// VPN goodput, CPU per GB, syscalls per packet and memory against wireguard-go and
    /// boringtun-cli
    Vpn,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which bench to run (default: all)
    #[arg(value_enum)]
    suite: Option<Suite>,
    /// Fewer and shorter VPN transfers (3 rounds of 3 s), for development
    #[arg(long)]
    quick: bool,
    /// Do not check or install Debian packages
    #[arg(long)]
    no_deps: bool,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_deps {
        deps::ensure(deps::Task::Bench)?;
    }
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
            "--no-deps",
        ]);
        if args.quick {
            cmd.arg("--quick");
        }
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
    let plan = if args.quick {
        vpn::Plan::QUICK
    } else {
        vpn::Plan::FULL
    };
    match args.suite {
        Some(Suite::Xdp) => xdp::run(&out),
        Some(Suite::Vpn) => vpn::run(&workspace, &out, plan),
        None => {
            xdp::run(&out)?;
            vpn::run(&workspace, &out, plan)
        }
    }
}
