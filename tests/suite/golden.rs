//! Golden packets: real frames run through the loaded XDP program with
//! BPF_PROG_TEST_RUN, asserting the XDP action and that exactly the expected
//! (action, reason) counter moved by one packet and the frame's bytes.
//!
//! The same cases also run through the agent's reference model
//! (`crmguard_core::model`), which needs no privileges.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use aya::Ebpf;
use crmguard_core::abi::{Action, Reason};
use crmguard_core::model::{self, ModelState};
use crmguard_core::policy;
use crmguard_datapath::{self, PolicyMaps};
use crmguard_lab::frames::*;
use crmguard_lab::privileged;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The policy every golden case runs against.
const POLICY: &str = r#"
[firewall]
default = "drop"
icmp = "essential"

[firewall.deny]
sources = ["203.0.113.66", "198.51.100.0/24", "2001:db8:bad::66", "2001:db8:dead::/48"]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["192.0.2.0/24", "2001:db8:a::/48"]

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [443]

[[firewall.service]]
name = "dns"
proto = "udp"
ports = [53]
from = ["192.0.2.0/24"]

[vpn]
listen_port = 51820
address = "10.77.0.1/24"
"#;

/// A loaded program with its own pinned maps, removed on drop.
struct Fixture {
    dir: PathBuf,
    ebpf: Ebpf,
    maps: PolicyMaps,
}

