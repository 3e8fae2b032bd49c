//! The peer table of the WireGuard endpoint: which peers are admitted, and how a packet finds
//! its peer by public key, by session index or by tunnel address.
//!
//! Pure: no IO, no clock of its own (callers pass the time). The endpoint builds a new [`Table`]
//! on start and on every reload and publishes it whole; the data path only reads it.
//!
//! The allowed-IPs map is global: one map for all peers, from a tunnel address to the peer that
//! owns it. The endpoint looks up the *source* of every decrypted packet in it and accepts the
//! packet only when the answer is the peer that sent it, so a peer cannot borrow another peer's
//! tunnel address (nor an address nobody owns).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::{Config, Date};

/// What the endpoint knows about a peer it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The configured name: a metric label and the actor in audit records.
    pub name: String,
    /// The Curve25519 public key.
    pub public_key: [u8; 32],
    /// The peer's tunnel address.
    pub address: Ipv4Addr,
    /// The peer's IPv6 tunnel address, if any.
    pub address6: Option<Ipv6Addr>,
    /// The peer's role.
    pub role: String,
}

impl PeerInfo {
    /// The prefixes routed to this peer: its addresses as /32 and /128.
    pub fn allowed_ips(&self) -> Vec<IpNet> {
        let mut nets = vec![IpNet::V4(Ipv4Net::from(self.address))];
        if let Some(v6) = self.address6 {
            nets.push(IpNet::V6(Ipv6Net::from(v6)));
        }
        nets
    }
}

/// Why a configured peer is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// `enabled = false`.
    Disabled,
    /// Its key was registered (`created`) longer than `[vpn] key_max_age` ago.
    KeyTooOld,
}

impl Excluded {
    pub fn as_str(self) -> &'static str {
        match self {
            Excluded::Disabled => "disabled",
            Excluded::KeyTooOld => "key older than vpn.key_max_age",
        }
    }
}

/// Splits the configured peers into those the endpoint admits at `now` and those it refuses,
/// with the reason. Without `[vpn]` nobody is admitted.
pub fn admitted(config: &Config, now: SystemTime) -> (Vec<PeerInfo>, Vec<(String, Excluded)>) {
    let Some(vpn) = &config.vpn else {
        return (Vec::new(), Vec::new());
    };
    let mut admitted = Vec::new();
    let mut excluded = Vec::new();
    for peer in &config.peers {
        if !peer.enabled {
            excluded.push((peer.name.clone(), Excluded::Disabled));
            continue;
        }
        if let Some(created) = peer.created {
            if key_expired(created, vpn.key_max_age, now) {
                excluded.push((peer.name.clone(), Excluded::KeyTooOld));
                continue;
            }
        }
        admitted.push(PeerInfo {
            name: peer.name.clone(),
            public_key: peer.public_key,
            address: peer.address,
            address6: peer.address6,
            role: peer.role.clone(),
        });
    }
    (admitted, excluded)
}

/// When a key registered on `created` (midnight UTC) stops being admitted: `max_age` later.
pub fn key_expires_at(created: Date, max_age: Duration) -> SystemTime {
    created.midnight_utc() + max_age
}

/// Whether a key registered on `created` (midnight UTC) is older than `max_age` at `now`:
/// strictly after [`key_expires_at`].
pub fn key_expired(created: Date, max_age: Duration, now: SystemTime) -> bool {
    now > key_expires_at(created, max_age)
}

/// A map from addresses to values by longest prefix. Single addresses (/32, /128) sit in hash
/// maps; only true prefixes go into a list searched longest first.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    hosts4: HashMap<Ipv4Addr, T>,
    hosts6: HashMap<Ipv6Addr, T>,
    /// Longest prefix first.
    nets4: Vec<(Ipv4Net, T)>,
    nets6: Vec<(Ipv6Net, T)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            hosts4: HashMap::new(),
            hosts6: HashMap::new(),
            nets4: Vec::new(),
            nets6: Vec::new(),
        }
    }
}

