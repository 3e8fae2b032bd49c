//! Tests of the identity ACL at its boundary: a configuration, a peer name and packet bytes in,
//! a verdict out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use base64::Engine as _;
use etherparse::PacketBuilder;

use super::*;
use crate::acl::reject;
use crate::config::{self, Proto, ServiceSpec};

const GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const ALICE4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const ALICE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10);
const BOB4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const CAROL4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
const PORTAL: u16 = 8443;

/// Monday 10:00, inside the sales hours.
const MONDAY: LocalTime = LocalTime {
    weekday: 0,
    minute_of_day: 600,
};
/// Saturday 10:00, outside the sales hours.
const SATURDAY: LocalTime = LocalTime {
    weekday: 5,
    minute_of_day: 600,
};

fn key(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// Sales reach HTTPS on weekdays with MFA; DBAs reach HTTPS, PostgreSQL and syslog at any time
/// without MFA. Alice is in sales (with an IPv6 address), Bob and Carol (disabled) are DBAs.
fn config() -> config::Config {
    let text = format!(
        "[vpn]\naddress = \"10.77.0.1/24\"\naddress6 = \"fd77::1/64\"\n\
         [mfa]\nportal_port = {PORTAL}\n\
         [[role]]\nname = \"sales\"\nallow = [\"tcp/443\"]\nhours = \"Mon-Fri 07:00-21:00\"\n\
         mfa = true\n\
         [[role]]\nname = \"dba\"\nallow = [\"udp/514\", \"tcp/5432\", \"tcp/443\"]\n\
         [[peer]]\nname = \"alice\"\npublic_key = \"{}\"\naddress = \"10.77.0.10\"\n\
         address6 = \"fd77::10\"\nrole = \"sales\"\n\
         [[peer]]\nname = \"bob\"\npublic_key = \"{}\"\naddress = \"10.77.0.11\"\nrole = \"dba\"\n\
         [[peer]]\nname = \"carol\"\npublic_key = \"{}\"\naddress = \"10.77.0.12\"\n\
         role = \"dba\"\nenabled = false\n",
        key(1),
        key(2),
        key(3)
    );
    match config::parse(&text, Path::new("/etc/crmguard/crmguard.toml")) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    }
}

fn acl() -> Acl {
    Acl::new(&config(), GATEWAY4, Some(GATEWAY6), PORTAL, listening(true))
}

fn listening(listening: bool) -> std::sync::Arc<PortalListening> {
    let portal = PortalListening::default();
    portal.set(listening);
    std::sync::Arc::new(portal)
}

fn builder(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => PacketBuilder::ipv4(src.octets(), dst.octets(), 64),
        (IpAddr::V6(src), IpAddr::V6(dst)) => PacketBuilder::ipv6(src.octets(), dst.octets(), 64),
        _ => panic!("mixed address families"),
    }
}

/// Writes a built packet, panicking on a builder error (which would be a test defect).
macro_rules! written {
    ($step:expr, $payload:expr) => {{
        let mut out = Vec::new();
        $step
            .write(&mut out, $payload)
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }};
}

fn syn(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16) -> Vec<u8> {
    written!(
        builder(src.into(), dst.into())
            .tcp(40000, port, 1, 64240)
            .syn(),
        b""
    )
}

fn ack(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16) -> Vec<u8> {
    written!(
        builder(src.into(), dst.into())
            .tcp(40000, port, 1, 64240)
            .ack(9),
        b"data"
    )
}

fn rst(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16) -> Vec<u8> {
    written!(
        builder(src.into(), dst.into()).tcp(40000, port, 1, 0).rst(),
        b""
    )
}

fn udp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16) -> Vec<u8> {
    written!(builder(src.into(), dst.into()).udp(40000, port), b"log")
}

/// An echo request, or with `code` other than 0 a malformed one.
fn ping(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, code: u8) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let step = builder(src, dst);
    if src.is_ipv4() {
        written!(step.icmpv4_raw(8, code, [0, 1, 0, 1]), b"ping")
    } else {
        written!(step.icmpv6_raw(128, code, [0, 1, 0, 1]), b"ping")
    }
}