impl Fixture {
    fn new(name: &str, config: &str) -> Result<Fixture> {
        let dir = PathBuf::from(format!("/sys/fs/bpf/cggold-{}-{name}", std::process::id()));
        let _ = crmguard_datapath::uninstall(&dir);
        let (ebpf, mut maps) =
            crmguard_datapath::load_for_test(&dir).context("loading the XDP program")?;
        let config = crmguard_core::config::parse(config, Path::new("golden.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let policy = policy::compile(&config)?;
        maps.apply(&policy, 1)?;
        Ok(Fixture { dir, ebpf, maps })
    }

    fn counters(&self) -> Result<Vec<(Action, Reason, u64, u64)>> {
        Ok(self
            .maps
            .read_counters(0)?
            .into_iter()
            .map(|(a, r, s)| (a, r, s.packets, s.bytes))
            .collect())
    }

    /// Runs one frame; returns the XDP action and the single counter that
    /// moved, checking it moved by one packet and the frame's length.
    fn run(&mut self, frame: &[u8]) -> Result<(u32, Action, Reason)> {
        let before = self.counters()?;
        let program = crmguard_datapath::program(&mut self.ebpf)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        let after = self.counters()?;
        let moved: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b.2 != a.2)
            .map(|(b, a)| (a.0, a.1, a.2 - b.2, a.3 - b.3))
            .collect();
        anyhow::ensure!(
            moved.len() == 1,
            "expected one counter to move, got {moved:?}"
        );
        let (action, reason, packets, bytes) = moved[0];
        anyhow::ensure!(packets == 1, "counter moved by {packets} packets");
        anyhow::ensure!(
            bytes == frame.len() as u64,
            "counted {bytes} bytes of a {}-byte frame",
            frame.len()
        );
        Ok((result.return_value, action, reason))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = crmguard_datapath::uninstall(&self.dir);
    }
}

use Reason::*;

const ADMIN: &str = "192.0.2.5";
const STRANGER: &str = "203.0.113.5";
const ADMIN6: &str = "2001:db8:a::5";
const STRANGER6: &str = "2001:db8:b::5";

/// (name, frame, expected XDP action, expected reason)
fn cases() -> Vec<(&'static str, Vec<u8>, u32, Reason)> {
    let q = 0x8100;
    let ad = 0x88a8;
    let mut cases = vec![
        ("arp passes", eth(&[], ETH_ARP, &[0u8; 28]), XDP_PASS, NonIp),
        ("admin to ssh", tcp4(ADMIN, 22), XDP_PASS, Service),
        ("stranger to ssh", tcp4(STRANGER, 22), XDP_DROP, DefaultDrop),
        (
            "stranger to web (from anywhere)",
            tcp4(STRANGER, 443),
            XDP_PASS,
            Service,
        ),
        (
            "denied /32 to web",
            tcp4("203.0.113.66", 443),
            XDP_DROP,
            DeniedSource,
        ),
        (
            "denied /24 to web",
            tcp4("198.51.100.7", 443),
            XDP_DROP,
            DeniedSource,
        ),
        (
            "admin to a closed port",
            tcp4(ADMIN, 8080),
            XDP_DROP,
            DefaultDrop,
        ),
        ("admin6 to ssh", tcp6(ADMIN6, 22), XDP_PASS, Service),
        (
            "stranger6 to ssh",
            tcp6(STRANGER6, 22),
            XDP_DROP,
            DefaultDrop,
        ),
        ("stranger6 to web", tcp6(STRANGER6, 443), XDP_PASS, Service),
        (
            "denied6 /128",
            tcp6("2001:db8:bad::66", 443),
            XDP_DROP,
            DeniedSource,
        ),
        (
            "denied6 /48",
            tcp6("2001:db8:dead:1::1", 443),
            XDP_DROP,
            DeniedSource,
        ),
        (
            "admin to dns over udp",
            udp4(ADMIN, 53, b"q"),
            XDP_PASS,
            Service,
        ),
        (
            "stranger to dns over udp",
            udp4(STRANGER, 53, b"q"),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "udp to a closed port",
            udp4(ADMIN, 9999, b"x"),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "tcp to the udp service port",
            tcp4(ADMIN, 53),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "gre",
            eth(&[], ETH_IP, &ipv4(v4(ADMIN, 47), &[0u8; 8])),
            XDP_DROP,
            DefaultDrop,
        ),
        // VLAN: parsed, not passed blindly.
        (
            "802.1Q admin to ssh",
            eth(&[q], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 5))),
            XDP_PASS,
            Service,
        ),
        (
            "802.1Q stranger to ssh",
            eth(&[q], ETH_IP, &ipv4(v4(STRANGER, 6), &tcp(22, 5))),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "QinQ denied source",
            eth(&[ad, q], ETH_IP, &ipv4(v4("203.0.113.66", 6), &tcp(443, 5))),
            XDP_DROP,
            DeniedSource,
        ),
        (
            "QinQ ipv6 admin to ssh",
            eth(&[ad, q], ETH_IP6, &ipv6(ADMIN6, 6, &tcp(22, 5))),
            XDP_PASS,
            Service,
        ),
        (
            "three tags",
            eth(&[ad, q, q], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 5))),
            XDP_DROP,
            Malformed,
        ),
        (
            "vlan tag truncated",
            {
                let mut f = eth(&[], q, &[]);
                f.extend_from_slice(&[0, 100]);
                f
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "vlan-tagged arp",
            eth(&[q], ETH_ARP, &[0u8; 28]),
            XDP_PASS,
            NonIp,
        ),
        // Malformed IPv4 and transport headers.
        (
            "ethernet header only",
            eth(&[], ETH_IP, &[]),
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv4 truncated",
            eth(&[], ETH_IP, &[0x45, 0, 0, 40]),
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv4 ihl 4",
            {
                let mut p = ipv4(v4(ADMIN, 6), &tcp(22, 5));
                p[0] = 0x44;
                eth(&[], ETH_IP, &p)
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv4 version 5",
            {
                let mut p = ipv4(v4(ADMIN, 6), &tcp(22, 5));
                p[0] = 0x55;
                eth(&[], ETH_IP, &p)
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv4 with options to ssh",
            eth(
                &[],
                ETH_IP,
                &ipv4(
                    V4 {
                        options: 8,
                        ..v4(ADMIN, 6)
                    },
                    &tcp(22, 5),
                ),
            ),
            XDP_PASS,
            Service,
        ),
        (
            "ipv4 options past the end",
            {
                let mut p = ipv4(v4(ADMIN, 6), &[]);
                p[0] = 0x4f;
                eth(&[], ETH_IP, &p)
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv4 total length too long",
            eth(
                &[],
                ETH_IP,
                &ipv4(
                    V4 {
                        tot_len_extra: 100,
                        ..v4(ADMIN, 6)
                    },
                    &tcp(22, 5),
                ),
            ),
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv4 total length shorter than header",
            eth(
                &[],
                ETH_IP,
                &ipv4(
                    V4 {
                        tot_len_extra: -50,
                        ..v4(ADMIN, 6)
                    },
                    &tcp(22, 5),
                ),
            ),
            XDP_DROP,
            Malformed,
        ),
        (
            "tcp truncated",
            eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 5)[..12])),
            XDP_DROP,
            Malformed,
        ),
        (
            "tcp doff 4",
            eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 4)[..20])),
            XDP_DROP,
            Malformed,
        ),
        (
            "tcp options past the end",
            {
                let mut t = tcp(22, 5);
                t[12] = 0xf0;
                eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &t))
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "tcp with options to ssh",
            eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 8))),
            XDP_PASS,
            Service,
        ),
        (
            "udp truncated",
            eth(&[], ETH_IP, &ipv4(v4(ADMIN, 17), &[0, 53, 0, 53])),
            XDP_DROP,
            Malformed,
        ),
        (
            "udp length past the end",
            {
                let mut u = udp(53, b"abc");
                u[4..6].copy_from_slice(&200u16.to_be_bytes());
                eth(&[], ETH_IP, &ipv4(v4(ADMIN, 17), &u))
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "udp length below 8",
            {
                let mut u = udp(53, b"abc");
                u[4..6].copy_from_slice(&4u16.to_be_bytes());
                eth(&[], ETH_IP, &ipv4(v4(ADMIN, 17), &u))
            },
            XDP_DROP,
            Malformed,
        ),
        // Fragments: a later fragment without a known first one.
        (
            "ipv4 later fragment",
            eth(
                &[],
                ETH_IP,
                &ipv4(
                    V4 {
                        frag_off: 100,
                        ..v4(ADMIN, 6)
                    },
                    &[0u8; 16],
                ),
            ),
            XDP_DROP,
            FragmentOrphan,
        ),
        (
            "ipv4 first fragment to ssh",
            eth(
                &[],
                ETH_IP,
                &ipv4(
                    V4 {
                        frag_off: 0x2000,
                        ..v4(ADMIN, 6)
                    },
                    &tcp(22, 5),
                ),
            ),
            XDP_PASS,
            Service,
        ),
        // ICMP essentials.
        (
            "icmp echo request",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(8, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmp echo reply",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(0, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmp fragmentation needed",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(3, 4))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmp time exceeded",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(11, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmp timestamp",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(13, 0))),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "icmp redirect",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(5, 0))),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "icmp truncated",
            eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &[8, 0])),
            XDP_DROP,
            Malformed,
        ),
        (
            "icmp from a denied source",
            eth(&[], ETH_IP, &ipv4(v4("198.51.100.1", 1), &icmp(8, 0))),
            XDP_DROP,
            DeniedSource,
        ),
        (
            "icmpv6 neighbour solicitation",
            eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(135, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmpv6 router advertisement",
            eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(134, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmpv6 packet too big",
            eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(2, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmpv6 echo request",
            eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(128, 0))),
            XDP_PASS,
            Icmp,
        ),
        (
            "icmpv6 unknown type",
            eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(200, 0))),
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "icmp inside ipv6",
            eth(&[], ETH_IP6, &ipv6(STRANGER6, 1, &icmp(8, 0))),
            XDP_DROP,
            DefaultDrop,
        ),
        // IPv6 headers and extension chains.
        (
            "ipv6 truncated",
            eth(&[], ETH_IP6, &[0x60, 0, 0, 0, 0, 8]),
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv6 version 4 in an ipv6 frame",
            {
                let mut p = ipv6(ADMIN6, 6, &tcp(22, 5));
                p[0] = 0x40;
                eth(&[], ETH_IP6, &p)
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv6 payload length past the end",
            {
                let mut p = ipv6(ADMIN6, 6, &tcp(22, 5));
                p[4..6].copy_from_slice(&500u16.to_be_bytes());
                eth(&[], ETH_IP6, &p)
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv6 hop-by-hop then ssh",
            {
                let mut payload = ext(6);
                payload.extend(tcp(22, 5));
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 0, &payload))
            },
            XDP_PASS,
            Service,
        ),
        (
            "ipv6 hop-by-hop hides stranger to ssh",
            {
                let mut payload = ext(60);
                payload.extend(ext(6));
                payload.extend(tcp(22, 5));
                eth(&[], ETH_IP6, &ipv6(STRANGER6, 0, &payload))
            },
            XDP_DROP,
            DefaultDrop,
        ),
        (
            "ipv6 six extension headers",
            {
                let mut payload = Vec::new();
                for _ in 0..5 {
                    payload.extend(ext(60));
                }
                payload.extend(ext(6));
                payload.extend(tcp(22, 5));
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 60, &payload))
            },
            XDP_PASS,
            Service,
        ),
        (
            "ipv6 seven extension headers",
            {
                let mut payload = Vec::new();
                for _ in 0..6 {
                    payload.extend(ext(60));
                }
                payload.extend(ext(6));
                payload.extend(tcp(22, 5));
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 60, &payload))
            },
            XDP_DROP,
            Ipv6ExtHeader,
        ),
        (
            "ipv6 mobility header",
            {
                let mut payload = ext(6);
                payload.extend(tcp(22, 5));
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 135, &payload))
            },
            XDP_DROP,
            Ipv6ExtHeader,
        ),
        (
            "ipv6 extension header past the end",
            {
                let mut h = ext(6);
                h[1] = 10;
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 0, &h))
            },
            XDP_DROP,
            Malformed,
        ),
        (
            "ipv6 later fragment",
            {
                let frag = vec![6, 0, 0x01, 0x00, 0, 0, 0, 7];
                let mut payload = frag;
                payload.extend([0u8; 16]);
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 44, &payload))
            },
            XDP_DROP,
            FragmentOrphan,
        ),
        (
            "ipv6 first fragment to ssh",
            {
                let mut payload = vec![6, 0, 0x00, 0x01, 0, 0, 0, 7];
                payload.extend(tcp(22, 5));
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 44, &payload))
            },
            XDP_PASS,
            Service,
        ),
    ];
    // The WireGuard port takes only WireGuard-shaped messages.
    let wg_cases: [(&'static str, u8, u8, usize, u32, Reason); 9] = [
        ("wg initiation", 1, 0, 148, XDP_PASS, Wireguard),
        (
            "wg initiation, wrong size",
            1,
            0,
            100,
            XDP_DROP,
            WgMalformed,
        ),
        ("wg response", 2, 0, 92, XDP_PASS, Wireguard),
        ("wg cookie reply", 3, 0, 64, XDP_PASS, Wireguard),
        ("wg data, minimum", 4, 0, 32, XDP_PASS, Wireguard),
        ("wg data, not padded to 16", 4, 0, 45, XDP_PASS, Wireguard),
        ("wg data, too short", 4, 0, 31, XDP_DROP, WgMalformed),
        ("wg reserved bytes set", 4, 1, 64, XDP_DROP, WgMalformed),
        ("wg unknown type", 5, 0, 64, XDP_DROP, WgMalformed),
    ];
    for (name, t, reserved, len, action, reason) in wg_cases {
        cases.push((
            name,
            udp4(STRANGER, 51820, &wg(t, reserved, len)),
            action,
            reason,
        ));
    }
    cases.push((
        "wg port, empty datagram",
        udp4(STRANGER, 51820, &[]),
        XDP_DROP,
        WgMalformed,
    ));
    cases.push((
        "wg over ipv6",
        eth(
            &[],
            ETH_IP6,
            &ipv6(STRANGER6, 17, &udp(51820, &wg(1, 0, 148))),
        ),
        XDP_PASS,
        Wireguard,
    ));
    cases
}

