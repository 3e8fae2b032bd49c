//! The agent's memory with many configured peers: `RSS_PEERS` (the figure of the README's
//! first target) and `RSS_PEERS_LARGE`, a gateway for a large staff.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crmguard_lab::netns::{self, NetNs};

use crate::vpn::{
    keypair, memory_kib, wait_for, Agent, AgentSetup, Env, IF_PREFIX, PREFIX, SETTLE,
};

/// Peers of the first memory measurement, and its target.
pub(crate) const RSS_PEERS: usize = 1_000;
pub(crate) const RSS_TARGET_MIB: f64 = 40.0;
/// Peers of the second memory measurement, and its target.
pub(crate) const RSS_PEERS_LARGE: usize = 10_000;
pub(crate) const RSS_LARGE_TARGET_MIB: f64 = 64.0;

/// The agent's memory once it runs with `peers` peers.
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) peers: usize,
    /// From `crmguard run` to every peer admitted.
    pub(crate) start_seconds: f64,
}

/// Bytes of one boringtun `Tunn`, a peer's WireGuard state (eight session slots inline, each
/// with its keys and replay window), which crmguard makes at the peer's first handshake.
pub(crate) fn tunn_bytes() -> usize {
    std::mem::size_of::<boringtun::noise::Tunn>()
}

/// The first tunnel address of the peers; the gateway is 10.77.0.1.
const FIRST_PEER: u32 = 0x0a4d_000a;

/// The gateway's tunnel address with a prefix that holds `count` peers from 10.77.0.10 on.
pub(crate) fn gateway_address(count: usize) -> Result<String> {
    let hosts = u32::try_from(count)? + 10 + 2;
    let bits = 32 - hosts.next_power_of_two().trailing_zeros();
    Ok(format!("10.77.0.1/{}", bits.min(30)))
}

/// `[[peer]]` entries for a peers file: `peerNNNNN` with the role `bench`, the given public
/// keys (base64), addresses from 10.77.0.10 on.
pub(crate) fn peer_entries<'a>(public_keys: impl Iterator<Item = &'a str>) -> Result<String> {
    let mut peers = String::new();
    for (i, key) in public_keys.enumerate() {
        let address = Ipv4Addr::from(FIRST_PEER + u32::try_from(i)?);
        let _ = writeln!(
            peers,
            "[[peer]]\nname = \"peer{i:05}\"\npublic_key = \"{key}\"\naddress = \"{address}\"\nrole = \"bench\"\n",
        );
    }
    Ok(peers)
}

/// The tunnel address of peer `i` of [`peer_entries`].
pub(crate) fn peer_address(i: usize) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::from(FIRST_PEER + u32::try_from(i)?))
}

/// Waits until the agent's endpoint has admitted `count` peers; returns how many it admitted.
pub(crate) fn wait_admitted(agent: &mut Agent, count: usize) -> Result<usize> {
    wait_for("the endpoint to admit the peers", SETTLE * 3, || {
        agent.daemon()?.check_alive()?;
        let status = agent.status()?;
        let admitted = status["vpn"]["peers"].as_array().map_or(0, Vec::len);
        Ok((admitted >= count).then_some(admitted))
    })
    .with_context(|| {
        let excluded = agent
            .status()
            .map(|s| s["vpn"]["excluded"].to_string())
            .unwrap_or_default();
        format!("excluded peers: {excluded:.300}")
    })
}

/// Starts the agent with `count` peers in its peers file (random keys, addresses in one
/// prefix) and the XDP filter on a veth, and reads its memory once the endpoint runs.
pub(crate) fn memory_with_peers(bin: &Path, env: &Env<'_>, count: usize) -> Result<Memory> {
    let pid = std::process::id();
    let ns = NetNs::named(&format!("{PREFIX}{pid}-rss{count}"))?;
    let (filtered, other) = netns::veth_pair_named(&ns, "bvrss0", &ns, "bvrss1")?;
    filtered.add_addr("10.202.0.1/24")?;
    filtered.up()?;
    other.up()?;
    let keys = (0..count).map(|_| keypair()).collect::<Result<Vec<_>>>()?;
    let peers = peer_entries(keys.iter().map(|k| k.public.as_str()))?;
    let started = Instant::now();
    let tun = format!("{IF_PREFIX}{pid}m{}", count / 1_000);
    let mut agent = Agent::start(
        bin,
        &ns,
        &env.work.join(format!("rss{count}")),
        &AgentSetup {
            interface: filtered.name(),
            tun: &tun,
            address: &gateway_address(count)?,
            private_key: &keypair()?.private,
            peers: "",
            peers_file: &peers,
            inspection: true,
            vpn_extra: "",
            // The verifier takes seconds on a busy machine, and every peer costs a
            // Diffie-Hellman computation and its tunnel state.
            startup: SETTLE + Duration::from_millis(10 * u64::try_from(count)?),
        },
    )?;
    let admitted = wait_admitted(&mut agent, count)?;
    let start_seconds = started.elapsed().as_secs_f64();
    let agent_pid = agent.daemon()?.id();
    let memory = Memory {
        rss_kib: memory_kib(agent_pid, "VmRSS:")?,
        hwm_kib: memory_kib(agent_pid, "VmHWM:")?,
        peers: admitted,
        start_seconds,
    };
    drop(agent);
    drop(ns);
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_prefix_holds_every_peer() -> Result<()> {
        assert_eq!(gateway_address(1_000)?, "10.77.0.1/22");
        assert_eq!(gateway_address(10_000)?, "10.77.0.1/18");
        assert_eq!(gateway_address(1)?, "10.77.0.1/28");
        assert_eq!(peer_address(0)?, Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(peer_address(9_999)?, Ipv4Addr::new(10, 77, 39, 25));
        Ok(())
    }
}
