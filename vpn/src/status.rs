//! What `crmguard status` and `/metrics` show of the WireGuard endpoint.
//!
//! The endpoint fills a [`VpnStatus`] on request (the daemon adds it to its status), and
//! [`VpnMetrics`] brings the `crmguard_vpn_*` metrics up to it. No metric label carries an
//! address: peers are labelled by their configured name.

use std::collections::BTreeSet;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

/// A peer counts as connected while its last handshake is younger than this: the lifetime
/// of a WireGuard session (REJECT_AFTER_TIME).
pub const CONNECTED_FOR_SECS: u64 = 180;

/// The endpoint as `status --json` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnStatus {
    /// Whether the endpoint runs; when it does not, `error` says why.
    pub running: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The TUN device.
    pub interface: String,
    pub listen_port: u16,
    /// The gateway's public key in base64, as clients configure it.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Whether the TUN device runs with offloads (segmentation and coalescing).
    #[serde(default)]
    pub offload: bool,
    /// The peers the endpoint admits.
    #[serde(default)]
    pub peers: Vec<VpnPeerStatus>,
    /// Configured peers the endpoint refuses, with the reason.
    #[serde(default)]
    pub excluded: Vec<ExcludedPeer>,
    #[serde(default)]
    pub handshakes: HandshakeCounts,
    #[serde(default)]
    pub dropped: DropCounts,
}

/// One admitted peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnPeerStatus {
    pub name: String,
    pub role: String,
    pub public_key: String,
    pub address: String,
    #[serde(default)]
    pub address6: Option<String>,
    /// The outside address of the peer's last authenticated packet.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Unix seconds of the last completed handshake.
    #[serde(default)]
    pub latest_handshake: Option<u64>,
    /// Bytes of WireGuard datagrams received from and sent to the peer.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Decrypted packets the ACL let through (keepalives and handshakes are not counted).
    #[serde(default)]
    pub inner_packets: u64,
    /// A handshake completed within the last [`CONNECTED_FOR_SECS`] seconds.
    pub connected: bool,
    /// The peer has an open MFA session.
    #[serde(default)]
    pub mfa_session: bool,
}

/// A configured peer the endpoint does not admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedPeer {
    pub name: String,
    pub reason: String,
}

/// `crmguard_vpn_handshakes_total` by result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeCounts {
    /// Handshakes completed (as responder or initiator).
    pub ok: u64,
    /// Handshake messages refused: bad MAC, unknown or refused peer, replayed or undecryptable.
    pub rejected: u64,
    /// Cookie replies sent to handshake messages that arrived while the endpoint was under load.
    pub cookie: u64,
    /// Handshake messages dropped for the load without a cookie reply.
    pub rate_limited: u64,
}

/// `crmguard_vpn_dropped_total` by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    /// Decrypted packets whose inner source address is not the sending peer's.
    pub source_check: u64,
    /// Packets from the gateway to a tunnel address that no peer owns.
    pub no_route: u64,
    /// Datagrams that did not authenticate or belong to no session (stale session index,
    /// replay, garbage).
    pub invalid: u64,
}

impl VpnStatus {
    /// The endpoint as `crmguard status` prints it.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if !self.running {
            let _ = writeln!(
                out,
                "vpn: NOT RUNNING on udp/{} ({}): {}",
                self.listen_port,
                self.interface,
                self.error.as_deref().unwrap_or("unknown error")
            );
            return out;
        }
        let _ = writeln!(
            out,
            "vpn: {} udp/{} public key {}",
            self.interface,
            self.listen_port,
            self.public_key.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<16} {:<28} {:>12} {:>14} {:>14}",
            "PEER", "ROLE", "ADDRESS", "ENDPOINT", "HANDSHAKE", "RX", "TX"
        );
        for p in &self.peers {
            let _ = writeln!(
                out,
                "{:<20} {:<12} {:<16} {:<28} {:>12} {:>14} {:>14}",
                p.name,
                p.role,
                p.address,
                p.endpoint.as_deref().unwrap_or("-"),
                p.latest_handshake
                    .map_or_else(|| "never".to_owned(), |t| t.to_string()),
                p.rx_bytes,
                p.tx_bytes
            );
        }
        for e in &self.excluded {
            let _ = writeln!(out, "{:<20} not admitted: {}", e.name, e.reason);
        }
        out
    }
}

/// The `crmguard_vpn_*` metrics. The endpoint keeps its counts; the daemon gives each
/// status snapshot to [`VpnMetrics::observe`], which brings the metrics up to it.
pub struct VpnMetrics {
    peers: IntGaugeVec,
    handshakes: IntCounterVec,
    dropped: IntCounterVec,
    rx_bytes: IntCounterVec,
    tx_bytes: IntCounterVec,
    last_handshake: IntGaugeVec,
    /// Without labels, but a family of its own so that it is absent without `[vpn]`.
    up: IntGaugeVec,
    /// The peers labelled by the last observation, whose samples go when the peer goes.
    labelled: BTreeSet<String>,
}

