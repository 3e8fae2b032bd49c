//! The lockout guard: before a policy is checked or loaded, say whether it would cut the
//! administrator off.
//!
//! Two things are asked of the new policy, the way `crmguard explain` asks them:
//!
//! - the SSH connection the command runs in (`SSH_CONNECTION`, as sshd sets it: client address
//!   and port, server address and port): its packets, and a new connection from the same
//!   client;
//! - each network a public service names in `from` (the admin networks): a new connection from
//!   its first address to each of the service's ports, so that a deny entry or the order of
//!   rules cannot quietly take away what the configuration grants.
//!
//! Warnings, not errors: an administrator may mean to close the door they came through.

use std::net::IpAddr;
use std::time::SystemTime;

use super::{Context, Explanation};
use crate::bans::BanStore;
use crate::config::{Config, Probe, Proto};
use crate::policy::CompiledPolicy;

/// The SSH connection a command runs in, from `SSH_CONNECTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshConnection {
    pub client: IpAddr,
    pub server_port: u16,
}

impl SshConnection {
    /// Reads `client_addr client_port server_addr server_port`; `None` when it is not that.
    pub fn parse(text: &str) -> Option<SshConnection> {
        let mut parts = text.split_whitespace();
        let client = parts.next()?.parse().ok()?;
        let _client_port: u16 = parts.next()?.parse().ok()?;
        let _server: IpAddr = parts.next()?.parse().ok()?;
        let server_port = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(SshConnection {
            client,
            server_port,
        })
    }
}

/// What the lockout guard found: one sentence per packet the policy would drop.
pub fn warnings(
    config: &Config,
    policy: &CompiledPolicy,
    ssh: Option<SshConnection>,
) -> Vec<String> {
    let bans = BanStore::new();
    let ctx = Context {
        config,
        policy,
        bans: &bans,
        portal_listening: true,
        sessions: None,
    };
    let ask = |from: IpAddr, probe: Probe, syn: bool| {
        super::outside(&ctx, from, probe, syn, SystemTime::now())
    };
    let dropped =
        |answer: &Explanation| format!("{} ({}: {})", answer.verdict, answer.reason, answer.rule);
    let mut out = Vec::new();
    if let Some(ssh) = ssh {
        let probe = Probe::Tcp(ssh.server_port);
        let open = ask(ssh.client, probe, false);
        let new = ask(ssh.client, probe, true);
        if !open.passes() {
            out.push(format!(
                "this policy drops the SSH connection this command runs in ({} to tcp/{}): {}",
                ssh.client,
                ssh.server_port,
                dropped(&open)
            ));
        } else if !new.passes() {
            out.push(format!(
                "this policy refuses new SSH connections from {} to tcp/{}, where this command runs: {}",
                ssh.client,
                ssh.server_port,
                dropped(&new)
            ));
        }
    }
    for service in &config.firewall.services {
        for net in service.from.iter().flatten() {
            let from = super::first_address(net);
            for &port in &service.ports {
                let probe = match service.proto {
                    Proto::Tcp => Probe::Tcp(port),
                    Proto::Udp => Probe::Udp(port),
                };
                let answer = ask(from, probe, true);
                if !answer.passes() {
                    out.push(format!(
                        "service `{}` admits {net}, but this policy drops {probe} from {from}: {}",
                        service.name,
                        dropped(&answer)
                    ));
                }
            }
        }
    }
    out
}
