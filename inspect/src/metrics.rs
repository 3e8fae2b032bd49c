//! Inspection's Prometheus families. Every series is created at registration with its labels
//! resolved once, so the per-packet path only bumps an atomic.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::event::ViolationKind;
use crate::protocol::Protocol;

/// Why a flow was not inspected, or not fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Exception {
    /// The flow table was full: the flow passed uninspected.
    TableFull,
    /// The reassembly budget was spent: the flow passed unidentified.
    ReassemblyBudget,
    /// The flow began before inspection saw its SYN.
    Midstream,
    /// A parser error under `parser_error = "pass"`: the flow passed, no longer parsed.
    ParserError,
}

impl Exception {
    pub const ALL: [Exception; 4] = [
        Exception::TableFull,
        Exception::ReassemblyBudget,
        Exception::Midstream,
        Exception::ParserError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Exception::TableFull => "table_full",
            Exception::ReassemblyBudget => "reassembly_budget",
            Exception::Midstream => "midstream",
            Exception::ParserError => "parser_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters, shared by every thread of the endpoint.
#[derive(Debug, Clone)]
pub struct InspectMetrics {
    families: [IntCounterVec; 4],
    flows: Vec<IntCounter>,
    violations: Vec<IntCounter>,
    auth_failures: Vec<IntCounter>,
    exceptions: Vec<IntCounter>,
    evictions: IntCounter,
    active: IntGauge,
}

impl InspectMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<InspectMetrics, prometheus::Error> {
        let metrics = InspectMetrics::unregistered()?;
        for family in &metrics.families {
            registry.register(Box::new(family.clone()))?;
        }
        registry.register(Box::new(metrics.evictions.clone()))?;
        registry.register(Box::new(metrics.active.clone()))?;
        Ok(metrics)
    }

    /// Counters that no registry exports (tests and the bench).
    pub fn unregistered() -> Result<InspectMetrics, prometheus::Error> {
        let [flows, violations, auth, exceptions] = new_families()?;
        Ok(InspectMetrics {
            flows: Protocol::ALL
                .iter()
                .map(|p| flows.with_label_values(&[p.as_str()]))
                .collect(),
            violations: ViolationKind::ALL
                .iter()
                .map(|k| violations.with_label_values(&[k.as_str()]))
                .collect(),
            auth_failures: Protocol::ALL
                .iter()
                .map(|p| auth.with_label_values(&[p.as_str()]))
                .collect(),
            exceptions: Exception::ALL
                .iter()
                .map(|e| exceptions.with_label_values(&[e.as_str()]))
                .collect(),
            families: [flows, violations, auth, exceptions],
            evictions: IntCounter::new(
                "crmguard_inspect_evictions_total",
                "Inspected flows removed from a full table to make room (idle ones first)",
            )?,
            active: IntGauge::new(
                "crmguard_inspect_flows_active",
                "Flows in the inspection table",
            )?,
        })
    }

    pub fn flow(&self, protocol: Protocol) {
        self.flows[protocol.index()].inc();
    }

    pub fn violation(&self, kind: ViolationKind) {
        self.violations[kind.index()].inc();
    }

    pub fn auth_failure(&self, protocol: Protocol) {
        self.auth_failures[protocol.index()].inc();
    }

    pub fn exception(&self, exception: Exception) {
        self.exceptions[exception.index()].inc();
    }

    pub fn evicted(&self) {
        self.evictions.inc();
    }

    pub fn flows_added(&self, flows: usize) {
        self.active.add(i64::try_from(flows).unwrap_or(i64::MAX));
    }

    pub fn flows_removed(&self, flows: usize) {
        self.active.sub(i64::try_from(flows).unwrap_or(i64::MAX));
    }

    /// `crmguard_inspect_flows_active`.
    pub fn active(&self) -> i64 {
        self.active.get()
    }

    pub fn set_active(&self, flows: usize) {
        self.active.set(i64::try_from(flows).unwrap_or(i64::MAX));
    }

    /// `crmguard_inspect_flows_total` of `protocol`.
    pub fn flows_of(&self, protocol: Protocol) -> u64 {
        self.flows[protocol.index()].get()
    }

    /// `crmguard_inspect_violations_total` of `kind`.
    pub fn violations_of(&self, kind: ViolationKind) -> u64 {
        self.violations[kind.index()].get()
    }

    /// `crmguard_auth_failures_total` of `protocol`.
    pub fn auth_failures_of(&self, protocol: Protocol) -> u64 {
        self.auth_failures[protocol.index()].get()
    }

    /// `crmguard_inspect_exceptions_total` of `exception`.
    pub fn exceptions_of(&self, exception: Exception) -> u64 {
        self.exceptions[exception.index()].get()
    }

    /// `crmguard_inspect_evictions_total`.
    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }
}

fn new_families() -> Result<[IntCounterVec; 4], prometheus::Error> {
    Ok([
        IntCounterVec::new(
            Opts::new(
                "crmguard_inspect_flows_total",
                "TCP flows of VPN peers identified by inspection, by protocol",
            ),
            &["protocol"],
        )?,
        IntCounterVec::new(
            Opts::new(
                "crmguard_inspect_violations_total",
                "Inspection policy violations, by kind",
            ),
            &["kind"],
        )?,
        IntCounterVec::new(
            Opts::new(
                "crmguard_auth_failures_total",
                "Failed logins seen in server answers, by protocol",
            ),
            &["protocol"],
        )?,
        IntCounterVec::new(
            Opts::new(
                "crmguard_inspect_exceptions_total",
                "Flows inspection could not inspect fully, by exception",
            ),
            &["exception"],
        )?,
    ])
}