fn action_of(xdp: u32) -> Action {
    if xdp == XDP_PASS {
        Action::Pass
    } else {
        Action::Drop
    }
}

#[test]
fn golden_packets() -> Result<()> {
    if !privileged::require("golden_packets") {
        return Ok(());
    }
    let mut fixture = Fixture::new("main", POLICY)?;
    let mut failures = Vec::new();
    let cases = cases();
    for (name, frame, action, reason) in &cases {
        match fixture.run(frame) {
            Ok(got) if got == (*action, action_of(*action), *reason) => {}
            Ok((xdp, counted, why)) => failures.push(format!(
                "{name}: got xdp {xdp} counted {}/{why}, want xdp {action} {}/{reason}",
                counted.name(),
                action_of(*action).name()
            )),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden packets failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The reference model with the golden policy in force. The kernel divides
/// the global SYN budget among CPUs; the golden cases send far too few SYNs
/// for that share to matter, so the model gets the whole budget.
fn model_for(config: &str) -> Result<ModelState> {
    let config = crmguard_core::config::parse(config, Path::new("golden.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut policy = policy::compile(&config)?;
    policy.config.syn_per_cpu_per_s = policy.global_syn_per_s;
    Ok(ModelState::new(policy))
}

#[test]
fn golden_cases_hold_in_the_model() -> Result<()> {
    let mut state = model_for(POLICY)?;
    let now = 1_000_000_000;
    let mut failures = Vec::new();
    let cases = cases();
    for (name, frame, action, reason) in &cases {
        let got = model::decide(&mut state, frame, now);
        if got != (action_of(*action), *reason) {
            failures.push(format!(
                "{name}: model says {}/{}, want {}/{reason}",
                got.0.name(),
                got.1,
                action_of(*action).name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden packets differ in the model:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn golden_monitor_mode_drops_nothing() -> Result<()> {
    if !privileged::require("golden_monitor_mode_drops_nothing") {
        return Ok(());
    }
    let config = format!("[agent]\nmode = \"monitor\"\n{POLICY}");
    let mut fixture = Fixture::new("monitor", &config)?;
    let check = |got: (u32, Action, Reason), want: Reason| {
        assert_eq!(got, (XDP_PASS, Action::WouldDrop, want))
    };
    check(fixture.run(&tcp4("203.0.113.66", 443))?, DeniedSource);
    check(fixture.run(&tcp4(STRANGER, 22))?, DefaultDrop);
    check(fixture.run(&eth(&[], ETH_IP, &[]))?, Malformed);
    assert_eq!(
        fixture.run(&tcp4(ADMIN, 22))?,
        (XDP_PASS, Action::Pass, Service)
    );
    Ok(())
}

#[test]
fn golden_default_allow_and_icmp_none() -> Result<()> {
    if !privileged::require("golden_default_allow_and_icmp_none") {
        return Ok(());
    }
    let config = POLICY
        .replace("default = \"drop\"", "default = \"allow\"")
        .replace("icmp = \"essential\"", "icmp = \"none\"");
    let mut fixture = Fixture::new("allow", &config)?;
    assert_eq!(
        fixture.run(&tcp4(STRANGER, 8080))?,
        (XDP_PASS, Action::Pass, DefaultAllow)
    );
    // Deny still wins over a default of allow.
    assert_eq!(
        fixture.run(&tcp4("203.0.113.66", 8080))?,
        (XDP_DROP, Action::Drop, DeniedSource)
    );
    // icmp = "none" drops echo, yet keeps PMTU discovery and neighbour discovery working.
    let echo = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(8, 0)));
    assert_eq!(fixture.run(&echo)?, (XDP_PASS, Action::Pass, DefaultAllow));
    let frag_needed = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(3, 4)));
    assert_eq!(fixture.run(&frag_needed)?, (XDP_PASS, Action::Pass, Icmp));
    let ns = eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(135, 0)));
    assert_eq!(fixture.run(&ns)?, (XDP_PASS, Action::Pass, Icmp));
    Ok(())
}

#[test]
fn golden_icmp_none_under_default_drop() -> Result<()> {
    if !privileged::require("golden_icmp_none_under_default_drop") {
        return Ok(());
    }
    let config = POLICY.replace("icmp = \"essential\"", "icmp = \"none\"");
    let mut fixture = Fixture::new("icmpnone", &config)?;
    let echo = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(8, 0)));
    assert_eq!(fixture.run(&echo)?, (XDP_DROP, Action::Drop, DefaultDrop));
    let pkt_too_big = eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(2, 0)));
    assert_eq!(fixture.run(&pkt_too_big)?, (XDP_PASS, Action::Pass, Icmp));
    Ok(())
}
