//! Changing the peers file: adding and re-keying peers, removing, enabling and disabling them.
//!
//! Every operation takes the [`Config`] it applies to, for the roles, the tunnel subnets and the
//! inline peers. That configuration may have been read with [`crate::config::load`] (inline
//! peers followed by those of the peers file) or with [`crate::config::parse`] (inline peers
//! only). A configured peer whose name the [`PeersFile`] never held is an inline peer; for the
//! peers of the file, the document is what counts, also after it was changed: a re-keyed peer's
//! old key and a removed peer's addresses are free again at once. So the configuration and the
//! peers file must be read together, and the file must not change on disk while it is edited
//! in memory (the agent and `crmguard peer` take turns through the control socket).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::{valid_peer_name, PeersFile, ProvisionError};
use crate::config::{Config, Date, Peer, Vpn};

/// The result of [`PeersFile::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The peer as it now stands in the peers file.
    pub peer: Peer,
    /// Whether a peer of that name was in the file already and got the new key (re-keying),
    /// keeping its addresses.
    pub replaced: bool,
}

impl PeersFile {
    /// Registers the peer `name` with `role` and `public_key`, created `today`, enabled.
    ///
    /// A peer of that name in the peers file is re-keyed: it keeps its addresses and gets the
    /// new key and role and `created = today` (which restarts `vpn.key_max_age`); whether it
    /// is enabled stays as it was, so re-keying never undoes an administrator's `disable`.
    /// The same key again is refused ([`ProvisionError::SameKey`]). Otherwise the peer gets the lowest free address of the tunnel subnet
    /// (`vpn.address`), skipping the network and broadcast addresses, the gateway's own address
    /// and every address of a configured or file peer, enabled or not. With `vpn.address6` it
    /// also gets the IPv6 address with the same host offset inside that subnet, and an offset
    /// is used only when both addresses are free.
    ///
    /// Refused: an invalid name, an unknown role, a low-order key, a key another peer uses, a name that an
    /// inline `[[peer]]` of the configuration file holds, and a full subnet.
    pub fn add(
        &mut self,
        config: &Config,
        name: &str,
        role: &str,
        public_key: [u8; 32],
        today: Date,
    ) -> Result<Added, ProvisionError> {
        let vpn = vpn(config)?;
        if !valid_peer_name(name) {
            return Err(ProvisionError::InvalidName {
                name: name.to_owned(),
            });
        }
        if config.role(role).is_none() {
            return Err(unknown_role(config, role));
        }
        if self.is_inline(config, name) {
            return Err(ProvisionError::InlinePeer {
                name: name.to_owned(),
                peers_file: vpn.peers_file.clone(),
            });
        }
        if crate::keys::is_low_order(&public_key) {
            return Err(ProvisionError::LowOrderKey);
        }
        let key_owner = self
            .all_peers(config)
            .find(|peer| peer.public_key == public_key && peer.name != name);
        if let Some(owner) = key_owner {
            return Err(ProvisionError::DuplicateKey {
                owner: owner.name.clone(),
            });
        }
        if let Some(at) = self.peers.iter().position(|peer| peer.name == name) {
            let peer = &mut self.peers[at];
            if peer.public_key == public_key {
                // Registering the same key again would restart vpn.key_max_age without
                // rotating anything.
                return Err(ProvisionError::SameKey {
                    name: name.to_owned(),
                });
            }
            peer.public_key = public_key;
            peer.role = role.to_owned();
            peer.created = Some(today);
            return Ok(Added {
                peer: peer.clone(),
                replaced: true,
            });
        }
        let used4: BTreeSet<Ipv4Addr> = self.all_peers(config).map(|peer| peer.address).collect();
        let used6: BTreeSet<Ipv6Addr> = self
            .all_peers(config)
            .filter_map(|peer| peer.address6)
            .collect();
        let Some((address, address6)) = allocate(vpn, &used4, &used6) else {
            let mut subnets = format!("{} (vpn.address)", vpn.address.trunc());
            if let Some(net6) = vpn.address6 {
                subnets.push_str(&format!(" with {} (vpn.address6)", net6.trunc()));
            }
            return Err(ProvisionError::SubnetFull { subnets });
        };
        let peer = Peer {
            name: name.to_owned(),
            public_key,
            address,
            address6,
            role: role.to_owned(),
            created: Some(today),
            enabled: true,
        };
        self.peers.push(peer.clone());
        self.known.insert(peer.name.clone());
        Ok(Added {
            peer,
            replaced: false,
        })
    }

