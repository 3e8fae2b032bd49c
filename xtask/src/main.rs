//! `cargo xtask`: crmguard's compound tasks.
//!
//! Plain `cargo build` and `cargo test` work without this crate. xtask only chains what a
//! developer, CI or a packager would otherwise type by hand: installing the Debian packages a
//! task needs, running the privileged suite as root, the network-namespace demo, lints, the
//! Debian package, long differential runs of the XDP program against its reference model, and the
//! coverage-guided fuzzing of inspection.

mod bench;
mod corpus;
mod deb;
mod demo;
mod deps;
mod fuzz;
mod fuzz_parsers;
mod lint;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "crmguard's compound tasks",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing Debian packages, build, run the unit tests and the privileged suite.
    Test(test::Args),
    /// Check formatting, clippy warnings, alert rules and shell scripts.
    Lint,
    /// Build a lab of network namespaces and show crmguard filtering real connections.
    Demo(demo::Args),
    /// Build a Debian package (target/deb/crmguard_VERSION_ARCH.deb).
    Deb(deb::Args),
    /// Install, upgrade (under a flood), remove and purge the package with dpkg in a Debian root.
    DebTest(deb::test::Args),
    /// Measure performance side by side with the comparators (ratios from one run).
    Bench(bench::Args),
    /// Compare the XDP program with the agent's reference model on 10^7 generated frames.
    FuzzXdp(fuzz::Args),
    /// Record real protocol flows (inspect/corpus) from real clients and servers in a lab.
    Corpus(corpus::Args),
    /// Run the coverage-guided fuzz targets of inspection: every parser, the reassembly, the engine.
    Fuzz(fuzz_parsers::Args),
    /// Install the Debian packages and Rust components a task needs, and nothing else.
    Deps {
        #[arg(value_enum)]
        task: deps::Task,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test(args) => test::run(&args),
        Task::Lint => lint::run(),
        Task::Demo(args) => demo::run(&args),
        Task::Deb(args) => deb::run(&args),
        Task::DebTest(args) => deb::test::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::FuzzXdp(args) => fuzz::run(&args),
        Task::Corpus(args) => corpus::run(&args),
        Task::Fuzz(args) => fuzz_parsers::run(&args),
        Task::Deps { task } => deps::ensure(task),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
