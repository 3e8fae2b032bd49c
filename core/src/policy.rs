//! Policy compilation: a validated [`Config`] becomes the exact set of map
//! entries the XDP program reads.
//!
//! Pure code: no kernel, no files. The datapath applies a [`CompiledPolicy`]
//! whole and compares it with what the kernel holds. Single addresses go to
//! the hash maps and only true prefixes to the LPM tries, because a trie
//! lookup costs several times a hash lookup on the miss path every packet
//! takes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::abi;
use crate::config::{Config, DefaultAction, IcmpPolicy, Mode, Proto};

/// Everything the kernel needs for one policy, in deterministic order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompiledPolicy {
    /// `cg_config[0]`, without the generation (the datapath sets it).
    pub config: abi::Config,
    pub deny4: BTreeMap<[u8; 4], abi::Rule>,
    pub deny6: BTreeMap<[u8; 16], abi::Rule>,
    pub deny4_lpm: BTreeMap<abi::Lpm4, abi::Rule>,
    pub deny6_lpm: BTreeMap<abi::Lpm6, abi::Rule>,
    pub services: BTreeMap<abi::SvcKey, abi::Svc>,
    pub svc_from4: BTreeMap<abi::SvcLpm4, abi::Rule>,
    pub svc_from6: BTreeMap<abi::SvcLpm6, abi::Rule>,
    /// What each deny rule id stands for (index = rule id - 1).
    pub deny_rules: Vec<String>,
    /// `firewall.limits.global_syn_per_s`; the datapath divides it among
    /// CPUs into `config.syn_per_cpu_per_s`.
    pub global_syn_per_s: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{what}: {count} entries, the kernel map holds at most {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: u32,
    },
    #[error("services `{first}` and `{second}` both claim {proto}/{port}")]
    PortClash {
        first: String,
        second: String,
        proto: &'static str,
        port: u16,
    },
}

/// Compiles a validated config.
pub fn compile(config: &Config) -> Result<CompiledPolicy, PolicyError> {
    let mut policy = CompiledPolicy {
        config: global_settings(config),
        global_syn_per_s: config.firewall.limits.global_syn_per_s,
        ..Default::default()
    };
    compile_deny(config, &mut policy);
    place_deny4_prefixes(&mut policy);
    if !policy.deny6_lpm.is_empty() {
        policy.config.flags |= abi::CFG_DENY6_PREFIXES;
    }
    compile_services(config, &mut policy)?;
    check_capacity(&policy)?;
    Ok(policy)
}

/// IPv4 prefixes of at most `DENY4_PROBES` lengths go in the deny table, each length probed
/// by XDP, longest first; with more lengths they stay in the trie (`CFG_DENY4_PREFIXES`).
fn place_deny4_prefixes(policy: &mut CompiledPolicy) {
    let lengths: std::collections::BTreeSet<u8> = policy
        .deny4_lpm
        .keys()
        .filter_map(|key| u8::try_from(key.prefixlen).ok())
        .collect();
    if lengths.is_empty() {
        return;
    }
    if lengths.len() > abi::DENY4_PROBES {
        policy.config.flags |= abi::CFG_DENY4_PREFIXES;
        return;
    }
    for (slot, len) in policy.config.deny4_len.iter_mut().zip(lengths.iter().rev()) {
        *slot = *len;
    }
    policy.config.deny4_probes = u8::try_from(lengths.len()).unwrap_or(0);
}

