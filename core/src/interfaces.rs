//! Which interfaces get the XDP filter when the configuration lists no `[[interface]]`.
//!
//! The filter drops by default, so it belongs on the interfaces through which the host
//! itself is reached, and nowhere else: on a host that runs its CRM in containers, a
//! filter on `docker0`, a container's veth or a bridge port drops the CRM's own traffic.
//! The input is what netlink tells of the agent's own network namespace (links with their
//! kind, master and addresses, and the output interfaces of the default routes); the
//! output is every link, chosen or left out, with the reason, so that the agent can say
//! why.
//!
//! The rule, applied to each link in this order:
//!
//! 1. Loopback and the VPN's own TUN are never chosen.
//! 2. A port of a bridge (its master is a bridge) is left out: its traffic belongs to the
//!    bridge's segment (containers, virtual machines), and when the host is reached
//!    through the bridge, the bridge itself carries the role. A port of a bond or team
//!    is left out too: the bond carries the role. A port of any other master (a VRF)
//!    is judged by its role as any other link.
//! 3. A link that carries a default route (IPv4 `0.0.0.0/0` or IPv6 `::/0`, in any table
//!    but `local`, as its output interface or one of its next hops) is chosen, whatever
//!    its kind: the host's traffic arrives there, even through a veth whose peer is in
//!    another namespace or through a bridge.
//! 4. A link with an address of global scope is chosen when it is a physical device (no
//!    kind), a VLAN, a bond or team, a macvlan or ipvlan, or a veth (a namespace's
//!    uplink). Bridges (`docker0` has a global address), ifb, dummy, tun/tap, WireGuard
//!    and other tunnels, VRFs and any kind not named here are left out: their addresses
//!    serve containers, tunnels or local services, not the host's uplink.
//! 5. A physical device (no kind) is chosen even without a role: at boot the service starts
//!    before the network is configured, and the host must be filtered from its first
//!    address on, not from the agent's next look.
//! 6. Every other link is left out: a virtual device with no default route and no global
//!    address.
//!
//! Interfaces that come later are judged by the same rule when the agent looks again; a
//! link once filtered keeps its filter while the agent runs, even when it loses its role,
//! because removing a filter at run time would open the host.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// The scope of an address, as the kernel reports it (`RT_SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `RT_SCOPE_UNIVERSE`: reachable from beyond the host.
    Global,
    /// Site, link or host scope.
    Local,
}

/// One address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub scope: Scope,
}

/// One link of the namespace, as netlink describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `vlan`, ...); `None` for a physical device.
    pub kind: Option<String>,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
    /// `IFLA_MASTER`: the bridge, bond or VRF this link is a port of.
    pub master: Option<u32>,
    pub addresses: Vec<Address>,
}

/// Why a link was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    DefaultRoute,
    GlobalAddress,
    Physical,
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chosen::DefaultRoute => "carries a default route",
            Chosen::GlobalAddress => "has a global address",
            Chosen::Physical => "a physical device, filtered before it has an address",
        })
    }
}

/// Why a link was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOut {
    Loopback,
    VpnTunnel,
    BridgePort {
        bridge: String,
    },
    BondPort {
        bond: String,
    },
    /// A global address on a kind that does not carry the host's uplink.
    Kind {
        kind: String,
    },
    NoRole,
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeftOut::Loopback => f.write_str("loopback"),
            LeftOut::VpnTunnel => f.write_str("the VPN's own tunnel"),
            LeftOut::BridgePort { bridge } => {
                write!(f, "a port of bridge {bridge}: its traffic belongs to the bridge's segment")
            }
            LeftOut::BondPort { bond } => write!(f, "a port of {bond}, which carries the role"),
            LeftOut::Kind { kind } => write!(
                f,
                "a {kind} without a default route: its addresses serve containers, tunnels or local services"
            ),
            LeftOut::NoRole => {
                f.write_str("a virtual device with no default route and no global address")
            }
        }
    }
}

/// The verdict on one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub index: u32,
    pub name: String,
    pub outcome: Result<Chosen, LeftOut>,
}

/// Kinds whose global address makes them an uplink (rule 4); `None` is a physical device.
const UPLINK_KINDS: [&str; 7] = [
    "vlan", "bond", "team", "macvlan", "ipvlan", "veth", "netkit",
];