/// An ICMP message that is not an echo request: a timestamp request or an ICMPv6 echo reply.
fn icmp_other(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let step = builder(src, dst);
    if src.is_ipv4() {
        written!(step.icmpv4_raw(13, 0, [0; 4]), &[0; 12])
    } else {
        written!(step.icmpv6_echo_reply(1, 1), b"")
    }
}

fn allow(service: Service) -> Verdict<'static> {
    Verdict::Allow { service }
}

fn role(proto: Proto, port: u16) -> Service {
    Service::Role(ServiceSpec { proto, port })
}

fn deny(
    reason: DenyReason,
    role: &'static str,
    service_label: &'static str,
    reject: Option<Reject>,
) -> Verdict<'static> {
    Verdict::Deny {
        reason,
        role,
        service_label,
        reject,
    }
}

const ICMP4: Option<Reject> = Some(Reject::IcmpAdminProhibited {
    source: IpAddr::V4(GATEWAY4),
});
const ICMP6: Option<Reject> = Some(Reject::IcmpAdminProhibited {
    source: IpAddr::V6(GATEWAY6),
});
const RESET: Option<Reject> = Some(Reject::TcpReset);

/// Checks the verdict on one packet, and that its reject, if any, can be built.
fn check(
    acl: &Acl,
    peer: &str,
    packet: &[u8],
    now: LocalTime,
    session: bool,
    expected: Verdict<'_>,
) {
    let actual = acl.decide(peer, packet, now, session);
    assert_eq!(actual, expected, "{peer} {now:?} session={session}");
    if let Verdict::Deny {
        reject: Some(answer),
        ..
    } = actual
    {
        let built = match answer {
            Reject::TcpReset => reject::tcp_reset(packet),
            Reject::IcmpAdminProhibited { source } => reject::icmp_admin_prohibited(packet, source),
        };
        assert!(built.is_some(), "{answer:?} cannot be built for {packet:?}");
    }
}

#[test]
fn role_services_are_allowed_and_others_answered() {
    let acl = acl();
    let cases = [
        (syn(BOB4, GATEWAY4, 5432), allow(role(Proto::Tcp, 5432))),
        (ack(BOB4, GATEWAY4, 5432), allow(role(Proto::Tcp, 5432))),
        (udp(BOB4, GATEWAY4, 514), allow(role(Proto::Udp, 514))),
        (
            syn(BOB4, GATEWAY4, 22),
            deny(DenyReason::NotInRole, "dba", "other", RESET),
        ),
        (
            ack(BOB4, GATEWAY4, 22),
            deny(DenyReason::NotInRole, "dba", "other", ICMP4),
        ),
        (
            udp(BOB4, GATEWAY4, 5432),
            deny(DenyReason::NotInRole, "dba", "other", ICMP4),
        ),
        (
            udp(BOB4, GATEWAY4, 53),
            deny(DenyReason::NotInRole, "dba", "other", ICMP4),
        ),
        (
            rst(BOB4, GATEWAY4, 22),
            deny(DenyReason::NotInRole, "dba", "other", None),
        ),
    ];
    for (packet, expected) in cases {
        check(&acl, "bob", &packet, SATURDAY, false, expected);
    }
}

#[test]
fn hours_and_mfa_apply_to_the_role_services() {
    let acl = acl();
    let https = syn(ALICE4, GATEWAY4, 443);
    let https6 = syn(ALICE6, GATEWAY6, 443);
    let cases = [
        (&https, MONDAY, true, allow(role(Proto::Tcp, 443))),
        (&https6, MONDAY, true, allow(role(Proto::Tcp, 443))),
        (
            &https,
            MONDAY,
            false,
            deny(DenyReason::MfaRequired, "sales", "tcp/443", RESET),
        ),
        (
            &https,
            SATURDAY,
            true,
            deny(DenyReason::OutsideHours, "sales", "tcp/443", RESET),
        ),
        // Outside hours an MFA session would not help, so that is the reason given.
        (
            &https,
            SATURDAY,
            false,
            deny(DenyReason::OutsideHours, "sales", "tcp/443", RESET),
        ),
    ];
    for (packet, now, session, expected) in cases {
        check(&acl, "alice", packet, now, session, expected);
    }
    // A service another role lists keeps its own label.
    check(
        &acl,
        "alice",
        &syn(ALICE4, GATEWAY4, 5432),
        MONDAY,
        true,
        deny(DenyReason::NotInRole, "sales", "tcp/5432", RESET),
    );
    check(
        &acl,
        "alice",
        &ack(ALICE6, GATEWAY6, 443),
        MONDAY,
        false,
        deny(DenyReason::MfaRequired, "sales", "tcp/443", ICMP6),
    );
}

