use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::persist::{self, PersistError};
use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_700_000_000;

fn net(text: &str) -> IpNet {
    text.parse()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .expect("a test address")
}

fn manual(text: &str, ttl: Option<u64>, force: bool) -> ManualBan {
    ManualBan {
        net: net(text),
        ttl: ttl.map(Duration::from_secs),
        reason: None,
        by: "admin:alice".into(),
        force,
    }
}

const HOST: [&str; 2] = ["192.0.2.10", "fd00:1::10"];
const ALLOW: [&str; 2] = ["198.51.100.0/28", "2001:db8:aa::/48"];
const TUNNEL: [&str; 2] = ["10.77.0.0/24", "fd77::/64"];
const TRUSTED: [&str; 2] = ["100.64.7.0/24", "2001:db8:ad::/48"];

fn with_guard<T>(f: impl FnOnce(&Safeguards<'_>) -> T) -> T {
    let host_addrs: Vec<IpAddr> = HOST.iter().map(|a| a.parse().expect("addr")).collect();
    let allowlist: Vec<IpNet> = ALLOW.iter().map(|a| net(a)).collect();
    let tunnel_nets: Vec<IpNet> = TUNNEL.iter().map(|a| net(a)).collect();
    let trusted: Vec<IpNet> = TRUSTED.iter().map(|a| net(a)).collect();
    f(&Safeguards {
        allowlist: &allowlist,
        host_addrs: &host_addrs,
        tunnel_nets: &tunnel_nets,
        trusted: &trusted,
    })
}

/// Adds one manual ban to an empty store: the normalised network, or the refusal.
fn check_manual(text: &str, force: bool, expected: Result<&str, BanError>) {
    let mut store = BanStore::new();
    let actual = with_guard(|guard| store.add_manual(manual(text, None, force), guard, at(NOW)))
        .map(|added| added.ban.net);
    assert_eq!(actual, expected.map(net), "{text} force={force}");
}

#[test]
fn what_may_be_banned() {
    check_manual("203.0.113.7", false, Ok("203.0.113.7/32"));
    check_manual("203.0.113.7/32", false, Ok("203.0.113.7/32"));
    check_manual("203.0.113.7/24", false, Ok("203.0.113.0/24"));
    check_manual("2001:db8:5::1", false, Ok("2001:db8:5::1/128"));
    check_manual("2001:db8:5::1/64", false, Ok("2001:db8:5::/64"));
    check_manual("10.0.0.0/8", false, Ok("10.0.0.0/8"));
    check_manual("2001:db8::/32", false, Ok("2001:db8::/32"));
    // Broad prefixes need force.
    let too_broad = |n: &str, min| BanError::TooBroad { net: net(n), min };
    check_manual("10.0.0.0/7", false, Err(too_broad("10.0.0.0/7", 8)));
    check_manual("10.0.0.0/7", true, Ok("10.0.0.0/7"));
    check_manual("2001:db8::/31", false, Err(too_broad("2001:db8::/31", 32)));
    check_manual("2001:db8::/31", true, Ok("2001:db8::/31"));
    // Everything, loopback, unspecified and mapped addresses never.
    for force in [false, true] {
        let everything = |n: &str| BanError::Everything { net: net(n) };
        check_manual("0.0.0.0/0", force, Err(everything("0.0.0.0/0")));
        check_manual("1.2.3.4/0", force, Err(everything("0.0.0.0/0")));
        check_manual("::/0", force, Err(everything("::/0")));
        let loopback = |n: &str| BanError::Loopback { net: net(n) };
        check_manual("127.0.0.1", force, Err(loopback("127.0.0.1/32")));
        check_manual("127.0.0.0/8", force, Err(loopback("127.0.0.0/8")));
        check_manual("::1", force, Err(loopback("::1/128")));
        let unspecified = |n: &str| BanError::Unspecified { net: net(n) };
        check_manual("0.0.0.0", force, Err(unspecified("0.0.0.0/32")));
        check_manual("::", force, Err(unspecified("::/128")));
        check_manual(
            "::ffff:203.0.113.7",
            force,
            Err(BanError::Ipv4Mapped {
                net: net("::ffff:203.0.113.7/128"),
                ipv4: net("203.0.113.7/32"),
            }),
        );
    }
    // A network holding one of the host's own addresses needs force.
    check_manual(
        "192.0.2.0/24",
        false,
        Err(BanError::HostAddress {
            net: net("192.0.2.0/24"),
            addr: "192.0.2.10".parse().expect("addr"),
        }),
    );
    check_manual("192.0.2.0/24", true, Ok("192.0.2.0/24"));
    check_manual(
        "fd00:1::/64",
        false,
        Err(BanError::HostAddress {
            net: net("fd00:1::/64"),
            addr: "fd00:1::10".parse().expect("addr"),
        }),
    );
    check_manual("192.0.2.11", false, Ok("192.0.2.11/32"));
}

#[test]
fn reasons_and_authors_are_checked() {
    let check = |reason: Option<&str>, by: &str, expected: Result<&str, BanError>| {
        let mut store = BanStore::new();
        let request = ManualBan {
            reason: reason.map(str::to_owned),
            by: by.to_owned(),
            ..manual("203.0.113.7", None, false)
        };
        let actual = with_guard(|g| store.add_manual(request, g, at(NOW))).map(|a| a.ban.reason);
        assert_eq!(actual, expected.map(str::to_owned), "{reason:?} {by}");
    };
    check(None, "admin:alice", Ok(DEFAULT_MANUAL_REASON));
    check(
        Some("credential stuffing, ticket #42"),
        "admin:alice",
        Ok("credential stuffing, ticket #42"),
    );
    check(Some("  "), "admin:alice", Err(BanError::EmptyReason));
    check(Some("a\nb"), "admin:alice", Err(BanError::ReasonControl));
    let long = "x".repeat(MAX_REASON_CHARS + 1);
    check(Some(&long), "admin:alice", Err(BanError::ReasonTooLong));
    check(None, "alice", Err(BanError::Author("alice".into())));
    check(None, "admin:", Err(BanError::Author("admin:".into())));
    check(None, "admin:a b", Err(BanError::Author("admin:a b".into())));
    check(None, "admin:root (login alice)", Ok(DEFAULT_MANUAL_REASON));
    for bad in [
        "admin:root (login )",
        "admin:root (login alice",
        "admin:root (login a(b))",
        "admin: (login alice)",
    ] {
        check(None, bad, Err(BanError::Author(bad.into())));
    }
}

#[test]
fn a_manual_ban_replaces_the_ban_of_the_same_network() {
    let mut store = BanStore::new();
    with_guard(|g| {
        let first = store
            .add_manual(manual("203.0.113.7", None, false), g, at(NOW))
            .expect("first ban");
        assert_eq!(first.replaced, None);
        assert_eq!(first.ban.expires, None);
        // The same network written differently: a shorter ban replaces the permanent one.
        let second = store
            .add_manual(manual("203.0.113.7/32", Some(3600), false), g, at(NOW + 10))
            .expect("second ban");
        assert_eq!(second.replaced, Some(first.ban));
        assert_eq!(second.ban.expires, Some(at(NOW + 10 + 3600)));
        assert_eq!(second.ban.created, at(NOW + 10));
    });
    assert_eq!(store.len(), 1);
}

#[test]
fn a_detector_never_shortens_a_ban() {
    let mut store = BanStore::new();
    let addr = net("203.0.113.7");
    with_guard(|g| {
        store
            .add_manual(manual("203.0.113.7", Some(7200), false), g, at(NOW))
            .expect("manual ban");
        let shorter = store
            .add_detected(addr, Duration::from_secs(1800), "auth_failures", g, at(NOW))
            .expect("valid");
        assert_eq!(shorter, None);
        assert_eq!(
            store.get(addr).map(|b| b.source.clone()),
            Some(BanSource::Manual {
                by: "admin:alice".into()
            })
        );
        let longer = store
            .add_detected(
                addr,
                Duration::from_secs(86_400),
                "auth_failures",
                g,
                at(NOW),
            )
            .expect("valid")
            .expect("replaces the shorter ban");
        assert_eq!(longer.ban.expires, Some(at(NOW + 86_400)));
        assert_eq!(longer.ban.reason, "auth_failures");
        assert_eq!(
            longer.ban.source,
            BanSource::Detector("auth_failures".into())
        );
        assert!(longer.replaced.is_some());
        // An ended ban that was not swept yet does not count.
        let later = at(NOW + 100_000);
        let renewed = store
            .add_detected(addr, Duration::from_secs(60), "port_scan", g, later)
            .expect("valid");
        assert!(renewed.is_some());
    });
}

/// The refusal kinds are the `refusal` label of `crmguard_bans_refused_total`: short
/// snake_case names, never a network or a text from the ban.
#[test]
fn refusals_have_short_kind_names() {
    let refusals = [
        (
            BanError::Full {
                map: "cg_ban4",
                max: 1,
            },
            "full",
        ),
        (
            BanError::Trusted {
                net: net("198.18.7.9"),
                entry: net("198.18.7.0/24"),
            },
            "trusted",
        ),
        (
            BanError::Allowlisted {
                net: net("192.0.2.1"),
                entry: net("192.0.2.0/24"),
            },
            "allowlisted",
        ),
        (
            BanError::LinkLocal {
                net: net("fe80::1"),
            },
            "link_local",
        ),
        (BanError::ReasonTooLong, "reason"),
        (BanError::EmptyReason, "reason"),
    ];
    for (error, kind) in refusals {
        assert_eq!(error.kind(), kind, "{error}");
        assert!(kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
}

/// A ban brought forward keeps everything but its end; one that already ends sooner, or a
/// network without a ban, is left alone.
#[test]
fn a_ban_is_shortened_only_forward() {
    let mut store = BanStore::new();
    let addr = net("203.0.113.7");
    with_guard(|g| {
        store
            .add_detected(addr, Duration::from_secs(7200), "crowdsec", g, at(NOW))
            .expect("valid")
            .expect("added");
    });
    let before = store.get(addr).cloned().expect("banned");
    assert!(store.shorten(net("203.0.113.7/32"), at(NOW + 3600)));
    let after = store.get(addr).cloned().expect("still banned");
    assert_eq!(after.expires, Some(at(NOW + 3600)));
    assert_eq!(
        (after.source, after.reason, after.created),
        (before.source, before.reason, before.created)
    );
    assert!(!store.shorten(addr, at(NOW + 5000)), "never lengthened");
    assert_eq!(
        store.get(addr).and_then(|b| b.expires),
        Some(at(NOW + 3600))
    );
    assert!(!store.shorten(net("203.0.113.8"), at(NOW)));
    assert_eq!(store.len(), 1);
}

/// What automatic bans never cover: the trusted networks given (the admin networks, for a port
/// scan whose sources can be forged), link-local neighbours (the router's neighbour discovery)
/// and tunnel addresses, which the filter never sees.
#[test]
fn detectors_never_ban_admin_networks_neighbours_or_tunnel_addresses() {
    let mut store = BanStore::new();
    with_guard(|g| {
        let detected = |store: &mut BanStore, text: &str| {
            store.add_detected(net(text), Duration::from_secs(60), "port_scan", g, at(NOW))
        };
        for (text, entry) in [
            ("100.64.7.9", "100.64.7.0/24"),
            ("2001:db8:ad:5::1", "2001:db8:ad::/48"),
        ] {
            assert_eq!(
                detected(&mut store, text),
                Err(BanError::Trusted {
                    net: net(text),
                    entry: net(entry)
                }),
                "{text}"
            );
        }
        for text in ["fe80::1", "169.254.169.254"] {
            assert_eq!(
                detected(&mut store, text),
                Err(BanError::LinkLocal { net: net(text) }),
                "{text}"
            );
        }
        assert!(matches!(
            detected(&mut store, "10.77.0.5"),
            Err(BanError::TunnelNetwork { .. })
        ));
        // An administrator may still ban an admin network's address by hand.
        assert!(store
            .add_manual(manual("100.64.7.9", Some(60), false), g, at(NOW))
            .is_ok());
    });
}

/// A `from` list that admits the world spares no one: only networks as narrow as a ban may be
/// are trusted.
#[test]
fn trusted_networks_are_the_narrow_from_networks() {
    let config = crate::config::parse(
        "[[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\n\
         from = [\"192.0.2.0/24\", \"2001:db8:a::/48\"]\n\
         [[firewall.service]]\nname = \"web\"\nproto = \"tcp\"\nports = [443]\n\
         from = [\"0.0.0.0/0\", \"::/0\", \"192.0.2.0/24\"]\n",
        std::path::Path::new("t.toml"),
    )
    .expect("valid");
    assert_eq!(
        trusted_networks(&config),
        [net("192.0.2.0/24"), net("2001:db8:a::/48")]
    );
}

#[test]
fn detectors_never_ban_the_allowlist_and_administrators_are_warned() {
    let mut store = BanStore::new();
    with_guard(|g| {
        for (text, entry) in [
            ("198.51.100.5", "198.51.100.0/28"),
            ("198.51.100.0/24", "198.51.100.0/28"),
            ("2001:db8:aa:1::9", "2001:db8:aa::/48"),
        ] {
            let refused =
                store.add_detected(net(text), Duration::from_secs(60), "port_scan", g, at(NOW));
            assert_eq!(
                refused,
                Err(BanError::Allowlisted {
                    net: net(text).trunc(),
                    entry: net(entry)
                }),
                "{text}"
            );
            let added = store
                .add_manual(manual(text, Some(60), false), g, at(NOW))
                .expect("a manual ban of an allowlisted source is applied");
            assert_eq!(
                added.warnings,
                vec![Warning::Allowlisted {
                    net: net(text).trunc(),
                    entry: net(entry)
                }],
                "{text}"
            );
        }
        // Detectors also obey the breadth and host-address rules, with no way around them.
        assert!(matches!(
            store.add_detected(
                net("192.0.2.0/24"),
                Duration::from_secs(60),
                "port_scan",
                g,
                at(NOW)
            ),
            Err(BanError::HostAddress { .. })
        ));
        assert!(matches!(
            store.add_detected(
                net("11.0.0.0/7"),
                Duration::from_secs(60),
                "port_scan",
                g,
                at(NOW)
            ),
            Err(BanError::TooBroad { .. })
        ));
        assert_eq!(
            store.add_detected(
                net("203.0.113.9"),
                Duration::from_secs(60),
                "port scan",
                g,
                at(NOW)
            ),
            Err(BanError::Detector("port scan".into()))
        );
    });
}

#[test]
fn expire_returns_the_bans_that_ended() {
    let mut store = BanStore::new();
    with_guard(|g| {
        for (text, ttl) in [
            ("203.0.113.1", Some(10)),
            ("203.0.113.2", Some(20)),
            ("203.0.113.0/24", Some(10)),
            ("2001:db8:5::1", None),
        ] {
            store
                .add_manual(manual(text, ttl, false), g, at(NOW))
                .expect("ban");
        }
    });
    assert_eq!(store.expire(at(NOW + 9)), Vec::<Ban>::new());
    let ended: Vec<IpNet> = store
        .expire(at(NOW + 10))
        .into_iter()
        .map(|b| b.net)
        .collect();
    assert_eq!(ended, vec![net("203.0.113.0/24"), net("203.0.113.1/32")]);
    let left: Vec<IpNet> = store.iter().map(|b| b.net).collect();
    assert_eq!(left, vec![net("203.0.113.2/32"), net("2001:db8:5::1/128")]);
    let ended: Vec<IpNet> = store
        .expire(at(NOW + 1_000_000))
        .into_iter()
        .map(|b| b.net)
        .collect();
    assert_eq!(ended, vec![net("203.0.113.2/32")]);
    assert_eq!(store.len(), 1);
}

#[test]
fn remove_takes_the_normalised_network() {
    let mut store = BanStore::new();
    with_guard(|g| {
        store
            .add_manual(manual("203.0.113.0/24", None, false), g, at(NOW))
            .expect("ban");
    });
    assert_eq!(
        store.remove(net("203.0.113.1")),
        Err(BanError::NotBanned {
            net: net("203.0.113.1/32")
        })
    );
    let removed = store.remove(net("203.0.113.77/24")).expect("removed");
    assert_eq!(removed.net, net("203.0.113.0/24"));
    assert!(store.is_empty());
}

#[test]
fn each_kernel_map_has_a_capacity() {
    let mut store = BanStore {
        host_max: 2,
        prefix_max: 1,
        ..BanStore::new()
    };
    with_guard(|g| {
        let mut add = |text: &str| {
            store
                .add_manual(manual(text, Some(60), false), g, at(NOW))
                .map(|_| ())
        };
        add("203.0.113.1").expect("first host");
        add("203.0.113.2").expect("second host");
        assert_eq!(
            add("203.0.113.3"),
            Err(BanError::Full {
                map: "cg_ban4",
                max: 2
            })
        );
        // Replacing does not take a new entry; the other family has its own map.
        add("203.0.113.2").expect("replacing");
        add("2001:db8:5::1").expect("IPv6 host");
        add("203.0.113.0/24").expect("first prefix");
        assert_eq!(
            add("198.18.0.0/15"),
            Err(BanError::Full {
                map: "cg_ban4_lpm",
                max: 1
            })
        );
    });
    store.remove(net("203.0.113.1")).expect("removed");
    store.expire(at(NOW + 60));
    with_guard(|g| {
        store
            .add_manual(manual("198.18.0.0/15", None, false), g, at(NOW + 60))
            .expect("room again");
    });
}

#[test]
fn wall_clock_expiry_becomes_kernel_clock_nanoseconds() {
    let kernel = Duration::from_secs(500);
    let check = |expires: u64, expected: Option<u64>| {
        assert_eq!(
            kernel_expiry(at(expires), at(NOW), kernel),
            expected,
            "{expires}"
        );
    };
    check(NOW + 30, Some(530_000_000_000));
    check(NOW + 1, Some(501_000_000_000));
    check(NOW, None);
    check(NOW - 5, None);
    // Sub-second remainders are kept.
    assert_eq!(
        kernel_expiry(at(NOW) + Duration::from_millis(1500), at(NOW), kernel),
        Some(501_500_000_000)
    );
    // Never 0, which the kernel reads as "never ends".
    assert_eq!(
        kernel_expiry(at(NOW) + Duration::from_nanos(1), at(NOW), Duration::ZERO),
        Some(1)
    );
}

#[test]
fn bans_become_kernel_entries() {
    let mut store = BanStore::new();
    with_guard(|g| {
        store
            .add_manual(manual("203.0.113.7", Some(30), false), g, at(NOW))
            .expect("ban");
        store
            .add_manual(manual("203.0.113.0/24", None, false), g, at(NOW))
            .expect("ban");
        store
            .add_manual(manual("2001:db8:5::1", Some(5), false), g, at(NOW))
            .expect("ban");
        store
            .add_detected(
                net("2001:db8:6::/48"),
                Duration::from_secs(60),
                "port_scan",
                g,
                at(NOW),
            )
            .expect("ban");
    });
    let kernel = Duration::from_secs(100);
    let entries = store.kernel_entries(at(NOW + 10), kernel);
    let manual = |expires_ns| KernelValue {
        expires_ns,
        reason: KERNEL_REASON_MANUAL,
    };
    let mut v6 = [0u8; 16];
    v6[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 6]);
    let expected: BTreeMap<KernelKey, KernelValue> = [
        (KernelKey::Host4([203, 0, 113, 7]), manual(120_000_000_000)),
        (
            KernelKey::Prefix4 {
                len: 24,
                addr: [203, 0, 113, 0],
            },
            manual(0),
        ),
        (
            KernelKey::Prefix6 { len: 48, addr: v6 },
            KernelValue {
                expires_ns: 150_000_000_000,
                reason: KERNEL_REASON_DETECTOR,
            },
        ),
    ]
    .into_iter()
    .collect();
    // The IPv6 host ban ended at NOW + 5 and has no entry.
    assert_eq!(entries, expected);
    for key in entries.keys() {
        let back = key.net().map(|n| KernelKey::of(&n));
        assert_eq!(back, Some(*key));
    }
    assert_eq!(
        KernelKey::Prefix4 {
            len: 33,
            addr: [0; 4]
        }
        .net(),
        None
    );
}

#[test]
fn prefix_entries_last_as_long_as_the_prefixes_around_them() {
    let mut store = BanStore::new();
    with_guard(|g| {
        for (text, ttl) in [
            ("10.20.0.0/16", Some(100)),
            ("10.20.30.0/24", Some(10)),
            ("10.20.30.128/25", Some(500)),
            ("10.20.30.7", Some(5)),
            ("10.21.0.0/24", Some(10)),
            ("2001:db8:5::/48", None),
            ("2001:db8:5:1::/64", Some(10)),
        ] {
            store
                .add_manual(manual(text, ttl, false), g, at(NOW))
                .expect("ban");
        }
    });
    let kernel = Duration::from_secs(1000);
    let secs = |s: u64| (1000 + s) * 1_000_000_000;
    let value = |expires_ns| KernelValue {
        expires_ns,
        reason: KERNEL_REASON_MANUAL,
    };
    let key = |text: &str| KernelKey::of(&net(text));
    let entries = store.kernel_entries(at(NOW), kernel);
    let check = |text: &str, expected: Option<KernelValue>| {
        assert_eq!(entries.get(&key(text)).copied(), expected, "{text}");
    };
    // The /24 inherits the /16's later expiry; the /25 keeps its own, later one.
    check("10.20.0.0/16", Some(value(secs(100))));
    check("10.20.30.0/24", Some(value(secs(100))));
    check("10.20.30.128/25", Some(value(secs(500))));
    // Host entries are not hidden by prefixes and keep their own expiry.
    check("10.20.30.7", Some(value(secs(5))));
    check("10.21.0.0/24", Some(value(secs(10))));
    // A permanent prefix makes the prefixes inside it permanent in the kernel.
    check("2001:db8:5::/48", Some(value(0)));
    check("2001:db8:5:1::/64", Some(value(0)));

    // Changing the /16 touches the prefixes inside it, not the host or other networks.
    let changed: Vec<KernelKey> = store
        .kernel_changes(net("10.20.0.0/16"), at(NOW), kernel)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        changed,
        vec![
            key("10.20.0.0/16"),
            key("10.20.30.0/24"),
            key("10.20.30.128/25")
        ]
    );
    // Once the /16 is removed, the /24 falls back to its own expiry and the /16 entry goes.
    store.remove(net("10.20.0.0/16")).expect("removed");
    assert_eq!(
        store.kernel_changes(net("10.20.0.0/16"), at(NOW), kernel),
        vec![
            (key("10.20.0.0/16"), None),
            (key("10.20.30.0/24"), Some(value(secs(10)))),
            (key("10.20.30.128/25"), Some(value(secs(500)))),
        ]
    );
    assert_eq!(
        store.kernel_changes(net("10.20.30.7"), at(NOW), kernel),
        vec![(key("10.20.30.7"), Some(value(secs(5))))]
    );
    // An ended ban has no entry, and lends its expiry to nothing.
    let later = store.kernel_entries(at(NOW + 20), kernel);
    assert_eq!(later.get(&key("10.20.30.0/24")), None);
    assert_eq!(later.get(&key("10.20.30.7")), None);
}

fn sample_store() -> BanStore {
    let mut store = BanStore::new();
    with_guard(|g| {
        let mut first = manual("203.0.113.7", Some(3600), false);
        first.reason = Some("credential stuffing \"quoted\" — ü".into());
        store
            .add_manual(first, g, at(NOW) + Duration::from_nanos(123_456_789))
            .expect("ban");
        store
            .add_manual(manual("2001:db8:5::/64", None, false), g, at(NOW))
            .expect("ban");
        store
            .add_detected(
                net("198.18.0.1"),
                Duration::from_secs(600),
                "auth_failures",
                g,
                at(NOW),
            )
            .expect("ban");
        store
            .add_manual(manual("10.0.0.0/7", Some(10), true), g, at(NOW))
            .expect("forced ban");
    });
    store
}

#[test]
fn the_ban_list_round_trips_through_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state").join(persist::FILE_NAME);
    let store = sample_store();
    persist::save(&path, &store).expect("saved");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (loaded, ended) = persist::load(&path, at(NOW + 1)).expect("loaded");
    assert_eq!(loaded, store);
    assert_eq!(ended, Vec::<Ban>::new());
    // Saving again over an existing file, then loading later: ended bans are dropped.
    persist::save(&path, &loaded).expect("saved again");
    let (later, ended) = persist::load(&path, at(NOW + 700)).expect("loaded");
    let ended: Vec<IpNet> = ended.into_iter().map(|b| b.net).collect();
    assert_eq!(ended, vec![net("10.0.0.0/7"), net("198.18.0.1/32")]);
    let left: Vec<IpNet> = later.iter().map(|b| b.net).collect();
    assert_eq!(left, vec![net("203.0.113.7/32"), net("2001:db8:5::/64")]);
    // Only the list itself is in the directory: no temporary file is left.
    let names: Vec<String> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![persist::FILE_NAME.to_owned()]);
}

