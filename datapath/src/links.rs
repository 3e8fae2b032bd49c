//! The links, addresses and default routes of the agent's own network namespace, read
//! through rtnetlink, for [`crmguard_core::interfaces::select`].
//!
//! Netlink answers for the namespace of the socket, which is the agent's, where
//! `/sys/class/net` shows the namespace its sysfs was mounted in (under `nsenter --net`,
//! the root namespace's devices).

use std::collections::BTreeSet;
use std::io;

use crmguard_core::interfaces::{Address, Link, Scope};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("opening a netlink socket")]
    Socket(#[source] io::Error),
    #[error("dumping the {what} over netlink")]
    Dump {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("decoding netlink's answer about the {what}: {detail}")]
    Decode { what: &'static str, detail: String },
}

/// What netlink tells of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub links: Vec<Link>,
    /// The output interfaces of the default routes.
    pub default_routes: BTreeSet<u32>,
}

/// The local routing table, whose routes are the host's own addresses.
const RT_TABLE_LOCAL: u32 = 255;

/// Reads the links, their addresses and the default routes of the agent's namespace.
pub fn read() -> Result<Namespace, LinksError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(LinksError::Socket)?;
    socket.bind_auto().map_err(LinksError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(LinksError::Socket)?;
    let mut links = Vec::new();
    for message in dump(
        &socket,
        1,
        "links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(link) = message {
            links.push(link_of(&link));
        }
    }
    let addresses = dump(
        &socket,
        2,
        "addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    for message in addresses {
        if let RouteNetlinkMessage::NewAddress(address) = message {
            let Some(ip) = address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }) else {
                continue;
            };
            let scope = match address.header.scope {
                AddressScope::Universe => Scope::Global,
                _ => Scope::Local,
            };
            if let Some(link) = links.iter_mut().find(|l| l.index == address.header.index) {
                link.addresses.push(Address { ip, scope });
            }
        }
    }
    let mut default_routes = BTreeSet::new();
    for message in dump(
        &socket,
        3,
        "routes",
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewRoute(route) = message {
            default_routes.extend(default_route_interfaces(&route));
        }
    }
    Ok(Namespace {
        links,
        default_routes,
    })
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        kind: None,
        loopback: message.header.flags.contains(LinkFlags::Loopback),
        master: None,
        addresses: Vec::new(),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Controller(master) if *master != 0 => link.master = Some(*master),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// The output interfaces of a route when it is a unicast default route outside the local
/// table: its `RTA_OIF`, or its next hops' interfaces.
fn default_route_interfaces(route: &RouteMessage) -> Vec<u32> {
    let header = &route.header;
    if header.destination_prefix_length != 0 || header.kind != RouteType::Unicast {
        return Vec::new();
    }
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table == RT_TABLE_LOCAL {
        return Vec::new();
    }
    let mut out = Vec::new();
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => out.push(*index),
            RouteAttribute::MultiPath(hops) => {
                out.extend(hops.iter().map(|h| h.interface_index));
            }
            _ => {}
        }
    }
    out
}

/// Sends one dump request and collects the answers until `NLMSG_DONE`.
fn dump(
    socket: &Socket,
    sequence: u32,
    what: &'static str,
    request: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, LinksError> {
    let io_err = |source| LinksError::Dump { what, source };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0).map_err(io_err)?;

    let mut out = Vec::new();
    // Large enough for any one datagram of a dump (the kernel fills at most 32 KiB).
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0).map_err(io_err)?;
        let mut offset = 0;
        while offset < size {
            let bytes = receive.get(offset..size).unwrap_or_default();
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                    LinksError::Decode {
                        what,
                        detail: e.to_string(),
                    }
                })?;
            let length = usize::try_from(message.header.length).unwrap_or(0);
            if message.header.sequence_number == sequence {
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(io_err(io::Error::from_raw_os_error(-code.get())));
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteHeader;

    fn route(
        prefix: u8,
        table: u8,
        kind: RouteType,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.destination_prefix_length = prefix;
        message.header.table = table;
        message.header.kind = kind;
        message.attributes = attributes;
        message
    }

    #[test]
    fn default_routes_are_unicast_zero_prefixes_outside_the_local_table() {
        let main = RouteHeader::RT_TABLE_MAIN;
        let cases = [
            (
                route(0, main, RouteType::Unicast, vec![RouteAttribute::Oif(2)]),
                vec![2],
            ),
            (
                route(24, main, RouteType::Unicast, vec![RouteAttribute::Oif(3)]),
                vec![],
            ),
            (
                route(0, 255, RouteType::Unicast, vec![RouteAttribute::Oif(4)]),
                vec![],
            ),
            (route(0, main, RouteType::BlackHole, vec![]), vec![]),
            (
                route(
                    0,
                    0,
                    RouteType::Unicast,
                    vec![RouteAttribute::Table(1000), RouteAttribute::Oif(5)],
                ),
                vec![5],
            ),
        ];
        for (message, want) in cases {
            assert_eq!(default_route_interfaces(&message), want, "{message:?}");
        }
    }

    /// Reads the test's own namespace: loopback is always there and is a loopback.
    #[test]
    fn reads_this_namespace() {
        let namespace = read().expect("netlink dump");
        let lo = namespace.links.iter().find(|l| l.name == "lo").expect("lo");
        assert!(lo.loopback && lo.index != 0);
    }
}