#[test]
fn hours_boundaries() {
    let acl = acl();
    let https = syn(ALICE4, GATEWAY4, 443);
    let at = |weekday, minute_of_day| LocalTime {
        weekday,
        minute_of_day,
    };
    let outside = deny(DenyReason::OutsideHours, "sales", "tcp/443", RESET);
    let inside = allow(role(Proto::Tcp, 443));
    for (now, expected) in [
        (at(0, 419), outside),
        (at(0, 420), inside),
        (at(4, 1259), inside),
        (at(4, 1260), outside),
        (at(6, 600), outside),
        (at(7, 600), outside),
        (LocalTime::UNKNOWN, outside),
    ] {
        check(&acl, "alice", &https, now, true, expected);
    }
}

#[test]
fn unknown_time_is_outside_even_a_window_of_the_whole_week() {
    let always = Hours::parse("Mon-Sun 00:00-24:00").unwrap_or_else(|e| panic!("{e}"));
    assert!(!always.contains(LocalTime::UNKNOWN.weekday, LocalTime::UNKNOWN.minute_of_day));
    // Roles without hours do not look at the time.
    check(
        &acl(),
        "bob",
        &syn(BOB4, GATEWAY4, 5432),
        LocalTime::UNKNOWN,
        false,
        allow(role(Proto::Tcp, 5432)),
    );
}

#[test]
fn the_portal_port_is_exempt_only_while_the_portal_listens() {
    let portal = listening(false);
    let acl = Acl::new(
        &config(),
        GATEWAY4,
        Some(GATEWAY6),
        PORTAL,
        std::sync::Arc::clone(&portal),
    );
    for (peer, src4) in [("alice", ALICE4), ("bob", BOB4)] {
        for session in [false, true] {
            let verdict = acl.decide(peer, &syn(src4, GATEWAY4, PORTAL), MONDAY, session);
            assert!(
                matches!(verdict, Verdict::Deny { .. }),
                "{peer} session={session}: {verdict:?} while another program may own the port"
            );
        }
    }
    // The same ACL follows the daemon's flag without being rebuilt.
    portal.set(true);
    check(
        &acl,
        "alice",
        &syn(ALICE4, GATEWAY4, PORTAL),
        MONDAY,
        false,
        allow(Service::MfaPortal),
    );
}

#[test]
fn portal_and_echo_are_reachable_without_session_at_any_hour() {
    let acl = acl();
    for (peer, src4) in [("alice", ALICE4), ("bob", BOB4)] {
        check(
            &acl,
            peer,
            &syn(src4, GATEWAY4, PORTAL),
            SATURDAY,
            false,
            allow(Service::MfaPortal),
        );
        check(
            &acl,
            peer,
            &ping(src4, GATEWAY4, 0),
            SATURDAY,
            false,
            allow(Service::Echo),
        );
    }
    check(
        &acl,
        "alice",
        &syn(ALICE6, GATEWAY6, PORTAL),
        SATURDAY,
        false,
        allow(Service::MfaPortal),
    );
    check(
        &acl,
        "alice",
        &ping(ALICE6, GATEWAY6, 0),
        SATURDAY,
        false,
        allow(Service::Echo),
    );
    // The portal is TCP only; other ICMP is not a service.
    let other = deny(DenyReason::NotInRole, "sales", "other", None);
    let cases = [
        (
            udp(ALICE4, GATEWAY4, PORTAL),
            deny(DenyReason::NotInRole, "sales", "other", ICMP4),
        ),
        (ping(ALICE4, GATEWAY4, 1), other),
        (ping(ALICE6, GATEWAY6, 1), other),
        (icmp_other(ALICE4, GATEWAY4), other),
        (icmp_other(ALICE6, GATEWAY6), other),
    ];
    for (packet, expected) in cases {
        check(&acl, "alice", &packet, MONDAY, true, expected);
    }
}

