//! The agent watches the kernel: an entry deleted from the policy maps by hand
//! is noticed and repaired (with a new generation and the divergence
//! reported), and sampled drops reach `crmguard status`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::maps::{Array, ArrayOfMaps, Map, MapData};
use crmguard_core::abi;
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::{self, UdpReceiver};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

const PROBE: u16 = 7100;
const CLOSED: u16 = 7101;
/// The agent compares every 5 s; a repair is due within two comparisons.
const REPAIR: Duration = Duration::from_secs(12);
const COUNT: Duration = Duration::from_secs(10);

fn policy(t: &Topology) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[firewall.deny]
sources = ["{denied}"]

[[firewall.service]]
name = "probe"
proto = "udp"
ports = [{PROBE}]
"#,
        iface = t.host_if.name(),
        denied = t.addrs.denied4,
    )
}

fn status_u64(agent: &Agent, key: &str) -> Result<u64> {
    agent.status()?[key]
        .as_u64()
        .with_context(|| format!("status has no {key}"))
}

/// Deletes `addr` from the IPv4 deny table of the policy in force, as an operator
/// poking at the maps with bpftool would.
fn delete_deny_entry(agent: &Agent, addr: IpAddr) -> Result<()> {
    let IpAddr::V4(addr) = addr else {
        bail!("an IPv4 address is needed")
    };
    let maps = agent.bpffs_dir().join("maps");
    let open = |name: &str| -> Result<Map> {
        let data = MapData::from_pin(maps.join(name)).with_context(|| format!("opening {name}"))?;
        Ok(Map::from_map_data(data)?)
    };
    let active: Array<MapData, u32> = Array::try_from(open("cg_active")?)?;
    let slot = active.get(&0, 0)?;
    let config: Array<MapData, abi::Config> = Array::try_from(open("cg_config")?)?;
    let bits = config.get(&slot, 0)?.deny4_bits;
    let outer_name = match bits {
        abi::DENY4_BITS_S => "cg_deny4_s",
        abi::DENY4_BITS_M => "cg_deny4_m",
        _ => "cg_deny4_l",
    };
    let outer: ArrayOfMaps<MapData, MapData> = ArrayOfMaps::try_from(open(outer_name)?)?;
    let inner = outer
        .get(&slot, 0)
        .context("the slot in force has no deny table")?;
    let mut table: Array<MapData, abi::Deny4Bucket> = Array::try_from(Map::from_map_data(inner)?)?;
    let entry = abi::deny4_entry(addr.octets(), 32);
    for index in abi::deny4_places(entry, bits) {
        let mut bucket = table.get(&index, 0)?;
        if let Some(held) = bucket.entry.iter_mut().find(|e| **e == entry) {
            *held = 0;
            table.set(index, bucket, 0).context("writing the bucket")?;
            return Ok(());
        }
    }
    bail!("the deny table does not hold {addr}")
}

#[test]
fn an_entry_deleted_by_hand_is_repaired_and_reported() -> Result<()> {
    if !privileged::require("reconcile::an_entry_deleted_by_hand_is_repaired_and_reported") {
        return Ok(());
    }
    let t = Topology::ipv4_only(140, 1)?;
    let receiver = UdpReceiver::start(&t.host, PROBE)?;
    let agent = Agent::start(&t.host, &policy(&t))?;
    let iface = t.host_if.name();
    let dst = SocketAddr::new(t.addrs.host4, PROBE);

    net::udp_send(&t.out, t.addrs.denied4, dst, 5, 32)?;
    net::udp_send(&t.out, t.addrs.out4, dst, 5, 32)?;
    wait_for(COUNT, "the admitted datagrams", || {
        Ok((receiver.received() >= 5).then_some(()))
    })?;
    let generation = status_u64(&agent, "generation")?;

    delete_deny_entry(&agent, t.addrs.denied4)?;
    let divergence = wait_for(REPAIR, "the agent to notice the deleted entry", || {
        let found = status_u64(&agent, "policy_divergence_entries")?;
        Ok((found > 0).then_some(found))
    })?;
    assert_eq!(divergence, 1, "one entry was deleted");
    assert!(
        status_u64(&agent, "generation")? > generation,
        "the repair swaps in a new generation"
    );
    let metrics = agent.metrics()?;
    let reported = metric_value(&metrics, "crmguard_policy_divergence_entries", &[])
        .context("crmguard_policy_divergence_entries is exported")?;
    // Read right after status: the next comparison is seconds away.
    assert_eq!(reported, 1.0, "the metric reports what status reports");

    // Repaired: the denied source is dropped again, the admitted one still passes.
    let before = agent.counter(iface, "drop", "denied_source")?;
    let received = receiver.received();
    net::udp_send(&t.out, t.addrs.denied4, dst, 5, 32)?;
    net::udp_send(&t.out, t.addrs.out4, dst, 5, 32)?;
    wait_for(
        COUNT,
        "the repaired deny entry to drop the datagrams",
        || Ok((agent.counter(iface, "drop", "denied_source")? >= before + 5).then_some(())),
    )?;
    wait_for(COUNT, "the admitted datagrams", || {
        Ok((receiver.received() >= received + 5).then_some(()))
    })?;
    assert_eq!(
        receiver.received(),
        received + 5,
        "no denied datagram arrived"
    );

    // The next comparison finds nothing to repair.
    wait_for(REPAIR, "the divergence to return to 0", || {
        Ok((status_u64(&agent, "policy_divergence_entries")? == 0).then_some(()))
    })?;
    Ok(())
}

#[test]
fn sampled_drops_reach_status() -> Result<()> {
    if !privileged::require("reconcile::sampled_drops_reach_status") {
        return Ok(());
    }
    let t = Topology::ipv4_only(140, 2)?;
    let agent = Agent::start(&t.host, &policy(&t))?;
    net::udp_send(
        &t.out,
        t.addrs.denied4,
        SocketAddr::new(t.addrs.host4, PROBE),
        3,
        16,
    )?;
    net::udp_send(
        &t.out,
        t.addrs.out4,
        SocketAddr::new(t.addrs.host4, CLOSED),
        3,
        16,
    )?;

    let found = |reason: &str, src: IpAddr, dport: u16| -> Result<bool> {
        let status = agent.status()?;
        Ok(status["recent_drops"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| {
                d["reason"] == reason
                    && d["action"] == "drop"
                    && d["src"] == src.to_string()
                    && d["dport"].as_u64() == Some(u64::from(dport))
                    && d["interface"] == t.host_if.name()
            }))
    };
    wait_for(COUNT, "sampled drops in status", || {
        Ok((found("denied_source", t.addrs.denied4, PROBE)?
            && found("default_drop", t.addrs.out4, CLOSED)?)
        .then_some(()))
    })?;
    assert!(status_u64(&agent, "drop_events_total")? >= 6);
    Ok(())
}
