//! The metrics contract: the families that the alert rules and the Grafana dashboard in
//! `packaging/` and operators' own queries rely on are exported by a real agent, with their
//! type and their label names. A family that disappears, changes type or changes its labels
//! fails here, and so does a dashboard panel or an alert rule whose query names a metric or a
//! label that the real scrape does not have.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::{self, UdpReceiver};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg;

use crate::access::date_days_ago;
use crate::vpn::{gateway_key, wait_reachable};

const PROBE: u16 = 7300;
const WG_PORT: u16 = 51830;
const COUNT: Duration = Duration::from_secs(10);

/// Name, type and label names of every family an agent with `[vpn]`, one connected peer with a
/// registration date, one ban and counted traffic exports.
const FAMILIES: [(&str, &str, &[&str]); 39] = [
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
    ("crmguard_audit_rotations_total", "counter", &[]),
    ("crmguard_audit_rotation_errors_total", "counter", &[]),
    ("crmguard_backup_failures_total", "counter", &["stage"]),
    ("crmguard_backup_interval_seconds", "gauge", &[]),
    (
        "crmguard_backup_last_success_timestamp_seconds",
        "gauge",
        &[],
    ),
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
    ("crmguard_vpn_key_expiry_seconds", "gauge", &["peer"]),
    (
        "crmguard_vpn_last_handshake_timestamp_seconds",
        "gauge",
        &["peer"],
    ),
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
created = "{created}"
"#,
        iface = t.host_if.name(),
        dir = scratch.path().display(),
        public = keys.public,
        created = date_days_ago(3)?,
    );
    let agent = Agent::start(&t.host, &body)?;
    // Alice's wireguard-go completes a handshake, so that the per-peer families have samples.
    let gateway = gateway_key(&agent)?;
    let client = wg::WgClient::start(&t.out, &keys, &["10.77.0.2/24"])?;
    client.set_peer(
        &gateway,
        SocketAddr::new(t.addrs.host4, WG_PORT),
        &["10.77.0.0/24"],
    )?;
    wait_reachable(&t.out, IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)))?;
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

    // What the dashboard and the alert rules ask of that scrape.
    let exported = families(&last);
    let mut wrong = Vec::new();
    for (file, exprs) in [
        (DASHBOARD, dashboard_queries()?),
        (ALERT_RULES, rule_queries()?),
    ] {
        ensure!(!exprs.is_empty(), "{file} has no query");
        for expr in exprs {
            wrong.extend(
                unknown_names(&expr, &exported)
                    .into_iter()
                    .map(|w| format!("{file}: {w} in `{expr}`")),
            );
        }
    }
    ensure!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

const DASHBOARD: &str = "packaging/grafana/crmguard-dashboard.json";
const ALERT_RULES: &str = "packaging/prometheus/crmguard-alerts.yml";

/// Labels that Prometheus adds to every scraped series, or that PromQL makes itself.
const TARGET_LABELS: [&str; 4] = ["instance", "job", "le", "__name__"];

fn repository_file(path: &str) -> Result<String> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
}

/// Every `expr` of the Grafana dashboard's panels and variables.
fn dashboard_queries() -> Result<Vec<String>> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&repository_file(DASHBOARD)?)?;
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    Ok(out)
}

/// Every `expr:` of the alert rules, with `expr: |` blocks joined.
fn rule_queries() -> Result<Vec<String>> {
    let text = repository_file(ALERT_RULES)?;
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, value)) = line.split_once("expr:") else {
            continue;
        };
        let value = value.trim();
        if value != "|" && value != ">" {
            out.push(value.to_owned());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent.len();
            if !deeper && !next.trim().is_empty() {
                break;
            }
            block.push_str(next.trim());
            block.push(' ');
            lines.next();
        }
        out.push(block.trim().to_owned());
    }
    Ok(out)
}

/// The label names of a selector's matchers, `selector` starting after its `{`.
fn selector_labels(selector: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut chars = selector.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let mut label = String::new();
        while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
            label.push(c);
        }
        if label.is_empty() {
            return labels;
        }
        labels.push(label);
        while chars.next_if(|c| *c != '"' && *c != '}').is_some() {}
        if chars.next() != Some('"') {
            return labels;
        }
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
    }
}