#[test]
fn a_missing_file_is_an_empty_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, ended) = persist::load(&dir.path().join("bans.json"), at(NOW)).expect("loaded");
    assert!(store.is_empty());
    assert!(ended.is_empty());
}

#[test]
fn a_failed_write_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be: the rename fails after the temporary file was
    // written.
    let path = dir.path().join(persist::FILE_NAME);
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::write(path.join("keep"), "x").expect("write");
    let err = persist::save(&path, &sample_store()).expect_err("cannot replace a directory");
    assert!(matches!(err, PersistError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![persist::FILE_NAME.to_owned()]);
}

/// The full message of a load error, `a: b: c`.
fn load_error(text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(persist::FILE_NAME);
    std::fs::write(&path, text).expect("write");
    let err = persist::load(&path, at(NOW)).expect_err("invalid");
    assert!(err.is_invalid(), "{err:?}");
    let message = crate::error_chain(&err);
    let prefix = format!(
        "the ban list {} is not valid; fix or remove it (its bans are not in force until then): ",
        path.display()
    );
    message
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{message}"))
        .to_owned()
}

#[test]
fn a_corrupt_file_is_reported_with_what_is_wrong() {
    let entry = |net: &str, expires: &str, source: &str| {
        format!(
            r#"{{"version":1,"bans":[{{"net":"{net}","expires":{expires},"reason":"r","source":{source},"created":"2023-11-14T22:13:20Z"}}]}}"#
        )
    };
    let admin = r#"{"manual":{"by":"admin:alice"}}"#;
    let check = |text: &str, expected: &str| assert_eq!(load_error(text), expected, "{text}");

    check(
        "",
        "not a ban list: EOF while parsing a value at line 1 column 0",
    );
    check(
        "{\"version\":1,\n\"bans\":[\n{\"net\":\"203.0.113.7/32\",",
        "not a ban list: EOF while parsing a value at line 3 column 24",
    );
    check(
        r#"{"version":2,"bans":[]}"#,
        "version 2 is not supported (this crmguard reads version 1)",
    );
    assert!(load_error(r#"{"version":1,"bans":[],"extra":1}"#)
        .starts_with("not a ban list: unknown field `extra`"));
    check(
        &entry("203.0.113.7/24", "null", admin),
        "bans[0] (203.0.113.7/24): 203.0.113.7/24 has host bits set; write 203.0.113.0/24",
    );
    check(
        &entry("0.0.0.0/0", "null", admin),
        "bans[0] (0.0.0.0/0): 0.0.0.0/0 is every address; to drop all traffic set [firewall] default = \"drop\" instead",
    );
    check(
        &entry("203.0.113.7/32", "\"tomorrow\"", admin),
        "bans[0]: `expires` is not an RFC 3339 UTC time: \"tomorrow\"",
    );
    check(
        &entry("203.0.113.7/32", "null", r#"{"manual":{"by":"root"}}"#),
        "bans[0] (203.0.113.7/32): `root` is not an author of the form admin:<unix user> [(login <unix user>)]",
    );
    check(
        &entry("203.0.113.7/32", "null", r#"{"detector":{"name":"a b"}}"#),
        "bans[0] (203.0.113.7/32): `a b` is not a detector name (1 to 64 of A-Z a-z 0-9 . _ -)",
    );
    let twice = r#"{"version":1,"bans":[
        {"net":"203.0.113.7/32","expires":null,"reason":"r","source":{"manual":{"by":"admin:a"}},"created":"2023-11-14T22:13:20Z"},
        {"net":"203.0.113.7/32","expires":null,"reason":"r","source":{"manual":{"by":"admin:a"}},"created":"2023-11-14T22:13:20Z"}]}"#;
    check(twice, "bans[1] (203.0.113.7/32) appears twice");
}

#[test]
fn an_unreadable_file_is_not_called_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory cannot be read as a file.
    let err = persist::load(dir.path(), at(NOW)).expect_err("a directory");
    assert!(matches!(err, PersistError::Read { .. }), "{err:?}");
    assert!(!err.is_invalid());
}