fn global_settings(config: &Config) -> abi::Config {
    let fw = &config.firewall;
    abi::Config {
        generation: 0,
        mode: match config.agent.mode {
            Mode::Enforce => abi::MODE_ENFORCE,
            Mode::Monitor => abi::MODE_MONITOR,
        },
        default_action: match fw.default {
            DefaultAction::Drop => abi::Action::Drop as u8,
            DefaultAction::Allow => abi::Action::Pass as u8,
        },
        icmp: match fw.icmp {
            IcmpPolicy::Essential => abi::ICMP_ESSENTIAL,
            IcmpPolicy::All => abi::ICMP_ALL,
            IcmpPolicy::None => abi::ICMP_NONE,
        },
        flags: if fw.allow_established {
            abi::CFG_ALLOW_ESTABLISHED
        } else {
            0
        },
        wg_port_be: config.vpn.as_ref().map_or(0, |vpn| vpn.listen_port.to_be()),
        src_pps: fw.limits.per_source_pps,
        src_burst: fw.limits.per_source_burst,
        src_syn_per_s: fw.limits.syn_per_source_per_s,
        syn_per_cpu_per_s: 0,
        icmp_echo_pps: fw.icmp_echo_per_source_pps,
        wg_handshake_pps: config
            .vpn
            .as_ref()
            .map_or(0, |vpn| vpn.handshake_per_source_pps),
        wg_handshake_burst: config.vpn.as_ref().map_or(0, |vpn| vpn.handshake_burst),
        rl_v6_prefix: fw.limits.ipv6_prefix,
        ..abi::Config::default()
    }
}

fn compile_deny(config: &Config, policy: &mut CompiledPolicy) {
    for entry in &config.firewall.deny {
        let net = entry.net.trunc();
        // A duplicate keeps the first rule that named it.
        let rule_id = u32::try_from(policy.deny_rules.len() + 1).unwrap_or(u32::MAX);
        let rule = abi::Rule { rule_id };
        let inserted = match net {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                policy.deny4.entry(n.addr().octets()).or_insert(rule) == &rule
            }
            IpNet::V6(n) if n.prefix_len() == 128 => {
                policy.deny6.entry(n.addr().octets()).or_insert(rule) == &rule
            }
            IpNet::V4(n) => {
                let key = abi::Lpm4 {
                    prefixlen: u32::from(n.prefix_len()),
                    addr_be: n.addr().octets(),
                };
                policy.deny4_lpm.entry(key).or_insert(rule) == &rule
            }
            IpNet::V6(n) => {
                let key = abi::Lpm6 {
                    prefixlen: u32::from(n.prefix_len()),
                    addr: n.addr().octets(),
                };
                policy.deny6_lpm.entry(key).or_insert(rule) == &rule
            }
        };
        if inserted {
            policy.deny_rules.push(format!("{net} ({})", entry.origin));
        }
    }
}

fn compile_services(config: &Config, policy: &mut CompiledPolicy) -> Result<(), PolicyError> {
    let mut owners: BTreeMap<abi::SvcKey, &str> = BTreeMap::new();
    for (index, service) in config.firewall.services.iter().enumerate() {
        let svc_id = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let (proto, proto_name) = match service.proto {
            Proto::Tcp => (libc::IPPROTO_TCP, "tcp"),
            Proto::Udp => (libc::IPPROTO_UDP, "udp"),
        };
        let proto = u8::try_from(proto).unwrap_or(0);
        let flags = if service.from.is_none() {
            abi::SVC_FROM_ANY
        } else {
            0
        };
        for &port in &service.ports {
            let key = abi::SvcKey {
                proto,
                _pad: 0,
                port_be: port.to_be_bytes(),
            };
            if let Some(first) = owners.insert(key, &service.name) {
                return Err(PolicyError::PortClash {
                    first: first.to_owned(),
                    second: service.name.clone(),
                    proto: proto_name,
                    port,
                });
            }
            policy.services.insert(
                key,
                abi::Svc {
                    svc_id,
                    flags,
                    src_pps: service.per_source_pps.unwrap_or(0),
                    syn_pps: service.new_conn_per_source_per_s.unwrap_or(0),
                },
            );
        }
        for net in service.from.iter().flatten() {
            let rule = abi::Rule { rule_id: svc_id };
            match net.trunc() {
                IpNet::V4(n) => {
                    let key = abi::SvcLpm4 {
                        prefixlen: 32 + u32::from(n.prefix_len()),
                        svc_id_be: svc_id.to_be_bytes(),
                        addr_be: n.addr().octets(),
                    };
                    policy.svc_from4.insert(key, rule);
                }
                IpNet::V6(n) => {
                    let key = abi::SvcLpm6 {
                        prefixlen: 32 + u32::from(n.prefix_len()),
                        svc_id_be: svc_id.to_be_bytes(),
                        addr: n.addr().octets(),
                    };
                    policy.svc_from6.insert(key, rule);
                }
            }
        }
    }
    Ok(())
}

