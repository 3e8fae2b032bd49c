//! Which interfaces the agent filters when the configuration lists no `[[interface]]`, listed
//! interfaces that are not there at the start, and that the filter enforces before the agent
//! tells systemd it is ready.
//!
//! The host namespace has an uplink veth (global address, default route) to `out`, and a
//! bridge `br0` with a veth to a container-like namespace `ct`, as a host that runs its CRM in
//! containers has. The agent runs the embedded default's firewall sections (default drop,
//! SSH open) with no `[[interface]]`: the uplink must be filtered, the container's traffic
//! through the bridge must keep flowing, and an uplink that appears later must be filtered.
//! Interface names are fixed: each lives in its test's own namespaces.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::netns::{veth_pair_named, Iface, NetNs};
use crmguard_lab::privileged;
use crmguard_lab::wait::wait_for;

/// A port the default policy does not open, with a server behind it.
const CLOSED: u16 = 8081;
const CONNECT: Duration = Duration::from_secs(5);
const NO_ANSWER: Duration = Duration::from_millis(1500);
/// The agent looks again every 5 s.
const NEW_INTERFACE: Duration = Duration::from_secs(20);

/// The `[firewall]` sections of the embedded default policy, without its `[agent]`, `[vpn]`
/// and `[metrics]`, which name the host's real paths and ports.
fn embedded_firewall() -> String {
    let text = crmguard_core::config::DEFAULT_POLICY_TOML;
    let mut out = String::new();
    let mut keep = false;
    for line in text.lines() {
        if line.starts_with('[') {
            keep = line.starts_with("[firewall") || line.starts_with("[[firewall");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn interface_names(agent: &Agent) -> Result<Vec<String>> {
    names_in(agent, "interfaces")
}

/// The `name` of each entry of the list `key` of `crmguard status --json`.
fn names_in(agent: &Agent, key: &str) -> Result<Vec<String>> {
    let status = agent.status()?;
    Ok(status[key]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn embedded_default_filters_the_uplink_not_the_containers() -> Result<()> {
    if !privileged::require("interfaces::embedded_default_filters_the_uplink_not_the_containers") {
        return Ok(());
    }
    let out = NetNs::new("cgio")?;
    let host = NetNs::new("cgih")?;
    let ct = NetNs::new("cgic")?;
    let (uplink, outer) = veth_pair_named(&host, "up0", &out, "o0")?;
    uplink.add_addr("198.51.100.2/24")?;
    outer.add_addr("198.51.100.1/24")?;
    uplink.up()?;
    outer.up()?;
    host.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
    let bridge = "br0".to_owned();
    host.ip(&["link", "add", &bridge, "type", "bridge"])?;
    host.ip(&["addr", "add", "172.31.0.1/24", "dev", &bridge])?;
    host.ip(&["link", "set", &bridge, "up"])?;
    let (port, inner) = veth_pair_named(&host, "ct0", &ct, "c0")?;
    host.ip(&["link", "set", port.name(), "master", &bridge])?;
    port.up()?;
    inner.add_addr("172.31.0.2/24")?;
    inner.up()?;
    ct.ip(&["route", "add", "default", "via", "172.31.0.1"])?;
    let _server = TcpServer::start(&host, CLOSED, "crmguard-test\n")?;

    let agent = Agent::start(&host, &embedded_firewall())?;

    // The container reaches a port the policy closes on the uplink: br0 is not filtered.
    let from_container = net::tcp_connect(
        &ct,
        None,
        SocketAddr::from(([172, 31, 0, 1], CLOSED)),
        CONNECT,
    )?;
    ensure!(
        matches!(from_container, TcpOutcome::Connected { .. }),
        "the container's connection through the bridge: {from_container:?}"
    );
    // The same port from outside is dropped: the uplink is filtered.
    let from_outside = net::tcp_connect(
        &out,
        None,
        SocketAddr::from(([198, 51, 100, 2], CLOSED)),
        NO_ANSWER,
    )?;
    ensure!(
        from_outside == TcpOutcome::TimedOut,
        "a closed port from outside: {from_outside:?}"
    );
    ensure!(uplink.xdp()?.is_some(), "no XDP on the uplink");
    for name in [bridge.as_str(), port.name()] {
        ensure!(host.iface(name).xdp()?.is_none(), "XDP on {name}");
    }
    let names = interface_names(&agent)?;
    ensure!(names == [uplink.name().to_owned()], "filtered: {names:?}");
    let status = agent.status()?;
    ensure!(
        status["interfaces"][0]["chosen_because"] == "carries a default route",
        "{status}"
    );

    // An uplink that appears after the start is filtered within the deadline.
    let (late, late_outer) = veth_pair_named(&host, "up1", &out, "o1")?;
    late.add_addr("203.0.113.2/24")?;
    late_outer.add_addr("203.0.113.1/24")?;
    late.up()?;
    late_outer.up()?;
    wait_for(NEW_INTERFACE, "the new uplink to be filtered", || {
        Ok(interface_names(&agent)?
            .contains(&late.name().to_owned())
            .then_some(()))
    })?;
    ensure!(late.xdp()?.is_some(), "no XDP on the new uplink");
    let late_probe = net::tcp_connect(
        &out,
        None,
        SocketAddr::from(([203, 0, 113, 2], CLOSED)),
        NO_ANSWER,
    )?;
    ensure!(
        late_probe == TcpOutcome::TimedOut,
        "a closed port through the new uplink: {late_probe:?}"
    );

    // Deleted and created again under the same name, it is filtered again.
    host.ip(&["link", "del", "up1"])?;
    let (again, again_outer) = veth_pair_named(&host, "up1", &out, "o1")?;
    again.add_addr("203.0.113.2/24")?;
    again_outer.add_addr("203.0.113.1/24")?;
    again.up()?;
    again_outer.up()?;
    wait_for(
        NEW_INTERFACE,
        "the re-created uplink to be filtered",
        || Ok(again.xdp()?.map(drop)),
    )?;
    Ok(())
}

/// Another XDP program already on one chosen uplink (here a second agent's, pinned to `up1`)
/// does not stop the agent: `up0` is filtered, `up1` is reported in `status` and in
/// `crmguard_xdp_attach_failed`.
#[test]
fn a_foreign_xdp_program_does_not_stop_the_others() -> Result<()> {
    if !privileged::require("interfaces::a_foreign_xdp_program_does_not_stop_the_others") {
        return Ok(());
    }
    let out = NetNs::new("cgio")?;
    let host = NetNs::new("cgih")?;
    let (uplink, outer) = veth_pair_named(&host, "up0", &out, "o0")?;
    let (other, other_outer) = veth_pair_named(&host, "up1", &out, "o1")?;
    for (inside, outside, net) in [
        (&uplink, &outer, "198.51.100"),
        (&other, &other_outer, "203.0.113"),
    ] {
        inside.add_addr(&format!("{net}.2/24"))?;
        outside.add_addr(&format!("{net}.1/24"))?;
        inside.up()?;
        outside.up()?;
    }
    host.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
    let _server = TcpServer::start(&host, CLOSED, "crmguard-test\n")?;
    let firewall = embedded_firewall();
    let _foreign = Agent::start(
        &host,
        &format!("[[interface]]\nname = \"up1\"\nxdp_mode = \"native\"\n\n{firewall}"),
    )?;
    let foreign_program = other.xdp()?;
    ensure!(
        foreign_program.is_some(),
        "the foreign program is not on up1"
    );

    let agent = Agent::start(&host, &firewall)?;
    let names = interface_names(&agent)?;
    ensure!(names == ["up0".to_owned()], "filtered: {names:?}");
    let status = agent.status()?;
    let failed = &status["interfaces_failed"];
    ensure!(
        failed.as_array().map(Vec::len) == Some(1) && failed[0]["name"] == "up1",
        "interfaces_failed: {failed}"
    );
    ensure!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("exists")),
        "the error names the cause: {failed}"
    );
    let metrics = agent.metrics()?;
    ensure!(
        metric_value(
            &metrics,
            "crmguard_xdp_attach_failed",
            &[("interface", "up1")]
        ) == Some(1.0),
        "no failure sample for up1 in\n{metrics}"
    );
    ensure!(
        metric_value(&metrics, "crmguard_xdp_attached", &[("interface", "up0")]) == Some(1.0),
        "no attached sample for up0 in\n{metrics}"
    );
    ensure!(
        metric_value(&metrics, "crmguard_xdp_attached", &[("interface", "up1")]) == Some(0.0),
        "no 0 sample for up1 in\n{metrics}"
    );
    ensure!(
        other.xdp()? == foreign_program,
        "the foreign program was replaced"
    );
    let from_outside = net::tcp_connect(
        &out,
        None,
        SocketAddr::from(([198, 51, 100, 2], CLOSED)),
        NO_ANSWER,
    )?;
    ensure!(
        from_outside == TcpOutcome::TimedOut,
        "a closed port through the filtered uplink: {from_outside:?}"
    );
    Ok(())
}

fn failed_names(agent: &Agent) -> Result<Vec<String>> {
    names_in(agent, "interfaces_failed")
}

/// An uplink veth `name` in `host` to `out`, addressed `{net}.2` inside and `{net}.1` outside.
fn uplink<'a>(
    host: &'a NetNs,
    out: &'a NetNs,
    name: &str,
    outer: &str,
    net: &str,
) -> Result<Iface> {
    let (inside, outside) = veth_pair_named(host, name, out, outer)?;
    inside.add_addr(&format!("{net}.2/24"))?;
    outside.add_addr(&format!("{net}.1/24"))?;
    inside.up()?;
    outside.up()?;
    Ok(inside)
}

/// A host namespace whose uplink `up0` (198.51.100.2, the default route) leads to `out`, with a
/// server on the closed port. Fields drop in order: the server before the namespaces.
struct Uplinked {
    _server: TcpServer,
    up0: Iface,
    host: NetNs,
    out: NetNs,
}

fn uplinked() -> Result<Uplinked> {
    let out = NetNs::new("cgio")?;
    let host = NetNs::new("cgih")?;
    let up0 = uplink(&host, &out, "up0", "o0", "198.51.100")?;
    host.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
    Ok(Uplinked {
        _server: TcpServer::start(&host, CLOSED, "crmguard-test\n")?,
        up0,
        host,
        out,
    })
}

/// The closed port through `address` from `out` gets no answer: the interface is filtered.
fn closed_through(out: &NetNs, address: [u8; 4]) -> Result<()> {
    let probe = net::tcp_connect(out, None, SocketAddr::from((address, CLOSED)), NO_ANSWER)?;
    ensure!(
        probe == TcpOutcome::TimedOut,
        "a closed port through {address:?}: {probe:?}"
    );
    Ok(())
}

/// A listed `[[interface]]` that does not exist yet (a bond or VLAN the network configuration
/// makes after the agent) does not stop the start nor leave the others open: it is reported
/// as not filtered (`status`, `crmguard_xdp_attached` 0) and filtered when it appears, and
/// again when it is deleted and created again. One the list gains at a reload is filtered by
/// the time the reload answers.
#[test]
fn listed_interfaces_are_filtered_when_they_appear() -> Result<()> {
    if !privileged::require("interfaces::listed_interfaces_are_filtered_when_they_appear") {
        return Ok(());
    }
    let Uplinked { up0, host, out, .. } = &uplinked()?;
    let up2 = uplink(host, out, "up2", "o2", "192.0.2")?;
    let firewall = embedded_firewall();
    let listed = |names: &[&str]| {
        let mut body = String::new();
        for name in names {
            body.push_str(&format!("[[interface]]\nname = \"{name}\"\n\n"));
        }
        body + &firewall
    };
    let agent = Agent::start(host, &listed(&["up0", "up1"]))?;

    ensure!(
        interface_names(&agent)? == ["up0"],
        "filtered: {:?}",
        interface_names(&agent)?
    );
    ensure!(up0.xdp()?.is_some(), "no XDP on up0");
    ensure!(failed_names(&agent)? == ["up1"], "{}", agent.status()?);
    let metrics = agent.metrics()?;
    ensure!(
        metric_value(&metrics, "crmguard_xdp_attached", &[("interface", "up1")]) == Some(0.0),
        "no 0 sample for the missing up1 in\n{metrics}"
    );
    closed_through(out, [198, 51, 100, 2])?;

    let up1 = uplink(host, out, "up1", "o1", "203.0.113")?;
    wait_for(NEW_INTERFACE, "the listed up1 to be filtered", || {
        Ok(up1.xdp()?.map(drop))
    })?;
    closed_through(out, [203, 0, 113, 2])?;
    ensure!(failed_names(&agent)?.is_empty(), "{}", agent.status()?);
    let metrics = agent.metrics()?;
    ensure!(
        metric_value(&metrics, "crmguard_xdp_attached", &[("interface", "up1")]) == Some(1.0),
        "up1 is not reported attached in\n{metrics}"
    );

    host.ip(&["link", "del", "up1"])?;
    let again = uplink(host, out, "up1", "o1", "203.0.113")?;
    wait_for(NEW_INTERFACE, "the re-created up1 to be filtered", || {
        Ok(again.xdp()?.map(drop))
    })?;
    closed_through(out, [203, 0, 113, 2])?;

    ensure!(up2.xdp()?.is_none(), "up2 is filtered before it is listed");
    let text = std::fs::read_to_string(agent.config_path())?;
    std::fs::write(
        agent.config_path(),
        text.replace(&listed(&["up0", "up1"]), &listed(&["up0", "up1", "up2"])),
    )?;
    let reload = agent.cli(&["reload"])?;
    ensure!(reload.status.success(), "reload: {reload:?}");
    ensure!(up2.xdp()?.is_some(), "up2 is not filtered after the reload");
    closed_through(out, [192, 0, 2, 2])?;
    Ok(())
}

/// Under systemd (`Type=notify`, before `network-pre.target`) the network is configured once
/// the agent says it is ready: by then its filter must be attached and enforcing. The test
/// plays systemd's part with a datagram socket in `NOTIFY_SOCKET`.
#[test]
fn the_filter_enforces_before_systemd_hears_ready() -> Result<()> {
    if !privileged::require("interfaces::the_filter_enforces_before_systemd_hears_ready") {
        return Ok(());
    }
    let Uplinked { up0, host, out, .. } = &uplinked()?;
    let mut agent = Agent::configure(host, &embedded_firewall())?;
    let socket_path = agent.dir().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(60)))?;
    agent.set_env("NOTIFY_SOCKET", &socket_path.display().to_string());
    agent.spawn()?;

    let mut message = [0_u8; 1024];
    let n = socket.recv(&mut message)?;
    let message = String::from_utf8_lossy(&message[..n]).into_owned();
    ensure!(
        up0.xdp()?.is_some(),
        "READY before XDP is on up0: {message:?}"
    );
    closed_through(out, [198, 51, 100, 2])?;
    let lines: Vec<&str> = message.lines().collect();
    ensure!(lines.contains(&"READY=1"), "{message:?}");
    ensure!(
        lines.contains(&"STATUS=enforcing policy generation 1 on up0"),
        "{message:?}"
    );
    agent.wait_ready()?;
    Ok(())
}
