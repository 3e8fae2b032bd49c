//! `cargo xtask bench`: installs what the benchmarks compare with, then builds and runs the
//! `crmguard-bench` binary in release mode.
//!
//! The benchmarks link the datapath, whose build script needs clang; xtask itself must build on
//! a machine that has none yet, so the benchmarks live in their own crate and are compiled only
//! after `deps` has installed what they need.

use anyhow::Result;
use clap::ValueEnum;
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

use crate::deps;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Suite {
    /// XDP per-packet cost against the empty program and xdp-filter
    Xdp,
    /// VPN goodput, CPU per GB, syscalls per packet and memory against wireguard-go and
    /// boringtun-cli
    Vpn,
    /// The agent's memory with 1,000 and 10,000 configured peers (the VPN bench's memory
    /// rows alone)
    Memory,
    /// Detection: log line to kernel ban latency, a CrowdSec stream of 100,000 decisions,
    /// log-source throughput
    Detect,
    /// Only the VPN's handshakes a second against wireguard-go (part of `vpn`)
    Handshakes,
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
    let mut bench = workspace.cargo();
    bench.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "crmguard-bench",
        "--",
    ]);
    if args.quick {
        bench.arg("--quick");
    }
    if let Some(suite) = args.suite.and_then(|s| s.to_possible_value()) {
        bench.arg(suite.get_name());
    }
    cmd::run(&mut bench)
}