fn check_capacity(policy: &CompiledPolicy) -> Result<(), PolicyError> {
    let checks = [
        (
            "firewall.deny (its entries and files): single IPv4 addresses",
            policy.deny4.len(),
            abi::DENY_HOST_MAX,
        ),
        (
            "firewall.deny (its entries and files): single IPv6 addresses",
            policy.deny6.len(),
            abi::DENY_HOST_MAX,
        ),
        (
            "firewall.deny (its entries and files): IPv4 prefixes",
            policy.deny4_lpm.len(),
            abi::DENY_PREFIX_MAX,
        ),
        (
            "firewall.deny (its entries and files): IPv6 prefixes",
            policy.deny6_lpm.len(),
            abi::DENY_PREFIX_MAX,
        ),
        (
            "firewall.service[].ports: distinct ports of all services",
            policy.services.len(),
            abi::SVC_MAX,
        ),
        (
            "firewall.service[].from: IPv4 prefixes of all services",
            policy.svc_from4.len(),
            abi::SVC_FROM_MAX,
        ),
        (
            "firewall.service[].from: IPv6 prefixes of all services",
            policy.svc_from6.len(),
            abi::SVC_FROM_MAX,
        ),
    ];
    for (what, count, max) in checks {
        if count > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(PolicyError::TooMany { what, count, max });
        }
    }
    Ok(())
}

impl CompiledPolicy {
    /// Whether `addr` is in the deny set, and which rule says so. Used by
    /// `status` and tests; the kernel does the same lookup per packet.
    pub fn deny_rule_for(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.deny4.get(&a.octets()).map(|r| r.rule_id).or_else(|| {
                self.deny4_lpm
                    .iter()
                    .filter(|(k, _)| {
                        IpNet::new(IpAddr::V4(k.addr_be.into()), prefix(k.prefixlen))
                            .is_ok_and(|n| n.contains(&addr))
                    })
                    .max_by_key(|(k, _)| k.prefixlen)
                    .map(|(_, r)| r.rule_id)
            }),
            IpAddr::V6(a) => self.deny6.get(&a.octets()).map(|r| r.rule_id).or_else(|| {
                self.deny6_lpm
                    .iter()
                    .filter(|(k, _)| {
                        IpNet::new(IpAddr::V6(k.addr.into()), prefix(k.prefixlen))
                            .is_ok_and(|n| n.contains(&addr))
                    })
                    .max_by_key(|(k, _)| k.prefixlen)
                    .map(|(_, r)| r.rule_id)
            }),
        }
    }
}

