//! The `crmguard` command: argument parsing, logging and exit codes. All the
//! work is in the library.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod cli_audit;
mod cli_backup;
mod cli_explain;
mod cli_generate;
mod cli_peer;
#[cfg(test)]
mod guide_check;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crmguard::control::{self, BanAdded, BanStatus, Request, Response, Status};
use crmguard::daemon::{self, ConfigSource, DaemonError, RunOptions};
use crmguard::handout::{self, EnrollHandout};
use crmguard::i18n::Lang;
use crmguard_core::audit;
use crmguard_core::config::{self, LogFormat};
use crmguard_core::exit;
use crmguard_core::mfa;

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
    /// Validate the configuration and run its own tests ([[test]]); print every
    /// problem and broken test with its location (exit 0 when valid, 64 when not)
    ///
    /// Also warns, without failing, when the policy would drop the SSH connection the
    /// command runs in (SSH_CONNECTION) or an admin network a service names in `from`.
    Check,
    /// Say what the policy does with one packet, and why: the verdict, the reason (as
    /// the metrics name it) and the rule that decided
    ///
    /// For a packet from outside (--from) the answer is the XDP filter's, with the bans
    /// in force; for a peer's packet (--peer) it is the identity ACL's, with the role's
    /// hours and the peer's MFA session. The running agent answers from the policy in
    /// force; without an agent, or with --config-only, the configuration file answers.
    Explain(cli_explain::ExplainArgs),
    /// Show the running agent's interfaces, attach modes, policy generation
    /// and counters
    ///
    /// Also a change applied by `reload --confirm` that waits for `crmguard confirm` (with
    /// its deadline), and in monitor mode, or under the embedded default policy, what enforcing
    /// drops by reason (exact) and by service (from sampled drop events).
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration and apply it (same as SIGHUP); a bad
    /// configuration is refused and the running policy stays
    ///
    /// Warns, without failing, when the new policy would drop the SSH connection the command
    /// runs in (SSH_CONNECTION) or an admin network a service names in `from`. With --confirm
    /// the policy in force now comes back by itself unless `crmguard confirm` follows in time.
    /// While such a change waits, every other reload is refused (exit 64).
    Reload {
        /// Roll back to the policy in force now unless `crmguard confirm` follows within
        /// DURATION, such as 120s or 5m (1s to 1h); only a confirmed policy becomes the last
        /// good one
        #[arg(long, value_name = "DURATION", value_parser = parse_confirm)]
        confirm: Option<Duration>,
    },
    /// Keep the policy applied by `crmguard reload --confirm` (exit 1 when none is pending,
    /// for instance because it was rolled back already)
    Confirm,
    /// Remove the XDP filter from every interface and delete crmguard's
    /// pinned maps (the host is then unfiltered)
    Uninstall,
    /// Ban source addresses or prefixes in the XDP filter, list bans, lift them
    Ban {
        #[command(subcommand)]
        command: BanCommand,
    },
    /// Check the audit log's records and chain
    Audit {
        #[command(subcommand)]
        command: cli_audit::AuditCommand,
    },
    /// Register, list, remove, disable and enable VPN peers (staff devices)
    Peer {
        #[command(subcommand)]
        command: cli_peer::PeerCommand,
    },
    /// Enroll peers in the TOTP second factor
    Mfa {
        #[command(subcommand)]
        command: MfaCommand,
    },
    /// Back up the gateway's state to a signed, encrypted archive; verify and restore one
    Backup {
        #[command(subcommand)]
        command: cli_backup::BackupCommand,
    },
    /// Write man pages or print shell completions (for packaging)
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: cli_generate::GenerateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MfaCommand {
    /// Make a new TOTP secret for the peer NAME and print it as an otpauth:// URI and a
    /// terminal QR code for an authenticator app
    ///
    /// The secret is stored in the state directory (mfa/NAME.secret, mode 0600). Enrolling
    /// again replaces it: the peer's old authenticator entry stops working. Exit 64 when no
    /// peer NAME is configured, 1 when the secret cannot be made or saved.
    Enroll {
        /// The peer's name, as in the configuration or the peers file
        #[arg(value_name = "NAME")]
        name: String,
        /// The language of the instructions printed for the staff member, en or ru
        /// [default: from LC_ALL, LC_MESSAGES or LANG; else en]
        #[arg(long, value_name = "LANG")]
        lang: Option<Lang>,
    },
}

