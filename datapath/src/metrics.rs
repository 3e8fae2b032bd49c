//! The datapath's Prometheus metrics: `crmguard_xdp_attached`, `crmguard_xdp_attach_failed`,
//! and the XDP program's packet
//! and byte counters, `crmguard_xdp_packets_total` and `crmguard_xdp_bytes_total`.
//!
//! The counters live in the kernel, in the per-CPU array `cg_stats` pinned under the maps
//! directory, and survive agent restarts. [`XdpCounters`] is a collector that reads them
//! from the pinned map at each scrape, so a scrape reports what the kernel holds at that
//! moment, with no copy in the agent to keep up to date and no trip through the daemon's main
//! loop. No label carries an address.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, PerCpuArray};
use crmguard_core::abi::{self, Action, Reason};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{AttachFailure, Attachment, MapsError};

/// The pinned map of the counters, as the XDP program names it.
const STATS_MAP: &str = "cg_stats";

/// Labels of the counters; the encoder writes them in name order.
const COUNTER_LABELS: [&str; 3] = ["interface", "action", "reason"];

#[derive(Debug, thiserror::Error)]
pub enum DatapathMetricsError {
    #[error("opening the XDP program's counters")]
    Open(#[from] MapsError),
    #[error("registering the datapath's metrics")]
    Register(#[from] prometheus::Error),
}

/// The `mode` label of an interface the filter should be on and is not.
pub const NOT_ATTACHED: &str = "none";

/// The counter slot and name of each filtered interface, shared with the collector.
type Interfaces = Arc<Mutex<Vec<(u32, String)>>>;

/// The datapath's metrics that follow the set of filtered interfaces, which grows when an
/// interface takes the uplink's role after the start.
pub struct DatapathMetrics {
    attached: IntGaugeVec,
    failed: IntGaugeVec,
    interfaces: Interfaces,
}

impl DatapathMetrics {
    /// Brings the metrics to the interfaces filtered and those that could not be.
    pub fn track(&self, attachments: &[Attachment], failures: &[AttachFailure]) {
        self.attached.reset();
        for attachment in attachments {
            self.attached
                .with_label_values(&[attachment.name.as_str(), attachment.mode.name()])
                .set(1);
        }
        self.failed.reset();
        for failure in failures {
            self.failed
                .with_label_values(&[failure.name.as_str()])
                .set(1);
            // 0, not absent: an alert on `crmguard_xdp_attached == 0` sees the interface.
            self.attached
                .with_label_values(&[failure.name.as_str(), NOT_ATTACHED])
                .set(0);
        }
        let mut interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *interfaces = attachments
            .iter()
            .map(|a| (a.slot, a.name.clone()))
            .collect();
    }
}

/// Registers the datapath's metrics for the interfaces in `attachments` and `failures`, whose
/// counters are in the maps pinned in `maps_dir`.
pub fn register(
    registry: &Registry,
    maps_dir: &Path,
    attachments: &[Attachment],
    failures: &[AttachFailure],
) -> Result<DatapathMetrics, DatapathMetricsError> {
    let attached = IntGaugeVec::new(
        Opts::new(
            "crmguard_xdp_attached",
            "1 when the XDP filter is attached to the interface; 0 (mode \"none\") when the agent should filter it and could not",
        ),
        &["interface", "mode"],
    )?;
    let failed = failure_gauge()?;
    registry.register(Box::new(attached.clone()))?;
    registry.register(Box::new(failed.clone()))?;
    let counters = XdpCounters::open(maps_dir, attachments)?;
    let metrics = DatapathMetrics {
        attached,
        failed,
        interfaces: counters.interfaces.clone(),
    };
    registry.register(Box::new(counters))?;
    metrics.track(attachments, failures);
    Ok(metrics)
}

/// `crmguard_xdp_attach_failed`: one sample per chosen interface the filter could not be
/// attached to, labelled by the host's interface names only.
fn failure_gauge() -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(
        Opts::new(
            "crmguard_xdp_attach_failed",
            "1 when the agent chose the interface but could not attach the XDP filter to it (see crmguard status)",
        ),
        &["interface"],
    )
}

/// The collector of `crmguard_xdp_packets_total` and `crmguard_xdp_bytes_total`.
pub struct XdpCounters {
    stats: PerCpuArray<MapData, abi::Stats>,
    /// The counter slot and name of each interface.
    interfaces: Interfaces,
    /// Refilled from the kernel at each scrape.
    packets: IntCounterVec,
    bytes: IntCounterVec,
    /// One scrape at a time refills the families, so that two scrapes never mix.
    collecting: Mutex<()>,
}

impl XdpCounters {
    /// Opens `cg_stats` in `maps_dir` for the interfaces in `attachments`.
    pub fn open(maps_dir: &Path, attachments: &[Attachment]) -> Result<Self, DatapathMetricsError> {
        let path = maps_dir.join(STATS_MAP);
        let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
            path: path.clone(),
            source,
        })?;
        let stats = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|source| MapsError::Open { path, source })?;
        Ok(Self {
            stats,
            interfaces: Arc::new(Mutex::new(
                attachments
                    .iter()
                    .map(|a| (a.slot, a.name.clone()))
                    .collect(),
            )),
            packets: IntCounterVec::new(
                Opts::new(
                    "crmguard_xdp_packets_total",
                    "Packets seen by the XDP filter, by interface, action and reason",
                ),
                &COUNTER_LABELS,
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "crmguard_xdp_bytes_total",
                    "Bytes seen by the XDP filter, by interface, action and reason",
                ),
                &COUNTER_LABELS,
            )?,
            collecting: Mutex::new(()),
        })
    }

    /// Counters of one interface slot, summed over CPUs.
    fn read(&self, slot: u32) -> Result<Vec<(Action, Reason, abi::Stats)>, MapsError> {
        crate::maps::read_stats(&self.stats, slot)
    }
}

impl Collector for XdpCounters {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.packets.desc();
        descs.extend(self.bytes.desc());
        descs
    }

    /// Reads the kernel's counters. Counters that have not counted yet are left out, as
    /// `crmguard status` leaves them out; an interface whose counters cannot be read is left
    /// out of this scrape and logged.
    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self
            .collecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.packets.reset();
        self.bytes.reset();
        let interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (slot, interface) in &interfaces {
            let counters = match self.read(*slot) {
                Ok(counters) => counters,
                Err(e) => {
                    tracing::warn!(%interface, error = %crmguard_core::error_chain(&e), "cannot read the XDP counters");
                    continue;
                }
            };
            for (action, reason, stats) in counters {
                if stats.packets == 0 {
                    continue;
                }
                let labels = [interface.as_str(), action.name(), reason.name()];
                self.packets
                    .with_label_values(&labels)
                    .inc_by(stats.packets);
                self.bytes.with_label_values(&labels).inc_by(stats.bytes);
            }
        }
        let mut families = self.packets.collect();
        families.extend(self.bytes.collect());
        families
    }
}
