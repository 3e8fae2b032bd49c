//! The `crmguard` command: argument parsing, logging and exit codes. All the
//! work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crmguard::config::{self, LogFormat};
use crmguard::control::{self, Request, Response, Status};
use crmguard::daemon::{self, ConfigSource, DaemonError, RunOptions};
use crmguard::datapath;
use crmguard::exit;

/// The configuration read when `--config` is not given.
const DEFAULT_CONFIG: &str = "/etc/crmguard/crmguard.toml";

/// crmguard: host firewall (XDP) and WireGuard gateway for servers that hold
/// customer data.
///
/// Exit codes: 0 success, 1 runtime failure, 64 bad usage or configuration,
/// 69 the kernel lacks a needed feature (named in the message).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file [default: /etc/crmguard/crmguard.toml; without it,
    /// the embedded default policy]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: attach the XDP filter, enforce the policy, serve the
    /// control socket and metrics. SIGHUP reloads; SIGTERM/SIGINT stop the
    /// agent and leave the filter enforcing.
    Run {
        /// Remove the XDP filter when the agent stops (default: keep enforcing)
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Validate the configuration and print every problem with its location
    /// (exit 0 when valid, 64 when not)
    Check,
    /// Show the running agent's interfaces, attach modes, policy generation
    /// and counters
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration and apply it (same as SIGHUP); a bad
    /// configuration is refused and the running policy stays
    Reload,
    /// Remove the XDP filter from every interface and delete crmguard's
    /// pinned maps (the host is then unfiltered)
    Uninstall,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(dispatch(cli))
}

fn source(cli_config: Option<&Path>) -> ConfigSource {
    match cli_config {
        Some(path) => ConfigSource::File(path.to_owned()),
        None if Path::new(DEFAULT_CONFIG).exists() => ConfigSource::File(DEFAULT_CONFIG.into()),
        None => ConfigSource::Embedded,
    }
}

/// Loads the configuration for a client command, printing errors.
fn load(source: &ConfigSource) -> Result<config::Config, u8> {
    source.load().map_err(|errors| {
        eprintln!("{errors}");
        exit::USAGE
    })
}

fn dispatch(cli: Cli) -> u8 {
    let source = source(cli.config.as_deref());
    match cli.command {
        Command::Run { detach_on_exit } => run(RunOptions {
            source,
            detach_on_exit,
        }),
        Command::Check => check(&source),
        Command::Status { json } => match load(&source) {
            Ok(config) => status(&config.agent.control_socket, json),
            Err(code) => code,
        },
        Command::Reload => match load(&source) {
            Ok(config) => reload(&config.agent.control_socket),
            Err(code) => code,
        },
        Command::Uninstall => match load(&source) {
            Ok(config) => uninstall(&config.agent.bpffs_dir),
            Err(code) => code,
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRMGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(options: RunOptions) -> u8 {
    let config = match options.source.load() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return exit::USAGE;
        }
    };
    init_logging(config.agent.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crmguard: cannot start the runtime: {e}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(options)) {
        Ok(()) => exit::OK,
        Err(e) => {
            let code = exit_code(&e);
            tracing::error!(error = %daemon::describe(&e), "crmguard stopped");
            eprintln!("crmguard: {}", daemon::describe(&e));
            code
        }
    }
}

fn exit_code(error: &DaemonError) -> u8 {
    match error {
        DaemonError::Config(_) | DaemonError::Policy(_) => exit::USAGE,
        DaemonError::Datapath(e) => match e.missing_feature() {
            Some(feature) => {
                eprintln!("crmguard: this kernel lacks {feature}");
                exit::UNAVAILABLE
            }
            None => exit::FAILURE,
        },
        _ => exit::FAILURE,
    }
}

fn check(source: &ConfigSource) -> u8 {
    let config = match source.load() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return exit::USAGE;
        }
    };
    if let Err(e) = crmguard::policy::compile(&config) {
        eprintln!("{}: {e}", source.describe());
        return exit::USAGE;
    }
    println!("{}: ok", source.describe());
    exit::OK
}

fn call(socket: &Path, request: Request) -> Result<Response, u8> {
    control::call(socket, &request).map_err(|e| {
        eprintln!("crmguard: {}", datapath::error_chain(&e));
        exit::FAILURE
    })
}

fn status(socket: &Path, json: bool) -> u8 {
    match call(socket, Request::Status) {
        Ok(Response::Status(status)) => {
            if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("crmguard: {e}");
                        return exit::FAILURE;
                    }
                }
            } else {
                print_status(&status);
            }
            exit::OK
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

fn print_status(status: &Status) {
    println!(
        "crmguard {}  mode {}  policy generation {}",
        status.version, status.mode, status.generation
    );
    println!("config: {}", status.config);
    println!();
    println!("{:<16} {:>8} {:<8} ATTACHED", "INTERFACE", "IFINDEX", "XDP");
    for i in &status.interfaces {
        let how = if i.adopted {
            "adopted from a previous agent"
        } else {
            "by this agent"
        };
        println!("{:<16} {:>8} {:<8} {}", i.name, i.ifindex, i.mode, how);
    }
    println!();
    println!(
        "{:<16} {:<11} {:<18} {:>12} {:>14}",
        "INTERFACE", "ACTION", "REASON", "PACKETS", "BYTES"
    );
    for c in &status.counters {
        println!(
            "{:<16} {:<11} {:<18} {:>12} {:>14}",
            c.interface, c.action, c.reason, c.packets, c.bytes
        );
    }
}

fn reload(socket: &Path) -> u8 {
    match call(socket, Request::Reload) {
        Ok(Response::Reloaded { generation }) => {
            println!("reloaded: policy generation {generation}");
            exit::OK
        }
        Ok(Response::Error { message }) => {
            eprintln!("crmguard: reload refused, the running policy stays in force:\n{message}");
            exit::USAGE
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

fn unexpected(response: Response) -> u8 {
    match response {
        Response::Error { message } => eprintln!("crmguard: {message}"),
        other => eprintln!("crmguard: unexpected answer from the agent: {other:?}"),
    }
    exit::FAILURE
}

fn uninstall(bpffs_dir: &Path) -> u8 {
    match daemon::uninstall(bpffs_dir) {
        Ok(removed) if removed.is_empty() => {
            println!(
                "no XDP filter was attached; removed crmguard's pinned state under {}",
                bpffs_dir.display()
            );
            exit::OK
        }
        Ok(removed) => {
            println!("removed the XDP filter from: {}", removed.join(", "));
            exit::OK
        }
        Err(e) => {
            eprintln!("crmguard: {}", datapath::error_chain(&e));
            exit::FAILURE
        }
    }
}