#[derive(Debug, Subcommand)]
enum BanCommand {
    /// Ban ADDR or ADDR/LEN until the ban expires or is removed
    ///
    /// The filter drops the source's packets (reason `banned`) until then,
    /// also while the agent is not running. A second ban of the same network
    /// replaces the first.
    ///
    /// Never banned: /0, loopback, the unspecified address. Prefixes shorter
    /// than /8 (IPv4) or /32 (IPv6) and networks that contain one of this
    /// host's own addresses need --force. Exit 0 when the ban is in force, 64
    /// when it is refused, 1 when the agent is unreachable or the ban could
    /// not be saved or enforced.
    Add {
        /// The address or prefix; host bits of a prefix are cleared
        #[arg(value_name = "ADDR[/LEN]", value_parser = parse_net)]
        net: IpNet,
        /// How long the ban lasts, such as 30s, 30m, 12h, 7d or 2w [default:
        /// until `ban remove`]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Why, as `ban list` and `status` show it
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Also ban broad prefixes and networks that contain this host's own
        /// addresses
        #[arg(long)]
        force: bool,
    },
    /// List the bans in force
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban of ADDR or ADDR/LEN at once
    Remove {
        /// The address or prefix, as it was banned
        #[arg(value_name = "ADDR[/LEN]", value_parser = parse_net)]
        net: IpNet,
    },
}

/// An address (a /32 or /128) or a prefix.
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "`{text}` is not an IP address or prefix (such as 203.0.113.7 or 203.0.113.0/24)"
            )
        })
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    config::parse_duration(text).map_err(|e| e.to_string())
}

