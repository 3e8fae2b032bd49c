//! The cases of the Linux kernel's WireGuard self-test (`tools/testing/selftests/wireguard/
//! netns.sh`) that apply to a userspace endpoint, with wireguard-go as the other side:
//! counters that agree on both ends, outer packets fragmented by a small path MTU, roaming on
//! the gateway's side (the client's side is `vpn::a_roaming_client_keeps_its_session`), a key
//! changed in the middle of a session, and keys that must be refused (low-order points).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg::{self, genkey, WgClient};

use crate::vpn::{
    download, gateway_dump, gateway_endpoint, gateway_key, ping, setup, start_agent,
    wait_reachable, BulkServer, PeerSpec, BULK, GATEWAY4, SETTLE,
};

/// The client's side of `wg show IFACE dump`: its one peer, the gateway.
fn client_peer(client: &WgClient) -> Result<wg::DumpPeer> {
    let (_, _, peers) = wg::parse_dump(&client.dump()?)?;
    peers.into_iter().next().context("the client has no peer")
}

#[test]
fn transfer_counters_agree_on_both_ends() -> Result<()> {
    if !privileged::require("wg_interop::transfer_counters_agree_on_both_ends") {
        return Ok(());
    }
    let t = Topology::dual_stack(133, 1)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    for _ in 0..10 {
        ensure!(
            ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_secs(2))?,
            "a ping through the tunnel was lost"
        );
    }
    // What one side sent, the other received, byte for byte (the whole datagrams, as both
    // count them), once the last reply is in.
    let (sent, received) = wait_for(SETTLE, "the counters of both ends to agree", || {
        let mine = client_peer(&client)?;
        let (_, _, theirs) = gateway_dump(agent.vpn_interface())?;
        let theirs = theirs.first().context("the gateway has no peer")?;
        Ok(
            (mine.tx_bytes == theirs.rx_bytes && mine.rx_bytes == theirs.tx_bytes)
                .then_some((mine.tx_bytes, mine.rx_bytes)),
        )
    })?;
    // The handshake and ten echo requests: well over ten 96-byte data messages each way.
    ensure!(
        sent >= 10 * 96 && received >= 10 * 96,
        "counters {sent} sent, {received} received"
    );
    Ok(())
}

#[test]
fn large_packets_cross_a_small_outer_mtu_in_fragments() -> Result<()> {
    if !privileged::require("wg_interop::large_packets_cross_a_small_outer_mtu_in_fragments") {
        return Ok(());
    }
    let t = Topology::dual_stack(133, 3)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    // The path between the client and the gateway carries 1280 bytes; the tunnel's own MTU
    // (1420) is larger, so full-size tunnel packets leave both ends as IP fragments.
    t.out.ip(&["link", "set", t.out_if.name(), "mtu", "1280"])?;
    t.host
        .ip(&["link", "set", t.host_if.name(), "mtu", "1280"])?;
    let gateway = gateway_key(&agent)?;
    let _client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let fragments_before = agent.counter(t.host_if.name(), "pass", "fragment")?;
    let mut cmd = std::process::Command::new("ping");
    // 1372 bytes of ICMP in a 1392-byte inner packet that may not be fragmented inside the
    // tunnel: 1424 bytes of UDP outside.
    cmd.args(["-n", "-c", "3", "-W", "2", "-M", "do", "-s", "1364"])
        .arg(GATEWAY4.to_string());
    let out = crmguard_lab::process::output_in(&t.out, cmd)?;
    ensure!(
        out.status.success(),
        "large pings through the tunnel over a 1280-byte path: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let fragments = agent.counter(t.host_if.name(), "pass", "fragment")? - fragments_before;
    ensure!(
        fragments >= 3,
        "the filter saw {fragments} later fragments of the client's datagrams"
    );
    // A download: the gateway sends runs of full-size datagrams, which do not fit the path in
    // one GSO send; they arrive all the same, and intact.
    let _server = BulkServer::start(&t.host, BULK, None)?;
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), BULK);
    t.out.run_in(|| download(dst, 7, 8 << 20))??;
    Ok(())
}