impl VpnMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let gauge = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(gauge.clone()))?;
                Ok(gauge)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(counter.clone()))?;
                Ok(counter)
            };
        Ok(Self {
            peers: gauge(
                "crmguard_vpn_peers",
                "VPN peers: configured (in the configuration), connected (handshake within 3 minutes), mfa_session (with an open MFA session)",
                &["state"],
            )?,
            handshakes: counter(
                "crmguard_vpn_handshakes_total",
                "WireGuard handshake messages by result: ok (completed), rejected, cookie (cookie reply sent under load), rate_limited",
                &["result"],
            )?,
            dropped: counter(
                "crmguard_vpn_dropped_total",
                "Packets the VPN endpoint dropped: source_check (inner source not the sending peer's), no_route (to a tunnel address no peer owns), invalid (did not authenticate)",
                &["reason"],
            )?,
            rx_bytes: counter(
                "crmguard_vpn_rx_bytes_total",
                "Bytes of WireGuard datagrams received from the peer",
                &["peer"],
            )?,
            tx_bytes: counter(
                "crmguard_vpn_tx_bytes_total",
                "Bytes of WireGuard datagrams sent to the peer",
                &["peer"],
            )?,
            last_handshake: gauge(
                "crmguard_vpn_last_handshake_timestamp_seconds",
                "Unix time of the peer's last completed handshake",
                &["peer"],
            )?,
            up: gauge("crmguard_vpn_up", "1 when the VPN endpoint runs", &[])?,
            labelled: BTreeSet::new(),
        })
    }

    /// Brings the metrics up to `vpn`, the endpoint's status; `None` when there is no
    /// `[vpn]`, and then there are no `crmguard_vpn_*` metrics.
    pub fn observe(&mut self, vpn: Option<&VpnStatus>) {
        let Some(vpn) = vpn else {
            for family in [&self.peers, &self.last_handshake, &self.up] {
                family.reset();
            }
            for family in [
                &self.handshakes,
                &self.dropped,
                &self.rx_bytes,
                &self.tx_bytes,
            ] {
                family.reset();
            }
            self.labelled.clear();
            return;
        };
        let configured = vpn.peers.len() + vpn.excluded.len();
        let connected = vpn.peers.iter().filter(|p| p.connected).count();
        let mfa = vpn.peers.iter().filter(|p| p.mfa_session).count();
        for (state, n) in [
            ("configured", configured),
            ("connected", connected),
            ("mfa_session", mfa),
        ] {
            self.peers
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let h = vpn.handshakes;
        for (result, n) in [
            ("ok", h.ok),
            ("rejected", h.rejected),
            ("cookie", h.cookie),
            ("rate_limited", h.rate_limited),
        ] {
            crmguard_core::counters::mirror(&self.handshakes.with_label_values(&[result]), n);
        }
        let d = vpn.dropped;
        for (reason, n) in [
            ("source_check", d.source_check),
            ("no_route", d.no_route),
            ("invalid", d.invalid),
        ] {
            crmguard_core::counters::mirror(&self.dropped.with_label_values(&[reason]), n);
        }
        let mut labelled = BTreeSet::new();
        for peer in &vpn.peers {
            let name = [peer.name.as_str()];
            crmguard_core::counters::mirror(&self.rx_bytes.with_label_values(&name), peer.rx_bytes);
            crmguard_core::counters::mirror(&self.tx_bytes.with_label_values(&name), peer.tx_bytes);
            match peer.latest_handshake {
                Some(at) => self
                    .last_handshake
                    .with_label_values(&name)
                    .set(i64::try_from(at).unwrap_or(i64::MAX)),
                None => {
                    // Absent until the first handshake.
                    let _ = self.last_handshake.remove_label_values(&name);
                }
            }
            labelled.insert(peer.name.clone());
        }
        for gone in self.labelled.difference(&labelled) {
            let name = [gone.as_str()];
            // A peer that never handshook has no sample to remove.
            let _ = self.rx_bytes.remove_label_values(&name);
            let _ = self.tx_bytes.remove_label_values(&name);
            let _ = self.last_handshake.remove_label_values(&name);
        }
        self.labelled = labelled;
        self.up
            .with_label_values::<&str>(&[])
            .set(i64::from(vpn.running));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn renders_the_contract_names_without_addresses() {
        let status = VpnStatus {
            running: true,
            interface: "crmguard0".into(),
            listen_port: 51820,
            peers: vec![VpnPeerStatus {
                name: "alice".into(),
                role: "staff".into(),
                public_key: "k".into(),
                address: "10.77.0.2".into(),
                endpoint: Some("203.0.113.7:4000".into()),
                latest_handshake: Some(1_700_000_000),
                rx_bytes: 10,
                tx_bytes: 20,
                connected: true,
                ..Default::default()
            }],
            excluded: vec![ExcludedPeer {
                name: "bob".into(),
                reason: "disabled".into(),
            }],
            handshakes: HandshakeCounts {
                ok: 3,
                rejected: 1,
                cookie: 0,
                rate_limited: 0,
            },
            ..Default::default()
        };
        let registry = Registry::new();
        let mut metrics = VpnMetrics::register(&registry).expect("register");
        metrics.observe(Some(&status));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        let text = String::from_utf8(out).expect("utf8");
        for line in [
            "crmguard_vpn_peers{state=\"configured\"} 2",
            "crmguard_vpn_peers{state=\"connected\"} 1",
            "crmguard_vpn_peers{state=\"mfa_session\"} 0",
            "crmguard_vpn_handshakes_total{result=\"ok\"} 3",
            "crmguard_vpn_handshakes_total{result=\"rejected\"} 1",
            "crmguard_vpn_handshakes_total{result=\"rate_limited\"} 0",
            "crmguard_vpn_rx_bytes_total{peer=\"alice\"} 10",
            "crmguard_vpn_tx_bytes_total{peer=\"alice\"} 20",
            "crmguard_vpn_last_handshake_timestamp_seconds{peer=\"alice\"} 1700000000",
            "crmguard_vpn_dropped_total{reason=\"source_check\"} 0",
            "crmguard_vpn_up 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("203.0.113.7"), "{text}");
        assert!(!text.contains("10.77.0.2"), "{text}");
    }
}