#[test]
fn the_file_format_is_stable() {
    let mut store = BanStore::new();
    with_guard(|g| {
        store
            .add_manual(manual("203.0.113.7", Some(60), false), g, at(NOW))
            .expect("ban");
        store
            .add_detected(
                net("2001:db8:5::/64"),
                Duration::from_secs(60),
                "port_scan",
                g,
                at(NOW),
            )
            .expect("ban");
    });
    let expected = r#"{
  "version": 1,
  "bans": [
    {
      "net": "203.0.113.7/32",
      "expires": "2023-11-14T22:14:20.000000Z",
      "reason": "manual",
      "source": {
        "manual": {
          "by": "admin:alice"
        }
      },
      "created": "2023-11-14T22:13:20.000000Z"
    },
    {
      "net": "2001:db8:5::/64",
      "expires": "2023-11-14T22:14:20.000000Z",
      "reason": "port_scan",
      "source": {
        "detector": {
          "name": "port_scan"
        }
      },
      "created": "2023-11-14T22:13:20.000000Z"
    }
  ]
}
"#;
    assert_eq!(persist::encode(&store).expect("encodes"), expected);
    assert!(matches!(
        persist::decode(expected, at(NOW)),
        Ok((ref s, _)) if *s == store
    ));
}

/// The capacities are those of the kernel maps.
#[test]
fn capacities_match_the_abi() {
    assert_eq!(Ok(HOST_MAX), usize::try_from(crate::abi::BAN_HOST_MAX));
    assert_eq!(Ok(PREFIX_MAX), usize::try_from(crate::abi::BAN_PREFIX_MAX));
}

#[test]
fn tunnel_addresses_are_refused_even_with_force() {
    for force in [false, true] {
        for (text, tunnel) in [
            ("10.77.0.5/32", "10.77.0.0/24"),
            ("10.77.0.128/25", "10.77.0.0/24"),
            ("fd77::5/128", "fd77::/64"),
        ] {
            check_manual(
                text,
                force,
                Err(BanError::TunnelNetwork {
                    net: net(text),
                    tunnel: net(tunnel),
                }),
            );
        }
    }
    check_manual("10.78.0.5/32", false, Ok("10.78.0.5/32"));
    // A broader ban also covers outer addresses, which XDP does see.
    check_manual("10.77.0.0/16", false, Ok("10.77.0.0/16"));
}
