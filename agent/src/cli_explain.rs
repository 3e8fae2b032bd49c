//! `crmguard explain`, the policy tests of `crmguard check`, and the lockout guard of `check`
//! and `reload`.
//!
//! `explain` asks the running agent first, so that the answer holds the bans in force and the
//! peers' MFA sessions; when no agent answers (or with `--config-only`, to question a
//! configuration before loading it) the configuration file answers, without bans or sessions.
//! Either way the decision is `crmguard_core::explain`'s.

use std::net::IpAddr;
use std::time::SystemTime;

use clap::Args;
use serde::Serialize;

use crmguard::control::{self, Request, Response};
use crmguard::daemon::ConfigSource;
use crmguard_core::bans::BanStore;
use crmguard_core::config::{Config, Probe};
use crmguard_core::exit;
use crmguard_core::explain::{self, lockout, At, Explanation, Query};
use crmguard_core::policy::{self, CompiledPolicy};

/// `crmguard explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A packet from outside, sent from ADDR to this host
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "peer",
        conflicts_with = "peer"
    )]
    from: Option<IpAddr>,
    /// A packet the VPN peer NAME sends to the gateway through the tunnel
    #[arg(long, value_name = "NAME")]
    peer: Option<String>,
    /// What is sent: tcp/PORT, udp/PORT or icmp (an echo request)
    #[arg(value_name = "PROTO/PORT", value_parser = Probe::parse)]
    to: Probe,
    /// A TCP SYN that opens a connection (without it: a packet of an open connection)
    #[arg(long, conflicts_with = "peer")]
    syn: bool,
    /// When: `Tue 22:00` (local time; for --from, the next such time), `2026-12-08 22:00`,
    /// `2026-12-08T22:00:00Z` or `+2h` [default: now]
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// With an open MFA session [default: the peer's session as it stands; none when the
    /// configuration answers]
    #[arg(long, requires = "peer")]
    mfa: bool,
    /// Without an MFA session
    #[arg(long, requires = "peer", conflicts_with = "mfa")]
    no_mfa: bool,
    /// Answer from the configuration file, not from the running agent's policy
    #[arg(long)]
    config_only: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// What `explain --json` prints: the answer and where it came from.
#[derive(Serialize)]
struct Answer<'a> {
    /// `agent` (the policy in force, its bans and sessions) or `configuration`.
    answered_by: &'static str,
    /// The generation of the policy in force, when the agent answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u32>,
    #[serde(flatten)]
    explanation: &'a Explanation,
}

/// `crmguard explain`: exit 0 with the answer, 64 for a question that cannot be asked (an
/// unknown peer, a bad time), 1 when neither the agent nor the configuration can answer.
pub fn run(source: &ConfigSource, args: ExplainArgs) -> u8 {
    let now = SystemTime::now();
    let at = match args
        .at
        .as_deref()
        .map(|text| At::parse(text, now))
        .transpose()
    {
        Ok(at) => at,
        Err(message) => {
            eprintln!("crmguard: --at: {message}");
            return exit::USAGE;
        }
    };
    let query = match (&args.from, &args.peer) {
        (Some(from), _) => Query::Outside {
            from: *from,
            to: args.to.to_string(),
            syn: args.syn,
            at: at.map(|at| crmguard_core::time::unix_seconds_signed(at.instant(now))),
        },
        (None, Some(peer)) => Query::Peer {
            peer: peer.clone(),
            to: args.to.to_string(),
            at: at.map(|at| at.week_time().to_string()),
            mfa: match (args.mfa, args.no_mfa) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        },
        (None, None) => {
            eprintln!("crmguard: say who sends the packet: --from ADDR or --peer NAME");
            return exit::USAGE;
        }
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return exit::USAGE;
        }
    };
    if !args.config_only {
        match control::call(
            &config.agent.control_socket,
            &Request::Explain {
                query: query.clone(),
            },
        ) {
            Ok(Response::Explained {
                explanation,
                generation,
            }) => return print(&explanation, "agent", Some(generation), args.json),
            Ok(Response::Refused { message }) => {
                eprintln!("crmguard: {message}");
                return exit::USAGE;
            }
            Ok(other) => {
                eprintln!("crmguard: unexpected answer from the agent: {other:?}");
                return exit::FAILURE;
            }
            Err(e) if e.is_agent_down() => eprintln!(
                "crmguard: no agent answers on {}; answering from {}, without bans or MFA sessions",
                config.agent.control_socket.display(),
                source.describe()
            ),
            Err(e) => {
                eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
                return exit::FAILURE;
            }
        }
    }
    let policy = match policy::compile(&config) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("{}: {e}", source.describe());
            return exit::USAGE;
        }
    };
    let bans = BanStore::new();
    let ctx = explain::Context {
        config: &config,
        policy: &policy,
        bans: &bans,
        portal_listening: config.vpn.is_some(),
        sessions: None,
    };
    match explain::answer(&ctx, &query, now) {
        Ok(explanation) => print(&explanation, "configuration", None, args.json),
        Err(e) => {
            eprintln!("crmguard: {e}");
            exit::USAGE
        }
    }
}

fn print(
    explanation: &Explanation,
    answered_by: &'static str,
    generation: Option<u32>,
    json: bool,
) -> u8 {
    if json {
        let answer = Answer {
            answered_by,
            generation,
            explanation,
        };
        match serde_json::to_string_pretty(&answer) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("crmguard: cannot encode the answer: {e}");
                return exit::FAILURE;
            }
        }
    } else {
        match generation {
            Some(generation) => println!("policy:  in force (generation {generation})"),
            None => println!("policy:  the configuration file"),
        }
        print!("{}", explanation.describe());
    }
    exit::OK
}

/// Runs the configuration's own tests; prints each failure. Whether all pass.
pub fn run_tests(config: &Config, policy: &CompiledPolicy) -> bool {
    let failures = explain::check::run(config, policy);
    for failure in &failures {
        eprintln!("{failure}");
    }
    failures.is_empty()
}

/// Prints the lockout guard's warnings about `config` for the SSH session this command runs
/// in, if any.
pub fn warn_lockout(config: &Config, policy: &CompiledPolicy) {
    let ssh = std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|text| lockout::SshConnection::parse(&text));
    for warning in lockout::warnings(config, policy, ssh) {
        eprintln!("crmguard: warning: {warning}");
    }
}