#[test]
fn the_gateway_is_not_a_router() {
    let acl = acl();
    let lan = Ipv4Addr::new(192, 168, 1, 5);
    let not_to_gateway = |reject| deny(DenyReason::NotToGateway, "sales", "tcp/443", reject);
    let cases = [
        (syn(ALICE4, lan, 443), not_to_gateway(RESET)),
        (ack(ALICE4, lan, 443), not_to_gateway(ICMP4)),
        (syn(ALICE4, BOB4, 443), not_to_gateway(RESET)),
        (
            syn(ALICE6, Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 443),
            not_to_gateway(RESET),
        ),
        (
            udp(ALICE4, lan, 53),
            deny(DenyReason::NotToGateway, "sales", "other", ICMP4),
        ),
        (
            ping(ALICE4, lan, 0),
            deny(DenyReason::NotToGateway, "sales", "other", None),
        ),
        // Broadcast and multicast are never answered.
        (
            udp(ALICE4, Ipv4Addr::new(10, 77, 0, 255), 137),
            deny(DenyReason::NotToGateway, "sales", "other", None),
        ),
        (
            udp(ALICE4, Ipv4Addr::BROADCAST, 67),
            deny(DenyReason::NotToGateway, "sales", "other", None),
        ),
        (
            udp(ALICE4, Ipv4Addr::new(224, 0, 0, 251), 5353),
            deny(DenyReason::NotToGateway, "sales", "other", None),
        ),
        (
            udp(ALICE6, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb), 5353),
            deny(DenyReason::NotToGateway, "sales", "other", None),
        ),
    ];
    for (packet, expected) in cases {
        check(&acl, "alice", &packet, MONDAY, true, expected);
    }
}

#[test]
fn unknown_disabled_and_spoofing_peers() {
    let acl = acl();
    check(
        &acl,
        "mallory",
        &syn(ALICE4, GATEWAY4, 443),
        MONDAY,
        true,
        deny(DenyReason::NoRole, NO_ROLE, "tcp/443", None),
    );
    check(
        &acl,
        "carol",
        &syn(CAROL4, GATEWAY4, 5432),
        MONDAY,
        true,
        deny(DenyReason::PeerDisabled, "dba", "tcp/5432", RESET),
    );
    check(
        &acl,
        "carol",
        &ping(CAROL4, GATEWAY4, 0),
        MONDAY,
        true,
        deny(DenyReason::PeerDisabled, "dba", "other", None),
    );
    let spoofed = deny(DenyReason::SourceMismatch, "sales", "tcp/443", None);
    check(
        &acl,
        "alice",
        &syn(BOB4, GATEWAY4, 443),
        MONDAY,
        true,
        spoofed,
    );
    // Bob has no IPv6 address, so none of his IPv6 packets is his.
    check(
        &acl,
        "bob",
        &syn(ALICE6, GATEWAY6, 443),
        MONDAY,
        true,
        deny(DenyReason::SourceMismatch, "dba", "tcp/443", None),
    );
}

#[test]
fn malformed_packets_and_fragments_are_never_answered() {
    let acl = acl();
    let good = syn(ALICE4, GATEWAY4, 443);
    let malformed = deny(DenyReason::Malformed, "sales", "other", None);
    for packet in [&[][..], &good[..30], &[0x45; 20][..], &[0x60; 8][..]] {
        check(&acl, "alice", packet, MONDAY, true, malformed);
    }
    check(
        &acl,
        "mallory",
        &good[..10],
        MONDAY,
        true,
        deny(DenyReason::Malformed, NO_ROLE, "other", None),
    );
    let mut fragment = good.clone();
    fragment[6] = 0x20;
    check(
        &acl,
        "alice",
        &fragment,
        MONDAY,
        true,
        deny(DenyReason::Fragment, "sales", "other", None),
    );
    // WireGuard's padding after the stated length changes nothing.
    let mut padded = good;
    padded.extend_from_slice(&[0; 12]);
    check(
        &acl,
        "alice",
        &padded,
        MONDAY,
        true,
        allow(role(Proto::Tcp, 443)),
    );
    // Another protocol to the gateway (GRE) is denied without an answer.
    let mut gre = udp(ALICE4, GATEWAY4, 443);
    gre[9] = 47;
    check(
        &acl,
        "alice",
        &gre,
        MONDAY,
        true,
        deny(DenyReason::NotInRole, "sales", "other", None),
    );
}

