//! The metrics contract: the families that the alert rules and the Grafana dashboard in
//! `packaging/` and operators' own queries rely on are exported by a real agent, with their
//! type and their label names. A family that disappears, changes type or changes its labels
//! fails here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::{self, UdpReceiver};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg;

const PROBE: u16 = 7300;
const WG_PORT: u16 = 51830;
const COUNT: Duration = Duration::from_secs(10);

/// Name, type and label names of every family an agent with `[vpn]`, one peer, one ban and
/// counted traffic exports. Families that need a handshake or a provisioned key
/// (`crmguard_vpn_last_handshake_timestamp_seconds`, `crmguard_vpn_key_expiry_seconds`) are
/// checked by the daemon's unit tests and the VPN tests.
const FAMILIES: [(&str, &str, &[&str]); 32] = [
    ("crmguard_acl_denied_total", "counter", &["role", "service"]),
    ("crmguard_alerts_total", "counter", &["result", "sink"]),
    ("crmguard_crowdsec_decisions", "gauge", &[]),
    ("crmguard_crowdsec_errors_total", "counter", &["kind"]),
    ("crmguard_detection_observations_lost_total", "counter", &[]),
    ("crmguard_detections_total", "counter", &["detector"]),
    ("crmguard_auth_failures_total", "counter", &["protocol"]),
    ("crmguard_inspect_evictions_total", "counter", &[]),
    (
        "crmguard_inspect_exceptions_total",
        "counter",
        &["exception"],
    ),
    ("crmguard_inspect_flows_active", "gauge", &[]),
    ("crmguard_inspect_flows_total", "counter", &["protocol"]),
    ("crmguard_inspect_violations_total", "counter", &["kind"]),
    ("crmguard_audit_events_total", "counter", &["type"]),
    ("crmguard_audit_write_errors_total", "counter", &[]),
    ("crmguard_bans_active", "gauge", &[]),
    ("crmguard_bans_total", "counter", &["reason"]),
    ("crmguard_build_info", "gauge", &["version"]),
    ("crmguard_mfa_attempts_total", "counter", &["result"]),
    ("crmguard_policy_change_pending", "gauge", &[]),
    ("crmguard_policy_divergence_entries", "gauge", &[]),
    ("crmguard_policy_fallback", "gauge", &[]),
    ("crmguard_policy_generation", "gauge", &[]),
    ("crmguard_policy_rollbacks_total", "counter", &[]),
    ("crmguard_vpn_dropped_total", "counter", &["reason"]),
    ("crmguard_vpn_handshakes_total", "counter", &["result"]),
    ("crmguard_vpn_peers", "gauge", &["state"]),
    ("crmguard_vpn_rx_bytes_total", "counter", &["peer"]),
    ("crmguard_vpn_tx_bytes_total", "counter", &["peer"]),
    ("crmguard_vpn_up", "gauge", &[]),
    ("crmguard_xdp_attached", "gauge", &["interface", "mode"]),
    (
        "crmguard_xdp_bytes_total",
        "counter",
        &["action", "interface", "reason"],
    ),
    (
        "crmguard_xdp_packets_total",
        "counter",
        &["action", "interface", "reason"],
    ),
];

/// Each family of an exposition: its type and the label names of its samples.
fn families(text: &str) -> BTreeMap<String, (String, Vec<Vec<String>>)> {
    let mut out: BTreeMap<String, (String, Vec<Vec<String>>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                out.entry(name.to_owned()).or_default().0 = kind.to_owned();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').map_or("", |(l, _)| l)),
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let mut names: Vec<String> = labels
            .split(',')
            .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        names.sort();
        out.entry(name.to_owned()).or_default().1.push(names);
    }
    out
}

/// What is missing or different from [`FAMILIES`] in `text`; empty when it is all there.
fn differences(text: &str) -> Vec<String> {
    let found = families(text);
    let mut out = Vec::new();
    for (name, kind, labels) in FAMILIES {
        let Some((found_kind, samples)) = found.get(name) else {
            out.push(format!("{name} is missing"));
            continue;
        };
        if found_kind != kind {
            out.push(format!("{name} is a {found_kind}, not a {kind}"));
        }
        if samples.is_empty() {
            out.push(format!("{name} has no sample"));
        }
        for sample in samples {
            if sample.iter().map(String::as_str).ne(labels.iter().copied()) {
                out.push(format!("{name} has labels {sample:?}, not {labels:?}"));
            }
        }
    }
    out
}

#[test]
fn every_family_is_exported() -> Result<()> {
    if !privileged::require("metrics::every_family_is_exported") {
        return Ok(());
    }
    let t = Topology::ipv4_only(170, 1)?;
    let receiver = UdpReceiver::start(&t.host, PROBE)?;
    let keys = wg::genkey()?;
    let scratch = tempfile::tempdir()?;
    let body = format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[[firewall.service]]
name = "probe"
proto = "udp"
ports = [{PROBE}]

[vpn]
listen_port = {WG_PORT}
address = "10.77.0.1/24"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"

[[role]]
name = "staff"
allow = ["tcp/22"]

[[peer]]
name = "alice"
public_key = "{public}"
address = "10.77.0.2"
role = "staff"
"#,
        iface = t.host_if.name(),
        dir = scratch.path().display(),
        public = keys.public,
    );
    let agent = Agent::start(&t.host, &body)?;
    net::udp_send(
        &t.out,
        t.addrs.out4,
        SocketAddr::new(t.addrs.host4, PROBE),
        3,
        32,
    )?;
    wait_for(COUNT, "the datagrams", || {
        Ok((receiver.received() >= 3).then_some(()))
    })?;
    let banned = agent.cli(&["ban", "add", "203.0.113.9", "--reason", "metrics test"])?;
    ensure!(banned.status.success(), "ban add: {banned:?}");

    let mut last = String::new();
    let found = wait_for(COUNT, "every metric family", || {
        last = agent.metrics()?;
        Ok(differences(&last).is_empty().then_some(()))
    });
    found.with_context(|| format!("{:?} in\n{last}", differences(&last)))?;
    Ok(())
}

#[test]
fn differences_name_what_is_missing() {
    let text = "# TYPE crmguard_bans_active counter\ncrmguard_bans_active 1\n\
                # TYPE crmguard_xdp_attached gauge\ncrmguard_xdp_attached{mode=\"native\"} 1\n";
    let found = differences(text);
    for expected in [
        "crmguard_bans_active is a counter, not a gauge",
        "crmguard_xdp_attached has labels [\"mode\"], not [\"interface\", \"mode\"]",
        "crmguard_vpn_up is missing",
    ] {
        assert!(found.iter().any(|f| f == expected), "{expected}: {found:?}");
    }
}
