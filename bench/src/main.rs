//! `crmguard-bench`: performance measured side by side in one run, printed as ratios against
//! the comparators (xdp-filter and the empty program for XDP; wireguard-go and boringtun-cli
//! for the VPN) and written as JSON under `target/bench/`.
//!
//! Run it through `cargo xtask bench`, which first installs the Debian packages it needs
//! (clang builds the XDP program this binary links), then builds and runs this crate in release
//! mode: parse and apply times are only meaningful from an optimised build.

mod detect;
mod flood;
mod handshakes;
mod inspect_table;
mod latency;
mod memory;
mod noise_ceiling;
mod profile;
mod vpn;
mod xdp;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use crmguard_lab::workspace::Workspace;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Suite {
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

#[derive(Parser)]
#[command(
    name = "crmguard-bench",
    about = "crmguard's benchmarks (run by `cargo xtask bench`)"
)]
struct Args {
    /// Which bench to run (default: all)
    #[arg(value_enum)]
    suite: Option<Suite>,
    /// Fewer and shorter VPN transfers (3 rounds of 3 s), for development
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crmguard-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let workspace = Workspace::load()?;
    let out = workspace.target_dir.join("bench");
    let plan = if args.quick {
        vpn::Plan::QUICK
    } else {
        vpn::Plan::FULL
    };
    match args.suite {
        Some(Suite::Xdp) => xdp::run(&out),
        Some(Suite::Vpn) => vpn::run(&workspace, &out, plan),
        Some(Suite::Memory) => vpn::run_memory(&workspace, &out),
        Some(Suite::Detect) => detect::run(&workspace, &out),
        Some(Suite::Handshakes) => vpn::run_handshakes(&workspace, &out, plan),
        None => {
            xdp::run(&out)?;
            vpn::run(&workspace, &out, plan)?;
            detect::run(&workspace, &out)
        }
    }
}