#[test]
fn without_an_ipv6_gateway_ipv6_is_not_to_the_gateway() {
    let acl = Acl::new(&config(), GATEWAY4, None, PORTAL, listening(true));
    check(
        &acl,
        "alice",
        &udp(ALICE6, GATEWAY6, 443),
        MONDAY,
        true,
        deny(DenyReason::NotToGateway, "sales", "other", None),
    );
    check(
        &acl,
        "alice",
        &syn(ALICE6, GATEWAY6, 443),
        MONDAY,
        true,
        deny(DenyReason::NotToGateway, "sales", "tcp/443", RESET),
    );
    check(
        &acl,
        "alice",
        &syn(ALICE4, GATEWAY4, 443),
        MONDAY,
        true,
        allow(role(Proto::Tcp, 443)),
    );
}

#[test]
fn labels_are_bounded_by_the_configuration() {
    let acl = acl();
    assert_eq!(acl.role_labels().collect::<Vec<_>>(), ["sales", "dba"]);
    assert_eq!(
        acl.service_labels().collect::<Vec<_>>(),
        ["tcp/443", "tcp/5432", "udp/514", "other"]
    );
    assert_eq!(acl.role_of("alice"), Some("sales"));
    assert_eq!(acl.role_of("carol"), Some("dba"));
    assert_eq!(acl.role_of("mallory"), None);
    // Every port of every protocol yields one of those labels.
    let labels: Vec<&str> = acl.service_labels().collect();
    for port in [1, 22, 443, 514, 5432, 8443, 65535] {
        for packet in [syn(BOB4, GATEWAY4, port), udp(BOB4, GATEWAY4, port)] {
            if let Verdict::Deny { service_label, .. } = acl.decide("bob", &packet, MONDAY, false) {
                assert!(labels.contains(&service_label), "{service_label}");
            }
        }
    }
}

#[test]
fn reasons_have_stable_names() {
    let names: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "malformed",
            "no_role",
            "source_mismatch",
            "fragment",
            "peer_disabled",
            "not_to_gateway",
            "not_in_role",
            "outside_hours",
            "mfa_required"
        ]
    );
    assert_eq!(DenyReason::MfaRequired.to_string(), "mfa_required");
}

#[test]
fn denials_are_counted_by_role_and_service() {
    let acl = acl();
    let registry = prometheus::Registry::new();
    let metrics = AclMetrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));
    metrics.prepare(&acl);
    for packet in [syn(BOB4, GATEWAY4, 22), udp(BOB4, GATEWAY4, 53)] {
        metrics.count(
            "bob",
            BOB4.into(),
            &acl.decide("bob", &packet, MONDAY, false),
        );
    }
    let allowed = acl.decide("bob", &syn(BOB4, GATEWAY4, 5432), MONDAY, false);
    metrics.count("bob", BOB4.into(), &allowed);
    let unknown = acl.decide("mallory", &syn(BOB4, GATEWAY4, 443), MONDAY, false);
    metrics.count("mallory", BOB4.into(), &unknown);
    let families = registry.gather();
    let [by_reason, family] = &families[..] else {
        panic!("{families:?}");
    };
    assert_eq!(family.name(), "crmguard_acl_denied_total");
    assert_eq!(by_reason.name(), "crmguard_acl_denied_by_reason_total");
    // Every reason has its series from the start; bob's two packets were not in his role and
    // mallory is no configured peer.
    let reasons: Vec<(String, u64)> = by_reason
        .get_metric()
        .iter()
        .map(|metric| {
            let reason = metric
                .get_label()
                .iter()
                .map(|pair| pair.value().to_owned())
                .collect::<String>();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = metric.get_counter().get_value() as u64;
            (reason, value)
        })
        .filter(|(_, value)| *value > 0)
        .collect();
    assert_eq!(
        reasons,
        vec![("no_role".to_owned(), 1), ("not_in_role".to_owned(), 2)]
    );
    assert_eq!(by_reason.get_metric().len(), DenyReason::ALL.len());
    let mut series: Vec<(String, String, u64)> = family
        .get_metric()
        .iter()
        .map(|metric| {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|pair| pair.name() == name)
                    .map(|pair| pair.value().to_owned())
                    .unwrap_or_default()
            };
            // Counts in tests are small whole numbers, exact in an f64.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = metric.get_counter().get_value() as u64;
            (label("role"), label("service"), value)
        })
        .collect();
    series.sort();
    let expected: Vec<(String, String, u64)> = [
        ("(none)", "tcp/443", 1),
        ("dba", "other", 2),
        ("dba", "tcp/443", 0),
        ("dba", "tcp/5432", 0),
        ("dba", "udp/514", 0),
        ("sales", "other", 0),
        ("sales", "tcp/443", 0),
        ("sales", "tcp/5432", 0),
        ("sales", "udp/514", 0),
    ]
    .iter()
    .map(|(role, service, value)| ((*role).to_owned(), (*service).to_owned(), *value))
    .collect();
    assert_eq!(series, expected);

    // The same denials, folded for the audit log: one record per peer and service.
    let records = metrics.take_denials(std::time::SystemTime::now(), true);
    let summary: Vec<(String, String, u64)> = records
        .iter()
        .map(|event| {
            let detail = |key: &str| event.detail.get(key).cloned().unwrap_or_default();
            (
                event.actor.clone(),
                detail("service").as_str().unwrap_or_default().to_owned(),
                detail("count").as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("bob".to_owned(), "other (not_in_role)".to_owned(), 2),
            ("mallory".to_owned(), "tcp/443 (no_role)".to_owned(), 1),
        ]
    );
    assert!(metrics
        .take_denials(std::time::SystemTime::now(), true)
        .is_empty());
}