#[test]
fn the_gateway_answers_from_the_address_the_client_chose() -> Result<()> {
    if !privileged::require("wg_interop::the_gateway_answers_from_the_address_the_client_chose") {
        return Ok(());
    }
    let t = Topology::dual_stack(133, 5)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    // The gateway gets a second address and the client moves to it. wireguard-go follows the
    // source of every authenticated datagram, so it stays there only if the gateway answers
    // from that address too.
    let second = IpAddr::V4(Ipv4Addr::new(10, 133, 5, 7));
    t.host_if.add_addr(&format!("{second}/24"))?;
    let moved = SocketAddr::new(second, crate::vpn::WG_PORT);
    client.set_peer(&gateway, moved, &["10.77.0.0/24", "fd77::/64"])?;
    for _ in 0..5 {
        ensure!(
            ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_secs(2))?,
            "a ping through the tunnel after the move was lost"
        );
    }
    let peer = client_peer(&client)?;
    ensure!(
        peer.endpoint.as_deref() == Some(moved.to_string().as_str()),
        "the client's endpoint for the gateway is {:?}, not {moved}: the gateway answered from \
         another address",
        peer.endpoint
    );

    // And back: the first address still works, and is answered from.
    let first = gateway_endpoint(t.addrs.host4);
    client.set_peer(&gateway, first, &["10.77.0.0/24", "fd77::/64"])?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let peer = client_peer(&client)?;
    ensure!(
        peer.endpoint.as_deref() == Some(first.to_string().as_str()),
        "after moving back, the client's endpoint is {:?}",
        peer.endpoint
    );
    Ok(())
}

#[test]
fn a_key_changed_mid_session_cuts_the_old_key_and_admits_the_new() -> Result<()> {
    if !privileged::require(
        "wg_interop::a_key_changed_mid_session_cuts_the_old_key_and_admits_the_new",
    ) {
        return Ok(());
    }
    let t = Topology::dual_stack(133, 7)?;
    let s = setup(&[&t.host_if], &[])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let endpoint = gateway_endpoint(t.addrs.host4);

    // Low-order points are refused, whatever else is right about the request.
    let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = agent.cli(&[
        "peer",
        "add",
        "mallory",
        "--role",
        "staff",
        "--public-key",
        zero,
    ])?;
    ensure!(
        out.status.code() == Some(64)
            && String::from_utf8_lossy(&out.stderr).contains("low-order point"),
        "peer add with a low-order key: {out:?}"
    );

    let old = genkey()?;
    let out = agent.cli(&[
        "peer",
        "add",
        "alice",
        "--role",
        "staff",
        "--public-key",
        &old.public,
    ])?;
    ensure!(out.status.success(), "peer add alice: {out:?}");
    let address = tunnel_address(&agent, "alice")?;
    let client = WgClient::start(&t.out, &old, &[&format!("{address}/24")])?;
    client.set_peer(&gateway, endpoint, &["10.77.0.0/24"])?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    // The device gets a new key while its session runs: the old one is cut at once.
    let new = genkey()?;
    let out = agent.cli(&[
        "peer",
        "add",
        "alice",
        "--role",
        "staff",
        "--public-key",
        &new.public,
    ])?;
    ensure!(
        out.status.success(),
        "peer add alice with a new key: {out:?}"
    );
    ensure!(
        !ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_secs(1))?,
        "the old key still reaches the gateway after the rekey"
    );
    drop(client);
    ensure!(
        tunnel_address(&agent, "alice")? == address,
        "the rekeyed peer moved to another tunnel address"
    );
    let client = WgClient::start(&t.out, &new, &[&format!("{address}/24")])?;
    client.set_peer(&gateway, endpoint, &["10.77.0.0/24"])?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    Ok(())
}

/// The tunnel address `peer list --json` gives `name`.
fn tunnel_address(agent: &crmguard_lab::agent::Agent, name: &str) -> Result<String> {
    let out = agent.cli(&["peer", "list", "--json"])?;
    ensure!(out.status.success(), "peer list: {out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    list.as_array()
        .and_then(|peers| peers.iter().find(|p| p["name"] == name))
        .and_then(|p| p["address"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("peer list has no address for {name}: {list}"))
}