/// The confirmation time of `reload --confirm`: a duration of 1s to 1h.
fn parse_confirm(text: &str) -> Result<Duration, String> {
    let duration = config::parse_duration(text).map_err(|e| e.to_string())?;
    let (min, max) = (daemon::CONFIRM_MIN, daemon::CONFIRM_MAX);
    if (min..=max).contains(&duration) {
        Ok(duration)
    } else {
        Err(format!(
            "`{text}` is not between {}s and {}s",
            min.as_secs(),
            max.as_secs()
        ))
    }
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

/// The `[agent]` section (socket, pin directory) for a command that must work while the
/// configuration is broken: the configuration's own, else its `[agent]` section alone when that
/// is valid, else the defaults. The errors are printed, then what the command does anyway.
fn agent_section(source: &ConfigSource, anyway: &str) -> config::Agent {
    match source.load() {
        Ok(config) => config.agent,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("crmguard: the configuration does not load; {anyway}");
            source
                .plumbing()
                .map_or_else(|| config::default_policy().agent, |p| p.agent)
        }
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
        Command::Explain(args) => cli_explain::run(&source, args),
        // The agent may be enforcing a fallback policy because of the file's very errors.
        Command::Status { json } => status(
            &agent_section(&source, "asking the agent anyway").control_socket,
            json,
        ),
        Command::Reload { confirm } => match load(&source) {
            Ok(config) => {
                if let Ok(policy) = crmguard_core::policy::compile(&config) {
                    cli_explain::warn_lockout(&config, &policy);
                }
                match confirm {
                    None => reload(&config.agent.control_socket),
                    Some(timeout) => reload_confirm(&config.agent.control_socket, timeout),
                }
            }
            Err(code) => code,
        },
        // The pending change may be what broke the file.
        Command::Confirm => {
            confirm(&agent_section(&source, "confirming all the same").control_socket)
        }
        // A broken deny or peers file must not keep the filter on a host being cleaned up
        // (the package's removal runs this).
        Command::Uninstall => uninstall(&agent_section(&source, "uninstalling all the same")),
        Command::Ban { command } => match load(&source) {
            Ok(config) => ban(&config.agent.control_socket, command),
            Err(code) => code,
        },
        Command::Audit { command } => match load(&source) {
            Ok(config) => cli_audit::run(&config, command),
            Err(code) => code,
        },
        Command::Peer { command } => match load(&source) {
            Ok(config) => cli_peer::run(&config, &source, command, &admin_actor(), locale()),
            Err(code) => code,
        },
        Command::Mfa { command } => match load(&source) {
            Ok(config) => mfa(&config, &source, command, locale()),
            Err(code) => code,
        },
        // Restoring onto a fresh host starts without a configuration: the command loads it
        // only where it needs it.
        Command::Backup { command } => cli_backup::run(
            &source,
            cli.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)),
            command,
            &admin_actor(),
        ),
        Command::Generate { command } => cli_generate::run(command),
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
    // A configuration that does not load does not stop the start: the agent enforces a
    // fallback policy and says why (daemon::run). Its log format is the file's when its
    // [agent] section can be read.
    let log_format = match options.source.load() {
        Ok(config) => config.agent.log_format,
        Err(errors) => {
            eprintln!("{errors}");
            options
                .source
                .plumbing()
                .map_or(LogFormat::Text, |p| p.agent.log_format)
        }
    };
    init_logging(log_format);
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
        DaemonError::Config(_) | DaemonError::Policy(_) | DaemonError::PolicyTests(_) => {
            exit::USAGE
        }
        DaemonError::BansFile(e) if e.is_invalid() => exit::USAGE,
        DaemonError::Datapath(e) if e.is_foreign_abi() => {
            eprintln!("crmguard: {}", crmguard_datapath::stamp::FOREIGN_ADVICE);
            exit::UNAVAILABLE
        }
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
    let policy = match crmguard_core::policy::compile(&config) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("{}: {e}", source.describe());
            return exit::USAGE;
        }
    };
    cli_explain::warn_lockout(&config, &policy);
    if !cli_explain::run_tests(&config, &policy) {
        return exit::USAGE;
    }
    match config.tests.len() {
        0 => println!("{}: ok", source.describe()),
        n => println!("{}: ok, {n} policy tests pass", source.describe()),
    }
    exit::OK
}