/// Role hours follow the zone they are read in; the zone is pinned here so that the test does
/// not depend on the machine's.
#[test]
fn local_time_in_a_given_zone() {
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap_or_else(|e| panic!("{e}"));
    // 2026-11-29T04:47:32Z: Sunday 05:47 in Berlin, Sunday 13:47 in Tokyo.
    let unix = 1_795_927_652;
    let cases = [
        (&jiff::tz::TimeZone::UTC, Ok((6, 4 * 60 + 47))),
        (&berlin, Ok((6, 5 * 60 + 47))),
        (&tokyo, Ok((6, 13 * 60 + 47))),
    ];
    for (zone, expected) in cases {
        let actual = LocalTime::at_in(unix, zone).map(|t| (t.weekday, t.minute_of_day));
        assert_eq!(actual, expected, "{zone:?}");
    }
    assert_eq!(
        LocalTime::at_in(i64::MAX, &berlin),
        Err(LocalTimeError::Convert {
            unix_seconds: i64::MAX
        })
    );
    // A Monday-to-Friday 08:00-18:00 role at 2026-11-30T08:00:00Z, a Monday, is open in Berlin
    // (09:00) and in Tokyo (17:00); an hour later Tokyo is at 18:00 and closed, Berlin is not.
    let hours = Hours::parse("Mon-Fri 08:00-18:00").unwrap_or_else(|e| panic!("{e}"));
    let monday_8z = 1_796_025_600;
    let open = |unix, zone| {
        let t = LocalTime::at_in(unix, zone).unwrap_or_else(|e| panic!("{e}"));
        hours.contains(t.weekday, t.minute_of_day)
    };
    assert!(open(monday_8z, &berlin));
    assert!(open(monday_8z, &tokyo));
    assert!(!open(monday_8z + 3600, &tokyo));
    assert!(open(monday_8z + 3600, &berlin));
}

#[test]
fn local_time_of_the_host_is_in_range() {
    for now in [
        LocalTime::now(),
        LocalTime::at(0),
        LocalTime::at(1_790_000_000),
    ] {
        let now = now.unwrap_or_else(|e| panic!("{e}"));
        assert!(now.weekday < 7 && now.minute_of_day < 1440, "{now:?}");
    }
    // The same moment a week later is the same moment of the week, whatever the zone, unless a
    // daylight-saving change falls in between (none does in mid-July of either hemisphere's
    // usual rules, but compare only the weekday to stay safe).
    let july = 1_783_000_000;
    let (a, b) = (LocalTime::at(july), LocalTime::at(july + 7 * 86_400));
    assert_eq!(a.map(|t| t.weekday), b.map(|t| t.weekday));
}
