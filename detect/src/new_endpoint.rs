//! `new_endpoint`: a peer completing a handshake from a network it never used before (its /24
//! for IPv4, its /48 for IPv6) acts (`alert` or `suspend`). The first endpoint ever seen of a
//! peer is learned without acting, as is an endpoint inside the allowlist. Each peer keeps its
//! [`MAX_NETWORKS`] most recently used networks; a network pushed out counts as new again.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crmguard_core::config;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::action::{Action, Detector};
use crate::response::respond;
use crate::table::{Table, Weigh};
use crate::{MAX_KEYS, MAX_WEIGHT};

/// The most networks remembered per peer.
pub const MAX_NETWORKS: usize = 64;

/// A peer's networks, least recently used first.
struct Networks(Vec<IpNet>);

impl Weigh for Networks {
    fn weight(&self) -> usize {
        self.0.len()
    }
}

/// The network an endpoint address belongs to for this detector.
pub fn network_of(addr: IpAddr) -> IpNet {
    match addr.to_canonical() {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new_assert(v4, 24).trunc()),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, 48).trunc()),
    }
}

pub(crate) struct NewEndpoint {
    config: config::NewEndpoint,
    peers: Table<String, Networks>,
}

impl NewEndpoint {
    pub(crate) fn new(config: config::NewEndpoint) -> Self {
        NewEndpoint {
            config,
            peers: Table::new(MAX_KEYS, MAX_WEIGHT),
        }
    }

    pub(crate) fn update(&mut self, config: config::NewEndpoint) {
        self.config = config;
    }

    pub(crate) fn tracked(&self) -> usize {
        self.peers.len()
    }

    /// `allowed` says the endpoint is inside the allowlist.
    pub(crate) fn observe(
        &mut self,
        _at: SystemTime,
        peer: &str,
        endpoint: SocketAddr,
        allowed: bool,
        out: &mut Vec<Action>,
    ) {
        let net = network_of(endpoint.ip());
        let is_new = self.peers.with(
            &peer.to_owned(),
            || Networks(Vec::new()),
            |networks| {
                let first = networks.0.is_empty();
                let known = match networks.0.iter().position(|n| *n == net) {
                    Some(i) => {
                        networks.0.remove(i);
                        true
                    }
                    None => false,
                };
                networks.0.push(net);
                if networks.0.len() > MAX_NETWORKS {
                    networks.0.remove(0);
                }
                !first && !known
            },
        );
        if is_new && !allowed {
            let what = format!(
                "handshake from {} in {net}, a network this peer never used",
                endpoint.ip().to_canonical()
            );
            respond(
                Detector::NewEndpoint,
                self.config.action,
                peer,
                Some(endpoint.ip().to_canonical()),
                &what,
                None,
                out,
            );
        }
    }
}