/// Kinds of master whose ports are left out (rule 2).
const BRIDGE_KINDS: [&str; 2] = ["bridge", "openvswitch"];
const BOND_KINDS: [&str; 2] = ["bond", "team"];

/// Judges every link by the rule of the module documentation. `default_routes` holds the
/// output interfaces of the default routes; `vpn_interface` is the VPN's own TUN. The
/// verdicts come in the order of `links`.
pub fn select(links: &[Link], default_routes: &BTreeSet<u32>, vpn_interface: &str) -> Vec<Verdict> {
    links
        .iter()
        .map(|link| Verdict {
            index: link.index,
            name: link.name.clone(),
            outcome: judge(link, links, default_routes, vpn_interface),
        })
        .collect()
}

/// The names of the chosen links, in the order of `verdicts`.
pub fn chosen(verdicts: &[Verdict]) -> Vec<&str> {
    verdicts
        .iter()
        .filter(|v| v.outcome.is_ok())
        .map(|v| v.name.as_str())
        .collect()
}

fn judge(
    link: &Link,
    links: &[Link],
    default_routes: &BTreeSet<u32>,
    vpn_interface: &str,
) -> Result<Chosen, LeftOut> {
    if link.loopback || link.name == "lo" {
        return Err(LeftOut::Loopback);
    }
    if link.name == vpn_interface {
        return Err(LeftOut::VpnTunnel);
    }
    if let Some(master) = link
        .master
        .and_then(|m| links.iter().find(|l| l.index == m))
    {
        let kind = master.kind.as_deref().unwrap_or("");
        if BRIDGE_KINDS.contains(&kind) {
            return Err(LeftOut::BridgePort {
                bridge: master.name.clone(),
            });
        }
        if BOND_KINDS.contains(&kind) {
            return Err(LeftOut::BondPort {
                bond: master.name.clone(),
            });
        }
    }
    if default_routes.contains(&link.index) {
        return Ok(Chosen::DefaultRoute);
    }
    if link.addresses.iter().any(|a| a.scope == Scope::Global) {
        return match link.kind.as_deref() {
            None => Ok(Chosen::GlobalAddress),
            Some(kind) if UPLINK_KINDS.contains(&kind) => Ok(Chosen::GlobalAddress),
            Some(kind) => Err(LeftOut::Kind {
                kind: kind.to_owned(),
            }),
        };
    }
    if link.kind.is_none() {
        return Ok(Chosen::Physical);
    }
    Err(LeftOut::NoRole)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link from a compact description: `kind` "" is a physical device, `master` 0 none,
    /// `global` whether it has a global address (it always has a link-local one).
    fn link(index: u32, name: &str, kind: &str, master: u32, global: bool) -> Link {
        let mut addresses = vec![Address {
            ip: "fe80::1".parse().expect("address"),
            scope: Scope::Local,
        }];
        if global {
            addresses.push(Address {
                ip: "192.0.2.1".parse().expect("address"),
                scope: Scope::Global,
            });
        }
        Link {
            index,
            name: name.to_owned(),
            kind: (!kind.is_empty()).then(|| kind.to_owned()),
            loopback: name == "lo",
            master: (master != 0).then_some(master),
            addresses,
        }
    }

    /// A Docker host: the uplink is chosen, docker0, its veths and ifb are not.
    /// A KVM host: the bridge carrying the default route is chosen, its physical port not.
    /// A bond with a VLAN; the lab's veth uplink; a second veth uplink with only an address.
    #[test]
    fn links_are_judged_by_role() {
        let bridge = |b: &str| LeftOut::BridgePort { bridge: b.into() };
        let kind = |k: &str| LeftOut::Kind { kind: k.into() };
        type Case = (
            &'static str,
            Vec<Link>,
            Vec<u32>,
            Vec<(&'static str, Result<Chosen, LeftOut>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "docker host",
                vec![
                    link(1, "lo", "", 0, true),
                    link(2, "eth0", "", 0, true),
                    link(3, "docker0", "bridge", 0, true),
                    link(4, "veth1a2b", "veth", 3, false),
                    link(5, "ifb0", "ifb", 0, false),
                    link(6, "dummy0", "dummy", 0, true),
                    link(7, "wg-crm", "wireguard", 0, true),
                    link(8, "cali12", "veth", 0, false),
                    link(9, "cg0", "tun", 0, true),
                ],
                vec![2],
                vec![
                    ("lo", Err(LeftOut::Loopback)),
                    ("eth0", Ok(Chosen::DefaultRoute)),
                    ("docker0", Err(kind("bridge"))),
                    ("veth1a2b", Err(bridge("docker0"))),
                    ("ifb0", Err(LeftOut::NoRole)),
                    ("dummy0", Err(kind("dummy"))),
                    ("wg-crm", Err(kind("wireguard"))),
                    ("cali12", Err(LeftOut::NoRole)),
                    ("cg0", Err(LeftOut::VpnTunnel)),
                ],
            ),
            (
                "boot: the network is not configured yet",
                vec![link(1, "lo", "", 0, false), link(2, "eno1", "", 0, false)],
                vec![],
                vec![
                    ("lo", Err(LeftOut::Loopback)),
                    ("eno1", Ok(Chosen::Physical)),
                ],
            ),
            (
                "kvm host: the host is reached through its bridge",
                vec![
                    link(2, "eno1", "", 10, false),
                    link(10, "br0", "bridge", 0, true),
                    link(11, "vnet0", "tun", 10, false),
                ],
                vec![10],
                vec![
                    ("eno1", Err(bridge("br0"))),
                    ("br0", Ok(Chosen::DefaultRoute)),
                    ("vnet0", Err(bridge("br0"))),
                ],
            ),
            (
                "bond with a VLAN and a second address-only uplink",
                vec![
                    link(2, "eth0", "", 4, false),
                    link(3, "eth1", "", 4, false),
                    link(4, "bond0", "bond", 0, true),
                    link(5, "bond0.100", "vlan", 0, true),
                    link(6, "eth2", "", 0, true),
                    link(7, "eth3", "", 0, false),
                ],
                vec![4],
                vec![
                    (
                        "eth0",
                        Err(LeftOut::BondPort {
                            bond: "bond0".into(),
                        }),
                    ),
                    (
                        "eth1",
                        Err(LeftOut::BondPort {
                            bond: "bond0".into(),
                        }),
                    ),
                    ("bond0", Ok(Chosen::DefaultRoute)),
                    ("bond0.100", Ok(Chosen::GlobalAddress)),
                    ("eth2", Ok(Chosen::GlobalAddress)),
                    ("eth3", Ok(Chosen::Physical)),
                ],
            ),
            (
                "the lab: a veth uplink, a container bridge, a veth with only an address",
                vec![
                    link(2, "up0", "veth", 0, true),
                    link(3, "br0", "bridge", 0, true),
                    link(4, "ct0", "veth", 3, false),
                    link(5, "up1", "veth", 0, true),
                ],
                vec![2],
                vec![
                    ("up0", Ok(Chosen::DefaultRoute)),
                    ("br0", Err(kind("bridge"))),
                    ("ct0", Err(bridge("br0"))),
                    ("up1", Ok(Chosen::GlobalAddress)),
                ],
            ),
            (
                "a tunnel carrying the default route and a VRF port",
                vec![
                    link(2, "gre1", "gre", 0, false),
                    link(3, "vrf-blue", "vrf", 0, false),
                    link(4, "eth0", "", 3, true),
                ],
                vec![2],
                vec![
                    ("gre1", Ok(Chosen::DefaultRoute)),
                    ("vrf-blue", Err(LeftOut::NoRole)),
                    ("eth0", Ok(Chosen::GlobalAddress)),
                ],
            ),
        ];
        for (name, links, routes, want) in cases {
            let routes: BTreeSet<u32> = routes.into_iter().collect();
            let got: Vec<(String, Result<Chosen, LeftOut>)> = select(&links, &routes, "cg0")
                .into_iter()
                .map(|v| (v.name, v.outcome))
                .collect();
            let want: Vec<(String, Result<Chosen, LeftOut>)> =
                want.into_iter().map(|(n, o)| (n.to_owned(), o)).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn reasons_read_as_sentences() {
        let verdicts = select(
            &[
                link(2, "eth0", "", 0, true),
                link(3, "docker0", "bridge", 0, true),
            ],
            &BTreeSet::new(),
            "cg0",
        );
        assert_eq!(chosen(&verdicts), vec!["eth0"]);
        assert_eq!(
            verdicts[1].outcome.as_ref().err().map(ToString::to_string).as_deref(),
            Some("a bridge without a default route: its addresses serve containers, tunnels or local services")
        );
    }
}