    /// Removes the peer `name` from the peers file and returns it.
    pub fn remove(&mut self, config: &Config, name: &str) -> Result<Peer, ProvisionError> {
        let at = self.position(config, name)?;
        Ok(self.peers.remove(at))
    }

    /// Disables the peer `name`: the endpoint refuses it until it is enabled again. Returns
    /// whether it was enabled before.
    pub fn disable(&mut self, config: &Config, name: &str) -> Result<bool, ProvisionError> {
        let at = self.position(config, name)?;
        let was_enabled = self.peers[at].enabled;
        self.peers[at].enabled = false;
        Ok(was_enabled)
    }

    /// Enables the peer `name` again. Returns whether it was disabled before.
    pub fn enable(&mut self, config: &Config, name: &str) -> Result<bool, ProvisionError> {
        let at = self.position(config, name)?;
        let was_disabled = !self.peers[at].enabled;
        self.peers[at].enabled = true;
        Ok(was_disabled)
    }

    /// The index of the file peer `name`, or why there is none to change.
    fn position(&self, config: &Config, name: &str) -> Result<usize, ProvisionError> {
        let vpn = vpn(config)?;
        if let Some(at) = self.peers.iter().position(|peer| peer.name == name) {
            return Ok(at);
        }
        let inline = self.is_inline(config, name);
        let name = name.to_owned();
        let peers_file = vpn.peers_file.clone();
        Err(if inline {
            ProvisionError::InlinePeer { name, peers_file }
        } else {
            ProvisionError::UnknownPeer { name, peers_file }
        })
    }

    /// Whether `name` is an inline peer of `config`: configured, and never held by this
    /// document.
    fn is_inline(&self, config: &Config, name: &str) -> bool {
        !self.known.contains(name) && config.peer(name).is_some()
    }

    /// The inline peers of `config` and the peers of this document.
    fn all_peers<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = &'a Peer> {
        config
            .peers
            .iter()
            .filter(|peer| !self.known.contains(&peer.name))
            .chain(&self.peers)
    }
}

fn vpn(config: &Config) -> Result<&Vpn, ProvisionError> {
    config.vpn.as_ref().ok_or(ProvisionError::NoVpn)
}

fn unknown_role(config: &Config, role: &str) -> ProvisionError {
    let known = if config.roles.is_empty() {
        "no role is configured".to_owned()
    } else {
        let names: Vec<String> = config
            .roles
            .iter()
            .map(|r| format!("`{}`", r.name))
            .collect();
        format!("the roles are {}", names.join(", "))
    };
    ProvisionError::UnknownRole {
        role: role.to_owned(),
        known,
    }
}

/// The lowest free host offset of the tunnel subnet, as its IPv4 address and, when
/// `vpn.address6` is set, the IPv6 address with the same offset. `None` when the subnet is full.
fn allocate(
    vpn: &Vpn,
    used4: &BTreeSet<Ipv4Addr>,
    used6: &BTreeSet<Ipv6Addr>,
) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
    let net4 = vpn.address.trunc();
    let network = u32::from(net4.network());
    // The configuration never holds a prefix longer than /30, so the broadcast address is
    // above the network address.
    let hosts = u32::from(net4.broadcast()).checked_sub(network)?;
    for offset in 1..hosts {
        let address = Ipv4Addr::from(network.checked_add(offset)?);
        if address == vpn.address.addr() || used4.contains(&address) {
            continue;
        }
        let Some(net6) = vpn.address6 else {
            return Some((address, None));
        };
        // Past the end of the IPv6 subnet every larger offset is too.
        let address6 = v6_at(net6, offset)?;
        if address6 == net6.addr() || used6.contains(&address6) {
            continue;
        }
        return Some((address, Some(address6)));
    }
    None
}