fn prefix(prefixlen: u32) -> u8 {
    u8::try_from(prefixlen).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn compile_src(src: &str) -> CompiledPolicy {
        let config = crate::config::parse(src, Path::new("test.toml")).expect("config");
        compile(&config).expect("policy")
    }

    /// Past a kernel map's size, the error names the configuration keys that filled it.
    #[test]
    fn a_full_map_names_the_keys_that_filled_it() {
        let mut src = String::new();
        for i in 0..257 {
            src.push_str(&format!(
                "[[firewall.service]]\nname = \"s{i}\"\nproto = \"tcp\"\nports = [{}]\n",
                1000 + i
            ));
        }
        let config = crate::config::parse(&src, Path::new("test.toml")).expect("config");
        let error = compile(&config).map(drop).map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err("firewall.service[].ports: distinct ports of all services: 257 entries, the kernel map holds at most 256".to_owned())
        );
    }

    #[test]
    fn hosts_go_to_hash_maps_and_prefixes_to_tries() {
        let policy = compile_src(
            r#"
            [firewall.deny]
            sources = ["203.0.113.7", "203.0.113.8/32", "198.51.100.0/24", "2001:db8::1", "2001:db8:bad::/48"]
            "#,
        );
        assert_eq!(policy.deny4.len(), 2);
        assert_eq!(policy.deny6.len(), 1);
        assert_eq!(policy.deny4_lpm.len(), 1);
        assert_eq!(policy.deny6_lpm.len(), 1);
        let key = abi::Lpm4 {
            prefixlen: 24,
            addr_be: [198, 51, 100, 0],
        };
        assert_eq!(policy.deny4_lpm.get(&key), Some(&abi::Rule { rule_id: 3 }));
        assert_eq!(
            policy.deny_rule_for("198.51.100.200".parse().expect("addr")),
            Some(3)
        );
        assert_eq!(
            policy.deny_rule_for("2001:db8:bad:1::5".parse().expect("addr")),
            Some(5)
        );
        assert_eq!(
            policy.deny_rule_for("192.0.2.1".parse().expect("addr")),
            None
        );
    }

    #[test]
    fn ipv4_prefixes_of_few_lengths_are_probed_in_the_table_and_of_many_in_the_trie() {
        let few = compile_src(
            "[firewall.deny]\nsources = [\"10.0.0.0/8\", \"10.1.0.0/16\", \"10.2.3.0/24\", \
             \"10.4.0.0/16\", \"192.0.2.7\"]\n",
        );
        assert_eq!(few.config.flags & abi::CFG_DENY4_PREFIXES, 0);
        assert_eq!(few.config.deny4_probes, 3);
        assert_eq!(few.config.deny4_len, [24, 16, 8, 0], "longest first");
        let table = crate::deny_table::build(&few).expect("table");
        assert!(table.holds(abi::deny4_entry([10, 1, 0, 0], 16)));
        assert!(table.holds(abi::deny4_entry([192, 0, 2, 7], 32)));

        let many = compile_src(
            "[firewall.deny]\nsources = [\"10.0.0.0/8\", \"11.0.0.0/9\", \"12.0.0.0/10\", \
             \"13.0.0.0/11\", \"14.0.0.0/12\"]\n",
        );
        assert_ne!(many.config.flags & abi::CFG_DENY4_PREFIXES, 0);
        assert_eq!(many.config.deny4_probes, 0);
        assert!(crate::deny_table::entries(&many).is_empty());
    }

    #[test]
    fn services_and_from_lists() {
        let policy = compile_src(
            r#"
            [[firewall.service]]
            name = "ssh"
            proto = "tcp"
            ports = [22]
            from = ["192.0.2.0/24", "2001:db8:a::/48"]

            [[firewall.service]]
            name = "web"
            proto = "tcp"
            ports = [443, 8443]
            new_conn_per_source_per_s = 30
            "#,
        );
        let ssh = abi::SvcKey {
            proto: 6,
            _pad: 0,
            port_be: 22u16.to_be_bytes(),
        };
        assert_eq!(
            policy.services.get(&ssh),
            Some(&abi::Svc {
                svc_id: 1,
                flags: 0,
                src_pps: 0,
                syn_pps: 0
            })
        );
        let web = abi::SvcKey {
            proto: 6,
            _pad: 0,
            port_be: 8443u16.to_be_bytes(),
        };
        assert_eq!(
            policy.services.get(&web),
            Some(&abi::Svc {
                svc_id: 2,
                flags: abi::SVC_FROM_ANY,
                src_pps: 0,
                syn_pps: 30
            })
        );
        let from = abi::SvcLpm4 {
            prefixlen: 56,
            svc_id_be: 1u32.to_be_bytes(),
            addr_be: [192, 0, 2, 0],
        };
        assert!(policy.svc_from4.contains_key(&from));
        assert_eq!(policy.svc_from6.len(), 1);
    }

    #[test]
    fn global_settings_follow_the_config() {
        let policy = compile_src(
            r#"
            [agent]
            mode = "monitor"
            [firewall]
            default = "allow"
            icmp = "none"
            allow_established = false
            [vpn]
            listen_port = 51821
            address = "10.77.0.1/24"
            "#,
        );
        assert_eq!(policy.config.mode, abi::MODE_MONITOR);
        assert_eq!(policy.config.default_action, abi::Action::Pass as u8);
        assert_eq!(policy.config.icmp, abi::ICMP_NONE);
        assert_eq!(policy.config.flags, 0);
        assert_eq!(u16::from_be(policy.config.wg_port_be), 51821);
        assert_eq!(policy.global_syn_per_s, 20000);
        assert_eq!(policy.config.src_pps, 2000);
    }
}
