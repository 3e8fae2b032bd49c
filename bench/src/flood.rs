//! The peer's goodput while spoofed handshake initiations flood the gateway, against its
//! goodput without them: crmguard and wireguard-go as the gateway, side by side in one run.
//!
//! The flood is [`FLOOD_PPS`] handshake initiations a second, each from a random public IPv4
//! source, written as raw frames onto the client namespace's veth by a thread of the bench
//! ([`crmguard_lab::flood`]). Each carries a MAC1 valid for the gateway's key, so it passes
//! every check a gateway can make of the message alone, and no source answers a cookie reply:
//! what an attacker who knows the gateway's public key sends. The gateway namespace's default
//! route leads to the client namespace, which drops the replies, so that a reply costs the
//! gateway what it costs on a host.
//!
//! Each round is one forward transfer without the flood and one under it, for each gateway in
//! turn; the figure is the median of the rounds' ratios (under / without). crmguard meets the
//! flood with its XDP per-source handshake limit (every spoofed source is new, so new sources
//! are budgeted) and its endpoint's cookie replies above `vpn.handshakes_before_cookies`;
//! wireguard-go answers with cookie replies once its handshake queue is long.
//!
//! The generator shares the machine's two CPUs with the pair; its share is the same for both
//! gateways, and the ratio includes it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use boringtun::noise::{Tunn, TunnResult};
use serde_json::{json, Value};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::vpn::{fmt_opt, median};

/// Spoofed initiations a second. The machine has two CPUs for the generator, both tunnel ends
/// and iperf3: a faster generator measures mostly its own share of them.
pub(crate) const FLOOD_PPS: u64 = 30_000;
/// The goal: the peer keeps at least this share of its goodput under the flood.
pub(crate) const FLOOD_TARGET: f64 = 0.8;

/// A handshake initiation from a fresh identity to `gateway`, with a valid MAC1 (MAC1 covers
/// the message, not the addresses, so one serves every spoofed source).
pub(crate) fn initiation(gateway: [u8; 32]) -> Result<Vec<u8>> {
    let secret = StaticSecret::from(crmguard_core::keys::fresh_private_key()?);
    let mut tunn = Tunn::new(secret, PublicKey::from(gateway), None, None, 1, None);
    let mut buf = [0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(init) => Ok(init.to_vec()),
        other => bail!("boringtun made no initiation: {other:?}"),
    }
}

/// One round of a gateway: a transfer without the flood and one under it.
#[derive(Debug, Clone)]
pub(crate) struct FloodRound {
    pub(crate) quiet_gbit_s: f64,
    pub(crate) under_gbit_s: f64,
    /// How long the transfer under the flood lasted, and the frames the generator sent a
    /// second during it.
    pub(crate) seconds: f64,
    pub(crate) flood_per_s: f64,
    /// What crmguard did with the flood during the transfer under it. `None` for wireguard-go.
    pub(crate) crmguard: Option<CrmguardCounts>,
}

/// What crmguard did with the initiations: dropped in XDP (by reason), and at its endpoint
/// answered with a cookie reply, dropped for load or completed.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrmguardCounts {
    pub(crate) xdp_drops: BTreeMap<String, u64>,
    pub(crate) handshakes_ok: u64,
    pub(crate) cookies: u64,
    pub(crate) rate_limited: u64,
}

impl CrmguardCounts {
    /// The counts in `crmguard status --json`.
    pub(crate) fn of(status: &Value) -> Option<CrmguardCounts> {
        let h = &status["vpn"]["handshakes"];
        let mut xdp_drops = BTreeMap::new();
        for counter in status["counters"].as_array()? {
            if counter["action"] == "drop" {
                *xdp_drops
                    .entry(counter["reason"].as_str()?.to_owned())
                    .or_default() += counter["packets"].as_u64()?;
            }
        }
        Some(CrmguardCounts {
            xdp_drops,
            handshakes_ok: h["ok"].as_u64()?,
            cookies: h["cookie"].as_u64()?,
            rate_limited: h["rate_limited"].as_u64()?,
        })
    }

