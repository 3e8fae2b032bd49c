//! The daemon's own metrics: the build, the policy it enforces, the bans and the peers' key
//! expiry (the audit log and the MFA portal's attempts register their own); and
//! [`Agent::refresh_metrics`], which brings every metric kept from a snapshot up to the
//! agent's state.
//!
//! The daemon's state is owned by its main loop, so these metrics are set from it: counts
//! that change at one place (bans added) where they change, the rest when a scrape asks
//! through the metrics channel. Refreshing at the scrape, rather than on a tick, is what
//! lets a scrape report what happened just before it, as the kernel's counters do (the
//! datapath's collector reads them at the scrape).

use std::collections::{BTreeMap, BTreeSet};

use crmguard_core::acl::AclMetrics;
use crmguard_vpn::status::VpnMetrics;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::Agent;

/// The metrics the daemon sets, with the VPN's and the ACL's, whose owners the daemon feeds.
pub(super) struct DaemonMetrics {
    generation: IntGauge,
    divergence: IntGauge,
    /// `crmguard_policy_fallback`.
    fallback: IntGauge,
    /// `crmguard_policy_change_pending`.
    change_pending: IntGauge,
    /// `crmguard_policy_rollbacks_total`.
    rollbacks: IntCounter,
    bans_active: IntGauge,
    bans_total: IntCounterVec,
    /// `crmguard_bans_refused_total`.
    bans_refused: IntCounterVec,
    key_expiry: IntGaugeVec,
    /// The peers with a key expiry sample, whose samples go when the peer goes.
    key_expiry_peers: BTreeSet<String>,
    vpn: VpnMetrics,
    acl: AclMetrics,
}

impl DaemonMetrics {
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "crmguard_build_info",
                "crmguard build information (always 1)",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let counters =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let counters = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(counters.clone()))?;
                Ok(counters)
            };
        let bans_total = counters(
            "crmguard_bans_total",
            "Bans added since the agent started, by reason: manual or the detector's name",
            "reason",
        )?;
        // Present from the start, so that rate() sees the first manual ban.
        bans_total.with_label_values(&["manual"]);
        let bans_refused = IntCounterVec::new(
            Opts::new(
                "crmguard_bans_refused_total",
                "Automatic bans refused, by reason (the detector's name or crowdsec) and refusal: full (the kernel's ban map), trusted (an admin network, for a port scan), allowlisted, link_local, tunnel_network, host_address and others",
            ),
            &["reason", "refusal"],
        )?;
        registry.register(Box::new(bans_refused.clone()))?;
        // Present from the start for the refusal an alert watches, so that increase() sees
        // the first one.
        let banning = crmguard_detect::Detector::ALL.map(|d| d.name());
        for reason in banning.iter().copied().chain(["crowdsec"]) {
            bans_refused.with_label_values(&[reason, "full"]);
        }
        let key_expiry = IntGaugeVec::new(
            Opts::new(
                "crmguard_vpn_key_expiry_seconds",
                "Seconds until the peer's key reaches vpn.key_max_age and is refused (negative once refused)",
            ),
            &["peer"],
        )?;
        registry.register(Box::new(key_expiry.clone()))?;
        Ok(Self {
            generation: gauge(
                "crmguard_policy_generation",
                "Generation of the policy the kernel enforces",
            )?,
            divergence: gauge(
                "crmguard_policy_divergence_entries",
                "Entries in which the kernel's policy differed from the configuration at the last check (repaired since)",
            )?,
            fallback: gauge(
                "crmguard_policy_fallback",
                "1 while the agent enforces a last-good or embedded policy because the configuration could not be loaded",
            )?,
            change_pending: gauge(
                "crmguard_policy_change_pending",
                "1 while a policy applied by `crmguard reload --confirm` waits for `crmguard confirm` and is rolled back without it",
            )?,
            rollbacks: {
                let counter = IntCounter::new(
                    "crmguard_policy_rollbacks_total",
                    "Policies applied by `crmguard reload --confirm` that were not confirmed in time and were rolled back",
                )?;
                registry.register(Box::new(counter.clone()))?;
                counter
            },
            bans_active: gauge(
                "crmguard_bans_active",
                "Bans in force (addresses and prefixes the XDP filter drops)",
            )?,
            bans_total,
            bans_refused,
            key_expiry,
            key_expiry_peers: BTreeSet::new(),
            vpn: VpnMetrics::register(registry)?,
            acl: AclMetrics::register(registry)?,
        })
    }

    /// `crmguard_acl_denied_total`, counted by the VPN endpoint as it applies the ACL.
    pub(super) fn acl(&self) -> &AclMetrics {
        &self.acl
    }

    /// Sets `crmguard_policy_fallback` from the policy in force.
    pub(super) fn fallback(&self, source: super::PolicySource) {
        self.fallback
            .set(i64::from(source != super::PolicySource::Config));
    }

    /// Sets `crmguard_policy_change_pending`.
    pub(super) fn change_pending(&self, pending: bool) {
        self.change_pending.set(i64::from(pending));
    }

    /// Counts one rollback of an unconfirmed policy.
    pub(super) fn rolled_back(&self) {
        self.rollbacks.inc();
    }

    /// Counts one added ban. `reason` is `BanSource::label`: `manual` or a detector's name,
    /// never the free text of the ban.
    pub(super) fn ban_added(&self, reason: &str) {
        self.bans_total.with_label_values(&[reason]).inc();
    }

    /// Counts one automatic ban refused. `reason` is the detector's name (or `crowdsec`),
    /// `refusal` is [`crmguard_core::bans::BanError::kind`].
    pub(super) fn ban_refused(&self, reason: &str, refusal: &str) {
        self.bans_refused
            .with_label_values(&[reason, refusal])
            .inc();
    }

    fn key_expiry(&mut self, expiry: &BTreeMap<String, i64>) {
        for (peer, secs) in expiry {
            self.key_expiry
                .with_label_values(&[peer.as_str()])
                .set(*secs);
        }
        for gone in self
            .key_expiry_peers
            .iter()
            .filter(|p| !expiry.contains_key(*p))
        {
            // A peer without a sample has nothing to remove.
            let _ = self.key_expiry.remove_label_values(&[gone.as_str()]);
        }
        self.key_expiry_peers = expiry.keys().cloned().collect();
    }
}