impl<T> AllowedIps<T> {
    /// Maps `net` to `value`. Returns false, and changes nothing, when `net` is already mapped.
    pub fn insert(&mut self, net: IpNet, value: T) -> bool {
        match net.trunc() {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                if self.hosts4.contains_key(&n.addr()) {
                    return false;
                }
                self.hosts4.insert(n.addr(), value);
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                if self.hosts6.contains_key(&n.addr()) {
                    return false;
                }
                self.hosts6.insert(n.addr(), value);
            }
            IpNet::V4(n) => {
                if self.nets4.iter().any(|(m, _)| *m == n) {
                    return false;
                }
                let at = self
                    .nets4
                    .partition_point(|(m, _)| m.prefix_len() >= n.prefix_len());
                self.nets4.insert(at, (n, value));
            }
            IpNet::V6(n) => {
                if self.nets6.iter().any(|(m, _)| *m == n) {
                    return false;
                }
                let at = self
                    .nets6
                    .partition_point(|(m, _)| m.prefix_len() >= n.prefix_len());
                self.nets6.insert(at, (n, value));
            }
        }
        true
    }

    /// The value of the longest prefix that contains `addr`. An IPv4-mapped IPv6 address is
    /// not an IPv4 address here: tunnel packets carry one family or the other.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.hosts4.get(&a).or_else(|| {
                self.nets4
                    .iter()
                    .find(|(n, _)| n.contains(&a))
                    .map(|(_, v)| v)
            }),
            IpAddr::V6(a) => self.hosts6.get(&a).or_else(|| {
                self.nets6
                    .iter()
                    .find(|(n, _)| n.contains(&a))
                    .map(|(_, v)| v)
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.hosts4.len() + self.hosts6.len() + self.nets4.len() + self.nets6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One entry of a [`Table`]: a peer, its session index and what the endpoint keeps for it.
#[derive(Debug, Clone)]
pub struct Entry<S> {
    pub info: PeerInfo,
    /// The peer's 24-bit session index: the upper 24 bits of every receiver index the peer's
    /// sessions use.
    pub index: u32,
    pub slot: S,
}

/// The peers the endpoint admits, with their three lookups.
#[derive(Debug, Clone)]
pub struct Table<S> {
    entries: Vec<Entry<S>>,
    by_key: HashMap<[u8; 32], usize>,
    by_index: HashMap<u32, usize>,
    allowed: AllowedIps<usize>,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            allowed: AllowedIps::default(),
        }
    }
}

/// A peer that a [`Table`] could not take whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Its public key belongs to a peer listed before it; it was left out.
    DuplicateKey { peer: String, first: String },
    /// Its session index is taken (a bug in the caller); it was left out.
    DuplicateIndex { peer: String },
    /// One of its addresses belongs to a peer listed before it; that address stays with the
    /// first peer.
    DuplicateAddress { peer: String, net: IpNet },
}

impl<S> Table<S> {
    /// Builds the table. Configuration validation already refuses duplicate keys and
    /// addresses; should one get through anyway, the first peer keeps it and the conflict is
    /// reported.
    pub fn build(entries: Vec<Entry<S>>) -> (Table<S>, Vec<Conflict>) {
        // Sized for every entry up front: grown by doubling, the entries' vector of a large
        // gateway would keep up to half of it unused for as long as the table is published.
        let mut table = Table {
            entries: Vec::with_capacity(entries.len()),
            by_key: HashMap::with_capacity(entries.len()),
            by_index: HashMap::with_capacity(entries.len()),
            allowed: AllowedIps {
                hosts4: HashMap::with_capacity(entries.len()),
                ..AllowedIps::default()
            },
        };
        let mut conflicts = Vec::new();
        for entry in entries {
            if let Some(&first) = table.by_key.get(&entry.info.public_key) {
                conflicts.push(Conflict::DuplicateKey {
                    peer: entry.info.name.clone(),
                    first: table.entries[first].info.name.clone(),
                });
                continue;
            }
            if table.by_index.contains_key(&entry.index) {
                conflicts.push(Conflict::DuplicateIndex {
                    peer: entry.info.name.clone(),
                });
                continue;
            }
            let at = table.entries.len();
            table.by_key.insert(entry.info.public_key, at);
            table.by_index.insert(entry.index, at);
            for net in entry.info.allowed_ips() {
                if !table.allowed.insert(net, at) {
                    conflicts.push(Conflict::DuplicateAddress {
                        peer: entry.info.name.clone(),
                        net,
                    });
                }
            }
            table.entries.push(entry);
        }
        (table, conflicts)
    }

    pub fn entries(&self) -> &[Entry<S>] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The peer whose public key is `key`.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Entry<S>> {
        self.by_key.get(key).map(|&i| &self.entries[i])
    }

    /// The peer that owns the receiver index `receiver_index` (its upper 24 bits).
    pub fn by_receiver_index(&self, receiver_index: u32) -> Option<&Entry<S>> {
        self.by_index
            .get(&(receiver_index >> 8))
            .map(|&i| &self.entries[i])
    }

    /// The peer whose allowed IPs contain `addr` (longest prefix).
    pub fn by_address(&self, addr: IpAddr) -> Option<&Entry<S>> {
        self.allowed.lookup(addr).map(|&i| &self.entries[i])
    }

    /// The source check: whether `src`, the inner source address of a packet that arrived
    /// from the peer with session index `index`, belongs to that peer.
    pub fn source_belongs_to(&self, src: IpAddr, index: u32) -> bool {
        self.allowed
            .lookup(src)
            .is_some_and(|&i| self.entries[i].index == index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn info(name: &str, key: u8, last: u8) -> PeerInfo {
        PeerInfo {
            name: name.to_owned(),
            public_key: [key; 32],
            address: Ipv4Addr::new(10, 77, 0, last),
            address6: Some(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, last.into())),
            role: "staff".to_owned(),
        }
    }

    fn table() -> Table<&'static str> {
        let (table, conflicts) = Table::build(vec![
            Entry {
                info: info("alice", 1, 2),
                index: 7,
                slot: "a",
            },
            Entry {
                info: info("bob", 2, 3),
                index: 9,
                slot: "b",
            },
        ]);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        table
    }

