//! The cases of the Linux kernel's WireGuard self-test (`tools/testing/selftests/wireguard/
//! netns.sh`) that apply to a userspace endpoint, with wireguard-go as the other side:
//! counters that agree on both ends, outer packets fragmented by a small path MTU, roaming on
//! the gateway's side (the client's side is `vpn::a_roaming_client_keeps_its_session`), a key
//! changed in the middle of a session, keys that must be refused (low-order points), and a
//! client behind NAT that stays reachable with its keepalive.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::net::{self, UdpReceiver};
use crmguard_lab::netns::{veth_pair, NetNs};
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

/// The router's UDP mappings are forgotten after this many seconds of silence.
const NAT_UDP_TIMEOUT: &str = "3";
/// Longer than that: what a client behind the router is silent for.
const SILENCE: Duration = Duration::from_secs(6);

#[test]
fn a_client_behind_nat_stays_reachable_with_keepalive() -> Result<()> {
    if !privileged::require("wg_interop::a_client_behind_nat_stays_reachable_with_keepalive") {
        return Ok(());
    }
    privileged::require_tools(&[("nft", "nftables")])?;
    // client (192.168.77.2) -- router, masquerading as its outside address -- the gateway.
    let t = Topology::ipv4_only(133, 9)?;
    let client_ns = NetNs::new("cgt-natc")?;
    let (client_if, router_if) = veth_pair(&client_ns, &t.out)?;
    client_if.add_addr("192.168.77.2/24")?;
    router_if.add_addr("192.168.77.1/24")?;
    client_if.up()?;
    router_if.up()?;
    client_ns.ip(&["route", "add", "default", "via", "192.168.77.1"])?;
    t.out.sysctl("net/ipv4/ip_forward", "1")?;
    let rules_dir = tempfile::tempdir()?;
    let rules = rules_dir.path().join("nat.nft");
    std::fs::write(
        &rules,
        format!(
            "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    \
             oifname \"{}\" masquerade\n  }}\n}}\n",
            t.out_if.name()
        ),
    )?;
    let mut nft = std::process::Command::new("nft");
    nft.arg("-f").arg(&rules);
    let out = crmguard_lab::process::output_in(&t.out, nft)?;
    ensure!(out.status.success(), "nft: {out:?}");
    // Both the timeout of a one-way mapping and that of one that has seen replies.
    for key in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        t.out
            .sysctl(&format!("net/netfilter/{key}"), NAT_UDP_TIMEOUT)?;
    }

    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let client = alice.connect(&client_ns, &gateway, gateway_endpoint(t.addrs.host4))?;
    client.set_keepalive(&gateway, 1)?;
    wait_reachable(&client_ns, IpAddr::V4(GATEWAY4))?;
    let (_, _, peers) = gateway_dump(agent.vpn_interface())?;
    let seen = peers.first().and_then(|p| p.endpoint.clone());
    ensure!(
        seen.as_deref()
            .is_some_and(|e| e.starts_with(&format!("{}:", t.addrs.out4))),
        "the gateway sees alice at {seen:?}, not at the router's address"
    );

    // Silence from alice longer than the router remembers a mapping: her keepalives keep it,
    // so the gateway's side can still reach her (datagrams from the gateway's tunnel address to
    // a port she listens on; what the gateway sends a peer is not filtered on the way out).
    let receiver = UdpReceiver::start(&client_ns, NAT_PROBE)?;
    let probe = SocketAddr::new(alice_address(), NAT_PROBE);
    std::thread::sleep(SILENCE);
    net::udp_send(&t.host, IpAddr::V4(GATEWAY4), probe, 3, 32)?;
    wait_for(
        SETTLE,
        "the gateway's datagrams at alice behind the NAT",
        || Ok((receiver.received() >= 3).then_some(())),
    )
    .context("her keepalive did not keep the router's mapping")?;

    // Without the keepalive the mapping lapses and nothing from the gateway gets through: the
    // keepalive was what kept her reachable.
    client.set_keepalive(&gateway, 0)?;
    std::thread::sleep(SILENCE);
    let before = receiver.received();
    net::udp_send(&t.host, IpAddr::V4(GATEWAY4), probe, 3, 32)?;
    // A datagram that gets through arrives within milliseconds; give it a second.
    let arrived = wait_for(
        Duration::from_secs(1),
        "a datagram after the mapping lapsed",
        || Ok((receiver.received() > before).then_some(())),
    );
    ensure!(
        arrived.is_err(),
        "the gateway reached alice after her mapping should have lapsed"
    );
    Ok(())
}

/// The port alice listens on behind the NAT.
const NAT_PROBE: u16 = 9700;

fn alice_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2))
}