impl Agent {
    /// Brings the metrics kept from the agent's state up to it; a scrape asks for this just
    /// before it reads the registry.
    pub(super) fn refresh_metrics(&mut self) {
        let expiry = self.key_expiry();
        let vpn = self.vpn.status();
        let m = &mut self.metrics;
        m.generation.set(i64::from(self.datapath.generation()));
        m.divergence
            .set(i64::try_from(self.divergence).unwrap_or(i64::MAX));
        m.bans_active
            .set(i64::try_from(self.bans.len()).unwrap_or(i64::MAX));
        m.key_expiry(&expiry);
        m.vpn.observe(vpn.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmguard_vpn::status::{VpnPeerStatus, VpnStatus};

    /// The `# HELP` and `# TYPE` lines of every family the daemon registers, as the alert
    /// rules, the dashboard and the suite know them. A family that disappears or whose help
    /// or type changes fails here. The kernel's `crmguard_xdp_*` and the ACL's
    /// `crmguard_acl_denied_total`, which has no sample before a peer is denied, are checked by
    /// the suite's `metrics::every_family_is_exported`.
    const CONTRACT: [(&str, &str, &str); 17] = [
        ("crmguard_bans_active", "gauge", "Bans in force (addresses and prefixes the XDP filter drops)"),
        ("crmguard_bans_refused_total", "counter", "Automatic bans refused, by reason (the detector's name or crowdsec) and refusal: full (the kernel's ban map), trusted (an admin network, for a port scan), allowlisted, link_local, tunnel_network, host_address and others"),
        ("crmguard_bans_total", "counter", "Bans added since the agent started, by reason: manual or the detector's name"),
        ("crmguard_build_info", "gauge", "crmguard build information (always 1)"),
        ("crmguard_policy_change_pending", "gauge", "1 while a policy applied by `crmguard reload --confirm` waits for `crmguard confirm` and is rolled back without it"),
        ("crmguard_policy_divergence_entries", "gauge", "Entries in which the kernel's policy differed from the configuration at the last check (repaired since)"),
        ("crmguard_policy_fallback", "gauge", "1 while the agent enforces a last-good or embedded policy because the configuration could not be loaded"),
        ("crmguard_policy_generation", "gauge", "Generation of the policy the kernel enforces"),
        ("crmguard_policy_rollbacks_total", "counter", "Policies applied by `crmguard reload --confirm` that were not confirmed in time and were rolled back"),
        ("crmguard_vpn_dropped_total", "counter", "Packets the VPN endpoint dropped: source_check (inner source not the sending peer's), no_route (to a tunnel address no peer owns), invalid (did not authenticate)"),
        ("crmguard_vpn_handshakes_total", "counter", "WireGuard handshake messages by result: ok (completed), rejected, cookie (cookie reply sent under load), rate_limited"),
        ("crmguard_vpn_key_expiry_seconds", "gauge", "Seconds until the peer's key reaches vpn.key_max_age and is refused (negative once refused)"),
        ("crmguard_vpn_last_handshake_timestamp_seconds", "gauge", "Unix time of the peer's last completed handshake"),
        ("crmguard_vpn_peers", "gauge", "VPN peers: configured (in the configuration), connected (handshake within 3 minutes), mfa_session (with an open MFA session)"),
        ("crmguard_vpn_rx_bytes_total", "counter", "Bytes of WireGuard datagrams received from the peer"),
        ("crmguard_vpn_tx_bytes_total", "counter", "Bytes of WireGuard datagrams sent to the peer"),
        ("crmguard_vpn_up", "gauge", "1 when the VPN endpoint runs"),
    ];

    fn vpn(peers: &[(&str, Option<u64>, u64)]) -> VpnStatus {
        VpnStatus {
            running: true,
            peers: peers
                .iter()
                .map(|(name, handshake, rx)| VpnPeerStatus {
                    name: (*name).to_owned(),
                    latest_handshake: *handshake,
                    rx_bytes: *rx,
                    ..VpnPeerStatus::default()
                })
                .collect(),
            ..VpnStatus::default()
        }
    }

    /// Every family, fed as the daemon feeds it.
    fn fed() -> (Registry, DaemonMetrics) {
        let registry = Registry::new();
        let mut metrics = DaemonMetrics::register(&registry).expect("register");
        metrics.fallback(super::super::PolicySource::LastGood);
        metrics.ban_added("manual");
        metrics.ban_added("auth_failures");
        metrics.ban_refused("port_scan", "trusted");
        metrics.change_pending(true);
        metrics.rolled_back();
        metrics.key_expiry(&[("alice".to_owned(), -5)].into());
        metrics
            .vpn
            .observe(Some(&vpn(&[("alice", Some(1_700_000_000), 10)])));
        (registry, metrics)
    }

    #[test]
    fn every_family_keeps_its_name_type_and_help() {
        let (registry, _metrics) = fed();
        let text = crate::metrics::render(&registry);
        for (name, kind, help) in CONTRACT {
            for line in [
                format!("# HELP {name} {help}\n"),
                format!("# TYPE {name} {kind}\n"),
            ] {
                assert!(text.contains(&line), "missing {line} in\n{text}");
            }
        }
        for line in [
            "crmguard_bans_total{reason=\"manual\"} 1",
            "crmguard_bans_total{reason=\"auth_failures\"} 1",
            "crmguard_bans_refused_total{reason=\"port_scan\",refusal=\"trusted\"} 1",
            "crmguard_policy_fallback 1",
            "crmguard_policy_change_pending 1",
            "crmguard_policy_rollbacks_total 1",
            "crmguard_vpn_key_expiry_seconds{peer=\"alice\"} -5",
            "crmguard_vpn_last_handshake_timestamp_seconds{peer=\"alice\"} 1700000000",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    /// Samples follow the state they mirror: a departed peer's go, a count that starts over
    /// (a restarted endpoint) resets the counter, and without `[vpn]` there is no VPN family.
    #[test]
    fn samples_follow_the_state() {
        let (registry, mut metrics) = fed();
        metrics.key_expiry(&BTreeMap::new());
        metrics.vpn.observe(Some(&vpn(&[("bob", None, 3)])));
        let text = crate::metrics::render(&registry);
        for gone in [
            "peer=\"alice\"",
            "crmguard_vpn_last_handshake_timestamp_seconds",
        ] {
            assert!(!text.contains(gone), "{gone} in\n{text}");
        }
        assert!(
            text.contains("crmguard_vpn_rx_bytes_total{peer=\"bob\"} 3"),
            "{text}"
        );
        metrics.vpn.observe(Some(&vpn(&[("bob", None, 1)])));
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains("crmguard_vpn_rx_bytes_total{peer=\"bob\"} 1"),
            "{text}"
        );
        metrics.vpn.observe(None);
        let text = crate::metrics::render(&registry);
        assert!(!text.contains("crmguard_vpn_"), "{text}");
    }
}