/// The crmguard metrics and the labels that `expr` names but the scrape does not have.
fn unknown_names(
    expr: &str,
    exported: &BTreeMap<String, (String, Vec<Vec<String>>)>,
) -> Vec<String> {
    let labels_of = |name: &str| -> Option<Vec<String>> {
        let (_, samples) = exported.get(name)?;
        let mut labels: Vec<String> = samples.iter().flatten().cloned().collect();
        labels.sort();
        labels.dedup();
        Some(labels)
    };
    let known = |label: &str, allowed: &[String]| {
        TARGET_LABELS.contains(&label) || allowed.iter().any(|l| l == label)
    };
    let mut out = Vec::new();
    let mut all_labels: Vec<String> = Vec::new();
    let mut grouped: Vec<String> = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            // A string literal: label values and regexes are not names.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let word = &expr[start..i];
        let rest = expr[i..].trim_start();
        if matches!(
            word,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) && rest.starts_with('(')
        {
            let inside = rest[1..].split(')').next().unwrap_or_default();
            grouped.extend(inside.split(',').map(|l| l.trim().to_owned()));
            continue;
        }
        if !word.starts_with("crmguard_") {
            continue;
        }
        let Some(labels) = labels_of(word) else {
            out.push(format!("{word} is not exported"));
            continue;
        };
        if let Some(selector) = rest.strip_prefix('{') {
            for label in selector_labels(selector) {
                if !known(&label, &labels) {
                    out.push(format!("{word} has no label {label}"));
                }
            }
        }
        all_labels.extend(labels);
    }
    for label in grouped.iter().filter(|l| !l.is_empty()) {
        if !known(label, &all_labels) {
            out.push(format!("no metric of the query has the label {label}"));
        }
    }
    out
}

#[test]
fn unknown_names_finds_metrics_and_labels_the_scrape_lacks() {
    let scrape = "# TYPE crmguard_bans_total counter\ncrmguard_bans_total{reason=\"manual\"} 1\n";
    let exported = families(scrape);
    assert!(unknown_names(
        "sum by (instance, reason) (rate(crmguard_bans_total{instance=~\"$i\", reason!=\"x,y\"}[5m]))",
        &exported
    )
    .is_empty());
    assert_eq!(
        unknown_names(
            "sum by (peer) (crmguard_bans_total{kind=\"a\"}) + crmguard_bans_gone",
            &exported
        ),
        [
            "crmguard_bans_total has no label kind",
            "crmguard_bans_gone is not exported",
            "no metric of the query has the label peer",
        ]
    );
}

#[test]
fn the_dashboard_and_the_rules_have_queries() {
    let dashboard = dashboard_queries().unwrap_or_else(|e| panic!("{e:#}"));
    let rules = rule_queries().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(dashboard.len() >= 20, "{dashboard:?}");
    assert!(
        rules
            .iter()
            .any(|r| r.contains("crmguard_xdp_packets_total")),
        "{rules:?}"
    );
    assert!(
        rules.iter().all(|r| !r.is_empty() && !r.contains("expr")),
        "{rules:?}"
    );
}

/// Every alert of the rules is fired by at least one case of the promtool tests
/// (`cargo xtask lint` runs `promtool test rules` on them).
#[test]
fn every_alert_rule_has_a_promtool_test() {
    let rules = repository_file(ALERT_RULES).unwrap_or_else(|e| panic!("{e:#}"));
    let tests = repository_file("packaging/prometheus/tests/crmguard-alerts.test.yml")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 14, "{alerts:?}");
    // A case that expects the alert to fire names it and lists `exp_labels` right after.
    let fired = |alert: &str| {
        let lines: Vec<&str> = tests.lines().map(str::trim).collect();
        lines.windows(4).any(|w| {
            w[0] == format!("alertname: {alert}")
                && w[1] == "exp_alerts:"
                && w[2].starts_with("- exp_labels:")
        })
    };
    let untested: Vec<&&str> = alerts.iter().filter(|a| !fired(a)).collect();
    assert!(
        untested.is_empty(),
        "alerts no promtool case fires: {untested:?}"
    );
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
