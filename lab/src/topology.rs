//! The standard two-namespace topology of the firewall scenarios.
//!
//! ```text
//!   netns "out" (the Internet)                 netns "host" (the CRM host, runs crmguard)
//!   10.X.Y.2, 10.X.Y.66 (denied)  ---veth---   10.X.Y.1
//!   fd00:X:Y::2, fd00:X:Y::66                  fd00:X:Y::1
//! ```
//!
//! `X` and `Y` are chosen per test so that addresses in failure messages say which test they
//! belong to; the namespaces keep tests apart whatever the addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;

use crate::net::{Vlan, L2};
use crate::netns::{veth_pair, Iface, NetNs};

/// The addresses of a [`Topology`].
#[derive(Debug, Clone)]
pub struct Addrs {
    /// The host (the firewall's side).
    pub host4: IpAddr,
    pub host6: IpAddr,
    /// An admitted outside client, inside the admin network.
    pub out4: IpAddr,
    pub out6: IpAddr,
    /// An outside address on the deny list, also inside the admin network.
    pub denied4: IpAddr,
    pub denied6: IpAddr,
    /// The admin network, `10.X.Y.0/24` and `fd00:X:Y::/64`.
    pub admin4: String,
    pub admin6: String,
}

impl Addrs {
    fn new(x: u8, y: u8) -> Addrs {
        let v4 = |last| IpAddr::V4(Ipv4Addr::new(10, x, y, last));
        let v6 = |last| IpAddr::V6(Ipv6Addr::new(0xfd00, x.into(), y.into(), 0, 0, 0, 0, last));
        Addrs {
            host4: v4(1),
            host6: v6(1),
            out4: v4(2),
            out6: v6(2),
            denied4: v4(66),
            denied6: v6(0x66),
            admin4: format!("10.{x}.{y}.0/24"),
            admin6: format!("fd00:{x:x}:{y:x}::/64"),
        }
    }
}

/// Two namespaces joined by a veth pair; everything is removed on drop.
#[derive(Debug)]
pub struct Topology {
    pub out: NetNs,
    pub host: NetNs,
    pub out_if: Iface,
    pub host_if: Iface,
    pub addrs: Addrs,
}

impl Topology {
    /// IPv4 and IPv6 on both sides.
    pub fn dual_stack(x: u8, y: u8) -> Result<Topology> {
        let t = Topology::links(x, y)?;
        t.out_if.add_addr(&cidr(t.addrs.out6, 64))?;
        t.out_if.add_addr(&cidr(t.addrs.denied6, 64))?;
        t.host_if.add_addr(&cidr(t.addrs.host6, 64))?;
        t.up()?;
        Ok(t)
    }

    /// IPv6 is disabled on the outside end, so that nothing but the test's own traffic (and
    /// ARP) reaches the host: an IPv6 stack announces itself with MLD reports and router
    /// solicitations for seconds after the link comes up, which would make exact counter
    /// comparisons flaky.
    pub fn ipv4_only(x: u8, y: u8) -> Result<Topology> {
        let t = Topology::links(x, y)?;
        t.out.sysctl(
            &format!("net/ipv6/conf/{}/disable_ipv6", t.out_if.name()),
            "1",
        )?;
        t.up()?;
        Ok(t)
    }

    fn links(x: u8, y: u8) -> Result<Topology> {
        let out = NetNs::new("cgt-out")?;
        let host = NetNs::new("cgt-host")?;
        let (out_if, host_if) = veth_pair(&out, &host)?;
        let addrs = Addrs::new(x, y);
        out_if.add_addr(&cidr(addrs.out4, 24))?;
        out_if.add_addr(&cidr(addrs.denied4, 24))?;
        host_if.add_addr(&cidr(addrs.host4, 24))?;
        Ok(Topology {
            out,
            host,
            out_if,
            host_if,
            addrs,
        })
    }

    fn up(&self) -> Result<()> {
        self.out_if.up()?;
        self.host_if.up()
    }

    /// Gives the outside permanent neighbour entries for the host's addresses. Without them the
    /// outside resolves the host with a neighbour solicitation sent from whichever of its
    /// addresses triggered it, and the firewall drops one from a denied address like any other
    /// packet from it: resolution fails and every outside address, denied or not, gets "no
    /// route to host" until the entry expires. Tests that send from a denied IPv6 address use
    /// this so that each probe stands on its own.
    pub fn pin_neighbours(&self) -> Result<()> {
        let mac = self.host_if.mac()?;
        let lladdr = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        for addr in [self.addrs.host4, self.addrs.host6] {
            self.out.ip(&[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &lladdr,
                "dev",
                self.out_if.name(),
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    /// The host's address of `family_of`'s family, with `port`.
    pub fn host_addr(&self, family_of: IpAddr, port: u16) -> SocketAddr {
        let ip = match family_of {
            IpAddr::V4(_) => self.addrs.host4,
            IpAddr::V6(_) => self.addrs.host6,
        };
        SocketAddr::new(ip, port)
    }

    /// The link layer of a frame sent from the outside end to the host end.
    pub fn l2_to_host(&self, vlan: Vlan) -> Result<L2> {
        Ok(L2 {
            src_mac: self.out_if.mac()?,
            dst_mac: self.host_if.mac()?,
            vlan,
        })
    }
}

fn cidr(addr: IpAddr, len: u8) -> String {
    format!("{addr}/{len}")
}