    #[test]
    fn finds_peers_by_key_index_and_address() {
        let t = table();
        assert_eq!(t.by_key(&[2; 32]).map(|e| e.slot), Some("b"));
        assert!(t.by_key(&[3; 32]).is_none());
        assert_eq!(
            t.by_receiver_index((7 << 8) | 0x5a).map(|e| e.slot),
            Some("a")
        );
        assert!(t.by_receiver_index(8 << 8).is_none());
        assert_eq!(
            t.by_address("10.77.0.3".parse().expect("addr"))
                .map(|e| e.slot),
            Some("b")
        );
        assert_eq!(
            t.by_address("fd77::2".parse().expect("addr"))
                .map(|e| e.slot),
            Some("a")
        );
        assert!(t.by_address("10.77.0.4".parse().expect("addr")).is_none());
    }

    #[test]
    fn the_source_check_is_global() {
        let t = table();
        let alice = "10.77.0.2".parse().expect("addr");
        let bob = "10.77.0.3".parse().expect("addr");
        let nobody = "10.77.0.99".parse().expect("addr");
        assert!(t.source_belongs_to(alice, 7));
        assert!(t.source_belongs_to(bob, 9));
        // Alice sending with Bob's address, or with an address nobody owns, is refused.
        assert!(!t.source_belongs_to(bob, 7));
        assert!(!t.source_belongs_to(nobody, 7));
        assert!(!t.source_belongs_to("fd77::3".parse().expect("addr"), 7));
        assert!(t.source_belongs_to("fd77::3".parse().expect("addr"), 9));
        // An IPv4-mapped form of Alice's address is not her IPv4 address.
        assert!(!t.source_belongs_to("::ffff:10.77.0.2".parse().expect("addr"), 7));
    }

    #[test]
    fn conflicts_keep_the_first_peer() {
        let mut dup = info("mallory", 1, 3);
        dup.public_key = [1; 32];
        let mut same_addr = info("carol", 4, 2);
        same_addr.address6 = None;
        let (t, conflicts) = Table::build(vec![
            Entry {
                info: info("alice", 1, 2),
                index: 1,
                slot: (),
            },
            Entry {
                info: dup,
                index: 2,
                slot: (),
            },
            Entry {
                info: same_addr,
                index: 3,
                slot: (),
            },
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            conflicts,
            vec![
                Conflict::DuplicateKey {
                    peer: "mallory".into(),
                    first: "alice".into()
                },
                Conflict::DuplicateAddress {
                    peer: "carol".into(),
                    net: "10.77.0.2/32".parse().expect("net")
                },
            ]
        );
        assert!(t.source_belongs_to("10.77.0.2".parse().expect("addr"), 1));
        assert!(!t.source_belongs_to("10.77.0.2".parse().expect("addr"), 3));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut m = AllowedIps::default();
        assert!(m.insert("10.0.0.0/8".parse().expect("net"), 1));
        assert!(m.insert("10.1.0.0/16".parse().expect("net"), 2));
        assert!(m.insert("10.1.2.3/32".parse().expect("net"), 3));
        assert!(!m.insert("10.1.0.0/16".parse().expect("net"), 4));
        assert!(m.insert("fd00::/8".parse().expect("net"), 5));
        let at = |a: &str| m.lookup(a.parse().expect("addr")).copied();
        assert_eq!(at("10.1.2.3"), Some(3));
        assert_eq!(at("10.1.2.4"), Some(2));
        assert_eq!(at("10.2.0.1"), Some(1));
        assert_eq!(at("11.0.0.1"), None);
        assert_eq!(at("fd12::1"), Some(5));
        assert_eq!(at("fe80::1"), None);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn admits_enabled_peers_with_fresh_keys() {
        let text = r#"
[vpn]
address = "10.77.0.1/24"
key_max_age = "30d"

[[role]]
name = "staff"
allow = ["tcp/443"]

[[peer]]
name = "fresh"
public_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
address = "10.77.0.2"
role = "staff"
created = "2025-01-01"

[[peer]]
name = "old"
public_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
address = "10.77.0.3"
role = "staff"
created = "2024-01-01"

[[peer]]
name = "off"
public_key = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
address = "10.77.0.4"
role = "staff"
enabled = false

[[peer]]
name = "undated"
public_key = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ="
address = "10.77.0.5"
role = "staff"
"#;
        let config = crate::config::parse(text, Path::new("t.toml")).expect("valid config");
        // 2025-01-15
        let now = std::time::UNIX_EPOCH + Duration::from_secs(20_103 * 86_400);
        let (admitted, excluded) = admitted(&config, now);
        let names: Vec<&str> = admitted.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["fresh", "undated"]);
        assert_eq!(
            excluded,
            vec![
                ("old".to_owned(), Excluded::KeyTooOld),
                ("off".to_owned(), Excluded::Disabled)
            ]
        );
    }
}