/// The address `offset` hosts above the network address of `net`, if it is inside `net`.
fn v6_at(net: Ipv6Net, offset: u32) -> Option<Ipv6Addr> {
    let host_bits = 128 - u32::from(net.prefix_len());
    let offset = u128::from(offset);
    if host_bits < 128 && offset >> host_bits != 0 {
        return None;
    }
    u128::from(net.network())
        .checked_add(offset)
        .map(Ipv6Addr::from)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::keys;

    const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const TODAY: Date = Date {
        year: 2027,
        month: 3,
        day: 4,
    };

    /// A configuration with roles `sales` and `dba`, the tunnel `vpn`, and `peers` as inline
    /// `[[peer]]` tables (name, last octet, key byte).
    fn tunnel_config(vpn: &str, peers: &[(&str, u8, u8)]) -> Config {
        let mut text = format!(
            "[vpn]\n{vpn}\npeers_file = \"/srv/peers.toml\"\n\
             [[role]]\nname = \"sales\"\n[[role]]\nname = \"dba\"\n"
        );
        for (name, last, key) in peers {
            text.push_str(&format!(
                "[[peer]]\nname = \"{name}\"\npublic_key = \"{}\"\naddress = \"10.77.0.{last}\"\nrole = \"sales\"\n",
                keys::encode(&[*key; 32])
            ));
        }
        crate::config::parse(&text, Path::new("crmguard.toml")).expect("valid config")
    }

    fn v4_only() -> Config {
        tunnel_config("address = \"10.77.0.1/24\"", &[])
    }

    fn file_peer(name: &str, address: &str, address6: Option<&str>, key: u8) -> Peer {
        Peer {
            name: name.to_owned(),
            public_key: [key; 32],
            address: address.parse().expect("addr"),
            address6: address6.map(|a| a.parse().expect("addr6")),
            role: "dba".to_owned(),
            created: Date::new(2026, 1, 1),
            enabled: false,
        }
    }

    fn addresses(added: &Added) -> (String, Option<String>) {
        (
            added.peer.address.to_string(),
            added.peer.address6.map(|a| a.to_string()),
        )
    }

    fn add(file: &mut PeersFile, config: &Config, name: &str, key: u8) -> Result<Added, String> {
        file.add(config, name, "sales", [key; 32], TODAY)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn allocates_the_lowest_free_address() {
        // The gateway is .3; inline peers hold .1, .2 and .5; a disabled file peer holds .4.
        let config = tunnel_config(
            "address = \"10.77.0.3/24\"",
            &[("alice", 1, 1), ("bob", 2, 2), ("erin", 5, 5)],
        );
        let mut file = PeersFile::from_peers(vec![file_peer("carol", "10.77.0.4", None, 3)]);
        let added = add(&mut file, &config, "dave", 4).expect("added");
        assert_eq!(
            added,
            Added {
                peer: Peer {
                    name: "dave".into(),
                    public_key: [4; 32],
                    address: Ipv4Addr::new(10, 77, 0, 6),
                    address6: None,
                    role: "sales".into(),
                    created: Some(TODAY),
                    enabled: true,
                },
                replaced: false,
            }
        );
        let added = add(&mut file, &config, "frank", 6).expect("added");
        assert_eq!(addresses(&added), ("10.77.0.7".to_owned(), None));
        // A removed peer's address is free again.
        file.remove(&config, "carol").expect("removed");
        let added = add(&mut file, &config, "gina", 7).expect("added");
        assert_eq!(addresses(&added), ("10.77.0.4".to_owned(), None));
        let names: Vec<&str> = file.peers().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dave", "frank", "gina"]);
    }

    #[test]
    fn ipv6_uses_the_same_host_offset() {
        let config = tunnel_config(
            "address = \"10.77.0.1/24\"\naddress6 = \"fd77::3/64\"",
            &[("alice", 2, 1)],
        );
        let mut file = PeersFile::default();
        // Offset 2 is alice's (IPv4); offset 3 is free in IPv4 but is the gateway's IPv6
        // address; offset 4 is free in both.
        let added = add(&mut file, &config, "bob", 2).expect("added");
        assert_eq!(
            addresses(&added),
            ("10.77.0.4".to_owned(), Some("fd77::4".to_owned()))
        );
        // A file peer holding fd77::5 with another IPv4 address blocks offset 5.
        file.peers
            .push(file_peer("carol", "10.77.0.9", Some("fd77::5"), 3));
        let added = add(&mut file, &config, "dave", 4).expect("added");
        // Offset 3 is the gateway's in IPv6, 4 is bob's, 5 is carol's in IPv6.
        assert_eq!(
            addresses(&added),
            ("10.77.0.6".to_owned(), Some("fd77::6".to_owned()))
        );
    }

    #[test]
    fn a_full_subnet_is_an_error() {
        // A /30 has two host addresses: the gateway's and one peer's.
        let config = tunnel_config("address = \"10.77.0.1/30\"", &[("alice", 2, 1)]);
        let mut file = PeersFile::default();
        assert_eq!(
            add(&mut file, &config, "bob", 2),
            Err("no free peer address left in 10.77.0.0/30 (vpn.address); remove unused peers or widen vpn.address".to_owned())
        );
        // An IPv6 subnet smaller than the IPv4 one runs out first.
        let config = tunnel_config(
            "address = \"10.77.0.1/24\"\naddress6 = \"fd77::1/126\"",
            &[],
        );
        let mut file = PeersFile::default();
        for (name, key) in [("a", 1), ("b", 2)] {
            add(&mut file, &config, name, key).expect("room left");
        }
        assert_eq!(
            add(&mut file, &config, "c", 3),
            Err("no free peer address left in 10.77.0.0/24 (vpn.address) with fd77::/126 (vpn.address6); remove unused peers or widen vpn.address".to_owned())
        );
    }

    #[test]
    fn adding_an_existing_name_rekeys_and_keeps_the_addresses() {
        let config = tunnel_config("address = \"10.77.0.1/24\"\naddress6 = \"fd77::1/64\"", &[]);
        let mut file = PeersFile::from_peers(vec![
            file_peer("carol", "10.77.0.40", Some("fd77::99"), 3),
            file_peer("dave", "10.77.0.41", None, 4),
        ]);
        let added = file
            .add(&config, "carol", "sales", [9; 32], TODAY)
            .expect("re-keyed");
        let expected = Peer {
            name: "carol".into(),
            public_key: [9; 32],
            address: Ipv4Addr::new(10, 77, 0, 40),
            address6: Some("fd77::99".parse().expect("addr")),
            role: "sales".into(),
            created: Some(TODAY),
            // Carol was disabled and stays so: re-keying does not undo a `peer disable`.
            enabled: false,
        };
        assert_eq!(
            added,
            Added {
                peer: expected.clone(),
                replaced: true
            }
        );
        assert_eq!(file.peers()[0], expected);
        assert_eq!(file.peers().len(), 2);
        // The same key again is refused: it would restart the key's age without rotating it.
        assert!(matches!(
            file.add(&config, "carol", "dba", [9; 32], TODAY),
            Err(ProvisionError::SameKey { .. })
        ));
    }

    #[test]
    fn refusals() {
        let config = tunnel_config("address = \"10.77.0.1/24\"", &[("alice", 2, 1)]);
        let mut file = PeersFile::from_peers(vec![file_peer("carol", "10.77.0.4", None, 3)]);
        let before = file.clone();
        assert_eq!(
            add(&mut file, &config, "alice", 7),
            Err("peer `alice` is defined by a [[peer]] table in the configuration file, not in the peers file /srv/peers.toml; change it there".to_owned())
        );
        assert_eq!(
            add(&mut file, &config, "dave", 1),
            Err("the public key is already used by peer `alice`".to_owned())
        );
        assert_eq!(
            add(&mut file, &config, "dave", 3),
            Err("the public key is already used by peer `carol`".to_owned())
        );
        assert_eq!(
            file.add(&config, "dave", "ops", [8; 32], TODAY)
                .map_err(|e| e.to_string()),
            Err("unknown role `ops`; the roles are `sales`, `dba`".to_owned())
        );
        assert_eq!(
            add(&mut file, &config, "bad name", 8),
            Err("`bad name` is not a peer name of 1 to 64 characters from A-Z, a-z, 0-9, `.`, `_` and `-`".to_owned())
        );
        let no_vpn = crate::config::parse("", Path::new("crmguard.toml")).expect("valid");
        assert!(matches!(
            file.add(&no_vpn, "dave", "sales", [8; 32], TODAY),
            Err(ProvisionError::NoVpn)
        ));
        assert_eq!(file, before);
    }

    #[test]
    fn remove_enable_and_disable_change_only_file_peers() {
        let config = tunnel_config("address = \"10.77.0.1/24\"", &[("alice", 2, 1)]);
        let mut file = PeersFile::from_peers(vec![
            file_peer("carol", "10.77.0.4", None, 3),
            file_peer("dave", "10.77.0.5", None, 4),
        ]);
        let err = |result: Result<bool, ProvisionError>| result.map_err(|e| e.to_string());
        assert_eq!(err(file.enable(&config, "carol")), Ok(true));
        assert_eq!(err(file.enable(&config, "carol")), Ok(false));
        assert!(file.peers()[0].enabled);
        assert_eq!(err(file.disable(&config, "carol")), Ok(true));
        assert_eq!(err(file.disable(&config, "carol")), Ok(false));
        assert!(!file.peers()[0].enabled);
        assert_eq!(
            err(file.disable(&config, "alice")),
            Err("peer `alice` is defined by a [[peer]] table in the configuration file, not in the peers file /srv/peers.toml; change it there".to_owned())
        );
        assert_eq!(
            err(file.enable(&config, "zoe")),
            Err(
                "no peer named `zoe` in the configuration or the peers file /srv/peers.toml"
                    .to_owned()
            )
        );
        assert!(matches!(
            file.remove(&config, "alice"),
            Err(ProvisionError::InlinePeer { .. })
        ));
        let removed = file.remove(&config, "carol").expect("removed");
        assert_eq!(removed.name, "carol");
        let names: Vec<&str> = file.peers().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dave"]);
        assert!(matches!(
            file.remove(&config, "carol"),
            Err(ProvisionError::UnknownPeer { .. })
        ));
    }

    #[test]
    fn file_peers_in_the_configuration_are_not_inline() {
        // A configuration read with `config::load` lists the file's peers too.
        let mut config = v4_only();
        let carol = file_peer("carol", "10.77.0.4", None, 3);
        config.peers.push(carol.clone());
        let mut file = PeersFile::from_peers(vec![carol]);
        let added = add(&mut file, &config, "carol", 9).expect("re-keyed");
        assert!(added.replaced);
        let added = add(&mut file, &config, "dave", 3).expect("carol's old key is free");
        assert_eq!(addresses(&added), ("10.77.0.2".to_owned(), None));
        assert!(file.remove(&config, "carol").is_ok());
    }

    #[test]
    fn saved_peers_pass_the_configuration_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("crmguard.toml");
        std::fs::write(
            &config_path,
            format!(
                "[vpn]\naddress = \"10.77.0.1/24\"\naddress6 = \"fd77::1/64\"\n\
                 peers_file = \"state/peers.toml\"\n\
                 [[role]]\nname = \"sales\"\n[[role]]\nname = \"dba\"\n\
                 [[peer]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.77.0.2\"\n\
                 address6 = \"fd77::2\"\nrole = \"sales\"\ncreated = \"2026-11-01\"\n"
            ),
        )
        .expect("write config");
        let config = crate::config::load(&config_path).expect("valid config");
        let peers_path = dir.path().join("state/peers.toml");
        let vpn = config.vpn.as_ref().expect("[vpn]");
        assert_eq!(vpn.peers_file, peers_path);
        let mut file = PeersFile::load(&peers_path).expect("missing is empty");
        let bob = file
            .add(&config, "bob", "dba", [2; 32], TODAY)
            .expect("bob")
            .peer;
        let carol = file
            .add(&config, "carol", "sales", [3; 32], TODAY)
            .expect("carol")
            .peer;
        assert!(file.disable(&config, "carol").expect("disabled"));
        file.save(&peers_path).expect("saved");

        let reloaded = crate::config::load(&config_path).expect("the loader accepts the file");
        let names: Vec<&str> = reloaded.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(reloaded.peers[1], bob);
        assert_eq!(
            reloaded.peers[2],
            Peer {
                enabled: false,
                ..carol
            }
        );
        assert_eq!(bob.address6, Some("fd77::3".parse().expect("addr")));

        // Editing again on top of the reloaded configuration, which now lists the file's peers.
        let mut file = PeersFile::load(&peers_path).expect("load");
        let rekeyed = file
            .add(&reloaded, "bob", "sales", [4; 32], TODAY)
            .expect("re-keyed");
        assert!(rekeyed.replaced);
        let dave = file
            .add(&reloaded, "dave", "sales", [2; 32], TODAY)
            .expect("bob's old key is free again")
            .peer;
        assert_eq!(dave.address, Ipv4Addr::new(10, 77, 0, 5));
        file.save(&peers_path).expect("saved");
        let again = crate::config::load(&config_path).expect("still valid");
        assert_eq!(again.peers.len(), 4);
    }
}