fn call(socket: &Path, request: Request) -> Result<Response, u8> {
    control::call(socket, &request).map_err(|e| {
        eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
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
    if status.policy_source != "config" {
        println!(
            "POLICY FALLBACK: enforcing the {} policy; the configuration could not be used at start:",
            status.policy_source
        );
        if let Some(error) = &status.policy_error {
            for line in error.lines() {
                println!("  {line}");
            }
        }
        println!("  fix it, then run `crmguard reload`");
    }
    if let Some(pending) = &status.pending_change {
        println!(
            "PENDING CHANGE: policy generation {} applied by {} is rolled back at {} ({}s left) unless `crmguard confirm` keeps it",
            pending.generation, pending.by, pending.deadline, pending.seconds_left
        );
    }
    if let Some(at) = &status.last_rollback {
        println!("last unconfirmed change rolled back at {at}");
    }
    println!();
    println!(
        "{:<16} {:>8} {:<8} {:<8} ATTACHED",
        "INTERFACE", "IFINDEX", "XDP", "EGRESS"
    );
    for i in &status.interfaces {
        let how = if i.adopted {
            "adopted from a previous agent"
        } else {
            "by this agent"
        };
        let egress = i.egress.as_deref().unwrap_or("-");
        println!(
            "{:<16} {:>8} {:<8} {:<8} {}",
            i.name, i.ifindex, i.mode, egress, how
        );
        if let Some(reason) = &i.chosen_because {
            println!("{:<16} chosen: {reason}", "");
        }
    }
    for f in &status.interfaces_failed {
        println!("{:<16} NOT FILTERED: {}", f.name, f.error);
    }
    if status.policy_divergence_entries > 0 {
        println!(
            "the kernel's policy differed from the configuration in {} entries at the last check (repaired)",
            status.policy_divergence_entries
        );
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
    println!();
    if let Some(vpn) = &status.vpn {
        print!("{}", vpn.describe());
        println!();
        if let Some(inspection) = &status.inspection {
            print!("{}", inspection.describe());
            println!();
        }
        if let Some(cs) = &status.crowdsec {
            println!(
                "CrowdSec {}: {}, {} decisions in force{}",
                cs.url,
                if cs.reachable {
                    "reachable"
                } else {
                    "NOT reachable"
                },
                cs.decisions,
                cs.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            );
            println!();
        }
        print_access(status);
    }
    print_bans(&status.bans);
    print_tally(status);
    print_recent_drops(status);
}

/// In monitor mode, what enforce mode would have dropped; under the embedded default policy,
/// what it drops: by reason from the counters (exact), by service from the sampled events.
fn print_tally(status: &Status) {
    let Some(tally) = &status.drop_tally else {
        return;
    };
    let (action, title) = if status.mode == "monitor" {
        (
            "would_drop",
            "MONITOR MODE: enforce mode would have dropped",
        )
    } else {
        ("drop", "EMBEDDED DEFAULT POLICY: dropped")
    };
    let mut by_reason: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for c in status.counters.iter().filter(|c| c.action == action) {
        *by_reason.entry(c.reason.as_str()).or_default() += c.packets;
    }
    println!();
    println!("{title}, by reason (packets):");
    if by_reason.is_empty() {
        println!("  nothing");
    }
    for (reason, packets) in &by_reason {
        println!("  {reason:<18} {packets:>12}");
    }
    println!(
        "by reason and service ({} sampled drop events; a sample, not every packet):",
        tally.sampled
    );
    println!("  {:<18} {:<12} {:>10}", "REASON", "SERVICE", "SAMPLES");
    for e in tally.entries.iter().filter(|e| e.action == action) {
        println!("  {:<18} {:<12} {:>10}", e.reason, e.service, e.samples);
    }
    if tally.unlisted > 0 {
        println!(
            "  {} samples of further services not listed",
            tally.unlisted
        );
    }
}

/// The MFA portal, the open sessions and the code attempts.
fn print_access(status: &Status) {
    match &status.portal {
        Some(portal) if portal.error.is_none() => {
            println!("MFA portal: http://{}/", portal.listening.join(", http://"));
        }
        Some(portal) => println!(
            "MFA portal: not listening: {}",
            portal.error.as_deref().unwrap_or("")
        ),
        None => println!("MFA portal: off"),
    }
    if status.mfa_sessions.is_empty() {
        println!("MFA sessions: none open");
    }
    for (peer, until) in &status.mfa_sessions {
        println!("MFA session: {peer} until {until}");
    }
    let attempts: Vec<String> = status
        .mfa_attempts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(result, n)| format!("{result} {n}"))
        .collect();
    if !attempts.is_empty() {
        println!("MFA codes tried since start: {}", attempts.join(", "));
    }
    println!();
}

/// The last few sampled drops, newest last.
fn print_recent_drops(status: &Status) {
    const SHOWN: usize = 10;
    println!();
    println!(
        "{} drops sampled since start; the most recent:",
        status.drop_events_total
    );
    let skip = status.recent_drops.len().saturating_sub(SHOWN);
    for d in status.recent_drops.iter().skip(skip) {
        println!(
            "  {:<12} {:<10} {:<17} {} -> {} proto {} ports {} -> {}",
            d.interface, d.action, d.reason, d.src, d.dst, d.proto, d.sport, d.dport
        );
    }
}

fn print_bans(bans: &[BanStatus]) {
    if bans.is_empty() {
        println!("no bans");
        return;
    }
    let nets: Vec<String> = bans.iter().map(|b| b.net.to_string()).collect();
    let width = nets.iter().map(String::len).max().unwrap_or(0).max(3);
    println!(
        "{:<width$} {:<27} {:<24} REASON",
        "BANNED", "EXPIRES", "SOURCE"
    );
    for (ban, net) in bans.iter().zip(&nets) {
        println!(
            "{net:<width$} {:<27} {:<24} {}",
            ban.expires.as_deref().unwrap_or("never"),
            ban.source,
            ban.reason
        );
    }
}

/// Who runs this command, for the records the CLI writes itself (the agent attributes what it
/// is asked from the connection's credentials instead).
fn admin_actor() -> String {
    crmguard::control::caller::this_process()
}

fn ban(socket: &Path, command: BanCommand) -> u8 {
    match command {
        BanCommand::Add {
            net,
            ttl,
            reason,
            force,
        } => {
            let request = Request::BanAdd {
                net,
                ttl_secs: ttl.map(|d| d.as_secs()),
                reason,
                by: admin_actor(),
                force,
            };
            match call(socket, request) {
                Ok(Response::Banned(added)) => ban_added(&added),
                Ok(other) => unexpected(other),
                Err(code) => code,
            }
        }
        BanCommand::List { json } => match call(socket, Request::BanList) {
            Ok(Response::Bans { bans }) if json => match serde_json::to_string_pretty(&bans) {
                Ok(text) => {
                    println!("{text}");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("crmguard: {e}");
                    exit::FAILURE
                }
            },
            Ok(Response::Bans { bans }) => {
                print_bans(&bans);
                exit::OK
            }
            Ok(other) => unexpected(other),
            Err(code) => code,
        },
        BanCommand::Remove { net } => match call(socket, Request::BanRemove { net }) {
            Ok(Response::BanRemoved { ban, error }) => {
                println!("lifted the ban of {}", ban.net);
                match error {
                    Some(message) => {
                        eprintln!("crmguard: {message}");
                        exit::FAILURE
                    }
                    None => exit::OK,
                }
            }
            Ok(other) => unexpected(other),
            Err(code) => code,
        },
    }
}

fn ban_added(added: &BanAdded) -> u8 {
    let ban = &added.ban;
    match &ban.expires {
        Some(expires) => println!("banned {} until {expires}", ban.net),
        None => println!("banned {} until removed", ban.net),
    }
    if let Some(old) = &added.replaced {
        println!(
            "this replaces the ban by {} until {}",
            old.source,
            old.expires.as_deref().unwrap_or("removed")
        );
    }
    for warning in &added.warnings {
        eprintln!("crmguard: warning: {warning}");
    }
    match &added.error {
        Some(message) => {
            eprintln!("crmguard: {message}");
            exit::FAILURE
        }
        None => exit::OK,
    }
}

/// The language of the administrator's locale (LC_ALL, LC_MESSAGES, LANG), for what
/// `peer add` and `mfa enroll` print for staff when `--lang` is not given.
fn locale() -> Lang {
    let var = |name| std::env::var(name).ok();
    Lang::from_locale(
        var("LC_ALL").as_deref(),
        var("LC_MESSAGES").as_deref(),
        var("LANG").as_deref(),
    )
}

fn mfa(config: &config::Config, source: &ConfigSource, command: MfaCommand, locale: Lang) -> u8 {
    match command {
        MfaCommand::Enroll { name, lang } => {
            mfa_enroll(config, source, &name, lang.unwrap_or(locale))
        }
    }
}

fn mfa_enroll(config: &config::Config, source: &ConfigSource, name: &str, lang: Lang) -> u8 {
    if config.peer(name).is_none() {
        eprintln!(
            "crmguard: no peer named `{name}` in {} or its peers file",
            source.describe()
        );
        return exit::USAGE;
    }
    let secret = match mfa::secrets::enroll(&config.agent.state_dir, name) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
            return exit::FAILURE;
        }
    };
    let uri = mfa::otpauth_uri(&config.mfa.issuer, name, &secret);
    let qr = crmguard_core::provision::qr_terminal(&uri)
        .map_err(|e| eprintln!("crmguard: {}; use the URI", crmguard_core::error_chain(&e)))
        .ok();
    let portal = handout::portal_url(config);
    let handout = EnrollHandout {
        peer: name,
        uri: &uri,
        qr: qr.as_deref(),
        portal: portal.as_deref(),
    };
    print!("{}", handout::enrollment(lang, &handout));
    println!("enrolled {name}");
    // The running agent ends the session of the old authenticator and audits the enrollment;
    // with no agent running, the record is written here.
    let request = Request::MfaEnrolled {
        name: name.to_owned(),
        by: admin_actor(),
    };
    match control::call(&config.agent.control_socket, &request) {
        Ok(Response::Enrolled) => exit::OK,
        Ok(other) => unexpected(other),
        Err(e) if e.is_agent_down() => {
            let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
            sink.record(
                &audit::Event::new(
                    audit::EventType::MfaEnrolled,
                    audit::Outcome::Success,
                    admin_actor(),
                )
                .with_detail("peer", name),
            );
            exit::OK
        }
        Err(e) => {
            eprintln!(
                "crmguard: the secret is saved, but the running agent could not be told: {}",
                crmguard_core::error_chain(&e)
            );
            exit::FAILURE
        }
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

fn reload_confirm(socket: &Path, timeout: Duration) -> u8 {
    let request = Request::ReloadConfirm {
        timeout_secs: timeout.as_secs(),
        by: admin_actor(),
    };
    match call(socket, request) {
        Ok(Response::ReloadedPending {
            generation,
            deadline,
            timeout_secs,
        }) => {
            println!("reloaded: policy generation {generation}, PENDING CONFIRMATION");
            println!(
                "run `crmguard confirm` within {timeout_secs}s (before {deadline}) to keep it; without it the previous policy comes back"
            );
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

fn confirm(socket: &Path) -> u8 {
    match call(socket, Request::Confirm { by: admin_actor() }) {
        Ok(Response::Confirmed { generation }) => {
            println!(
                "confirmed: policy generation {generation} stays and is now the last good policy"
            );
            exit::OK
        }
        Ok(Response::Error { message }) => {
            eprintln!("crmguard: {message}");
            exit::FAILURE
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

/// Reports an answer the command did not ask for: a refusal (exit 64), an error or anything
/// else (exit 1).
fn unexpected(response: Response) -> u8 {
    match response {
        Response::Refused { message } => {
            eprintln!("crmguard: {message}");
            exit::USAGE
        }
        Response::Error { message } => {
            eprintln!("crmguard: {message}");
            exit::FAILURE
        }
        other => {
            eprintln!("crmguard: unexpected answer from the agent: {other:?}");
            exit::FAILURE
        }
    }
}

fn uninstall(agent: &config::Agent) -> u8 {
    // The running agent would go on reporting, and counting on, a filter that is gone.
    if crmguard::backup::agent_running(&agent.control_socket) {
        eprintln!(
            "crmguard: an agent is running ({}): stop it first (`systemctl stop crmguard`), then run `crmguard uninstall`",
            agent.control_socket.display()
        );
        return exit::FAILURE;
    }
    let bpffs_dir = &agent.bpffs_dir;
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
            eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmation_time_is_a_duration_of_one_second_to_an_hour() {
        let check = |text: &str, expected: Option<u64>| {
            assert_eq!(
                parse_confirm(text).ok().map(|d| d.as_secs()),
                expected,
                "{text}"
            );
        };
        check("120s", Some(120));
        check("5m", Some(300));
        check("1s", Some(1));
        check("1h", Some(3600));
        check("0s", None);
        check("2h", None);
        check("soon", None);
    }

    #[test]
    fn reload_takes_an_optional_confirmation_time() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(args)
                .ok()
                .map(|cli| format!("{:?}", cli.command))
        };
        assert_eq!(
            parse(&["crmguard", "reload"]).as_deref(),
            Some("Reload { confirm: None }")
        );
        assert_eq!(
            parse(&["crmguard", "reload", "--confirm", "3s"]).as_deref(),
            Some("Reload { confirm: Some(3s) }")
        );
        assert_eq!(parse(&["crmguard", "confirm"]).as_deref(), Some("Confirm"));
        assert_eq!(parse(&["crmguard", "reload", "--confirm"]), None);
    }
}