    pub(crate) fn since(&self, before: &CrmguardCounts) -> CrmguardCounts {
        CrmguardCounts {
            xdp_drops: self
                .xdp_drops
                .iter()
                .map(|(reason, n)| {
                    let was = before.xdp_drops.get(reason).copied().unwrap_or(0);
                    (reason.clone(), n.saturating_sub(was))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            handshakes_ok: self.handshakes_ok.saturating_sub(before.handshakes_ok),
            cookies: self.cookies.saturating_sub(before.cookies),
            rate_limited: self.rate_limited.saturating_sub(before.rate_limited),
        }
    }
}

/// Under / without, the median of the rounds.
pub(crate) fn ratio(rounds: &[FloodRound]) -> Option<f64> {
    median(
        &rounds
            .iter()
            .map(|r| r.under_gbit_s / r.quiet_gbit_s)
            .collect::<Vec<_>>(),
    )
}

/// The printed lines of a gateway's rounds.
pub(crate) fn print(name: &str, rounds: &[FloodRound]) {
    let quiet = median(&rounds.iter().map(|r| r.quiet_gbit_s).collect::<Vec<_>>());
    let under = median(&rounds.iter().map(|r| r.under_gbit_s).collect::<Vec<_>>());
    let rate = median(&rounds.iter().map(|r| r.flood_per_s).collect::<Vec<_>>());
    println!(
        "  {name:<30} without {} Gbit/s, under {} Gbit/s ({} initiations/s): {}",
        fmt_opt(quiet, 2),
        fmt_opt(under, 2),
        fmt_opt(rate, 0),
        fmt_opt(ratio(rounds), 2),
    );
    let counted: Vec<(f64, &CrmguardCounts)> = rounds
        .iter()
        .filter_map(|r| Some((r.seconds, r.crmguard.as_ref()?)))
        .collect();
    if counted.is_empty() {
        return;
    }
    let per_s = |n: &dyn Fn(&CrmguardCounts) -> u64| {
        median(
            &counted
                .iter()
                .map(|(seconds, c)| n(c) as f64 / seconds)
                .collect::<Vec<_>>(),
        )
    };
    let reasons: BTreeSet<&String> = counted
        .iter()
        .flat_map(|(_, c)| c.xdp_drops.keys())
        .collect();
    let by_reason: Vec<String> = reasons
        .iter()
        .map(|reason| {
            let n = per_s(&|c| c.xdp_drops.get(*reason).copied().unwrap_or(0));
            format!("{reason} {}", fmt_opt(n, 0))
        })
        .collect();
    println!(
        "  {:<30} a second, dropped in XDP: {}; at its endpoint: {} cookie replies, {} dropped \
         for load, {} handshakes completed",
        "",
        if by_reason.is_empty() {
            "none".to_owned()
        } else {
            by_reason.join(", ")
        },
        fmt_opt(per_s(&|c| c.cookies), 0),
        fmt_opt(per_s(&|c| c.rate_limited), 0),
        fmt_opt(per_s(&|c| c.handshakes_ok), 0),
    );
}

/// A gateway's rounds as JSON.
pub(crate) fn json(rounds: &[FloodRound]) -> Value {
    json!({
        "ratio_median": ratio(rounds),
        "quiet_gbit_s": rounds.iter().map(|r| r.quiet_gbit_s).collect::<Vec<_>>(),
        "under_gbit_s": rounds.iter().map(|r| r.under_gbit_s).collect::<Vec<_>>(),
        "flood_per_s": rounds.iter().map(|r| r.flood_per_s).collect::<Vec<_>>(),
        "seconds_under": rounds.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        "crmguard": rounds.iter().map(|r| r.crmguard.as_ref().map(|c| json!({
            "xdp_drops": c.xdp_drops,
            "handshakes_ok": c.handshakes_ok,
            "cookies": c.cookies,
            "rate_limited": c.rate_limited,
        }))).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(busy: u64, cookies: u64) -> Value {
        json!({
            "counters": [
                { "interface": "veth0", "action": "drop", "reason": "rl_table_busy", "packets": busy, "bytes": 0 },
                { "interface": "veth0", "action": "drop", "reason": "default_drop", "packets": 5, "bytes": 0 },
                { "interface": "veth0", "action": "pass", "reason": "wg_handshake", "packets": 99, "bytes": 0 },
            ],
            "vpn": { "handshakes": { "ok": 1, "rejected": 0, "cookie": cookies, "rate_limited": 2 } },
        })
    }

    #[test]
    fn counts_what_crmguard_dropped_and_answered_during_the_flood() {
        let before = CrmguardCounts::of(&status(100, 10)).expect("well-formed status");
        let after = CrmguardCounts::of(&status(350, 60)).expect("well-formed status");
        let during = after.since(&before);
        // Drops by reason, passes left out, reasons that did not grow left out.
        assert_eq!(
            during.xdp_drops,
            BTreeMap::from([("rl_table_busy".to_owned(), 250)])
        );
        assert_eq!(during.cookies, 50);
        assert_eq!((during.handshakes_ok, during.rate_limited), (0, 0));
        assert!(CrmguardCounts::of(&json!({ "vpn": {} })).is_none());
    }

    #[test]
    fn the_figure_is_the_median_of_the_rounds_ratios() {
        let round = |quiet, under| FloodRound {
            quiet_gbit_s: quiet,
            under_gbit_s: under,
            seconds: 10.0,
            flood_per_s: 30_000.0,
            crmguard: None,
        };
        let rounds = [round(1.0, 0.9), round(2.0, 1.0), round(1.0, 0.8)];
        assert_eq!(ratio(&rounds), Some(0.8));
        assert_eq!(ratio(&[]), None);
    }
}
