//! Prometheus metrics at `[metrics] listen`, path `/metrics`.
//!
//! Counters of the XDP program live in the kernel (per-CPU, pinned, so they
//! survive agent restarts); each scrape reads them through the daemon and
//! reports them as they are. No label carries an address.

use std::net::SocketAddr;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::control::{self, Command, Request, Response, Status};
use crmguard_core::acl::AclMetrics;

/// The agent's own gauges; the kernel's counters are added at scrape time.
pub struct Metrics {
    registry: Registry,
    xdp_attached: IntGaugeVec,
    generation: IntGauge,
    divergence: IntGauge,
    bans_active: IntGauge,
    bans_total: IntCounterVec,
    acl: AclMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric")]
    Register(#[from] prometheus::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
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
        let xdp_attached = IntGaugeVec::new(
            Opts::new(
                "crmguard_xdp_attached",
                "1 when the XDP filter is attached to the interface",
            ),
            &["interface", "mode"],
        )?;
        registry.register(Box::new(xdp_attached.clone()))?;
        let generation = IntGauge::new(
            "crmguard_policy_generation",
            "Generation of the policy the kernel enforces",
        )?;
        registry.register(Box::new(generation.clone()))?;
        let divergence = IntGauge::new(
            "crmguard_policy_divergence_entries",
            "Entries in which the kernel's policy differed from the configuration at the last check (repaired since)",
        )?;
        registry.register(Box::new(divergence.clone()))?;
        let bans_active = IntGauge::new(
            "crmguard_bans_active",
            "Bans in force (addresses and prefixes the XDP filter drops)",
        )?;
        registry.register(Box::new(bans_active.clone()))?;
        let bans_total = IntCounterVec::new(
            Opts::new(
                "crmguard_bans_total",
                "Bans added since the agent started, by reason: manual or the detector's name",
            ),
            &["reason"],
        )?;
        // Present from the start, so that rate() sees the first manual ban.
        bans_total.with_label_values(&["manual"]);
        registry.register(Box::new(bans_total.clone()))?;
        let acl = AclMetrics::register(&registry)?;
        Ok(Self {
            registry,
            xdp_attached,
            generation,
            divergence,
            bans_active,
            bans_total,
            acl,
        })
    }

    /// `crmguard_acl_denied_total`, counted by the VPN endpoint as it applies the ACL.
    pub fn acl(&self) -> &AclMetrics {
        &self.acl
    }

    /// Counts one added ban. `reason` is `BanSource::label`: `manual` or a detector's name,
    /// never the free text of the ban.
    pub fn ban_added(&self, reason: &str) {
        self.bans_total.with_label_values(&[reason]).inc();
    }

    /// The text exposition for one status snapshot.
    pub fn render(&self, status: &Status) -> String {
        self.xdp_attached.reset();
        for iface in &status.interfaces {
            self.xdp_attached
                .with_label_values(&[&iface.name, &iface.mode])
                .set(1);
        }
        self.generation.set(i64::from(status.generation));
        self.divergence
            .set(i64::try_from(status.policy_divergence_entries).unwrap_or(i64::MAX));
        self.bans_active
            .set(i64::try_from(status.bans.len()).unwrap_or(i64::MAX));
        let mut families = self.registry.gather();
        families.push(counter_family(
            "crmguard_xdp_packets_total",
            "Packets seen by the XDP filter, by interface, action and reason",
            status,
            |c| c.packets,
        ));
        families.push(counter_family(
            "crmguard_xdp_bytes_total",
            "Bytes seen by the XDP filter, by interface, action and reason",
            status,
            |c| c.bytes,
        ));
        if let Some(vpn) = &status.vpn {
            families.extend(crmguard_vpn::status::metric_families(vpn));
        }
        families.extend(audit_families(status));
        families.extend(access_families(status));
        // The encoder refuses a family without samples (and then writes
        // nothing after it): a counter that has not counted yet is left out.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `crmguard_audit_events_total{type}` and `crmguard_audit_write_errors_total`.
fn audit_families(status: &Status) -> [MetricFamily; 2] {
    let counter = |value: u64, labels: Vec<LabelPair>| {
        let mut counter = Counter::default();
        // Prometheus counters are floats; 2^53 records is far away.
        counter.set_value(value as f64);
        let mut metric = Metric::default();
        metric.set_label(labels);
        metric.set_counter(counter);
        metric
    };
    let family = |name: &str, help: &str| {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(MetricType::COUNTER);
        family
    };
    let mut events = family(
        "crmguard_audit_events_total",
        "Audit records written, by type",
    );
    for (kind, n) in &status.audit_events {
        events
            .mut_metric()
            .push(counter(*n, vec![label("type", kind)]));
    }
    let mut errors = family(
        "crmguard_audit_write_errors_total",
        "Audit records that could not be written",
    );
    errors
        .mut_metric()
        .push(counter(status.audit_write_errors, Vec::new()));
    [events, errors]
}

/// `crmguard_mfa_attempts_total{result}` and `crmguard_vpn_key_expiry_seconds{peer}`.
fn access_families(status: &Status) -> [MetricFamily; 2] {
    let mut attempts = MetricFamily::default();
    attempts.set_name("crmguard_mfa_attempts_total".to_owned());
    attempts.set_help("MFA codes tried at the portal, by result".to_owned());
    attempts.set_field_type(MetricType::COUNTER);
    for (result, n) in &status.mfa_attempts {
        let mut counter = Counter::default();
        // Prometheus counters are floats; 2^53 attempts is far away.
        counter.set_value(*n as f64);
        let mut metric = Metric::default();
        metric.set_label(vec![label("result", result)]);
        metric.set_counter(counter);
        attempts.mut_metric().push(metric);
    }
    let mut expiry = MetricFamily::default();
    expiry.set_name("crmguard_vpn_key_expiry_seconds".to_owned());
    expiry.set_help(
        "Seconds until the peer's key reaches vpn.key_max_age and is refused (negative once refused)"
            .to_owned(),
    );
    expiry.set_field_type(MetricType::GAUGE);
    for (peer, secs) in &status.key_expiry {
        let mut gauge = Gauge::default();
        // Seconds of a key's life fit a float exactly.
        gauge.set_value(*secs as f64);
        let mut metric = Metric::default();
        metric.set_label(vec![label("peer", peer)]);
        metric.set_gauge(gauge);
        expiry.mut_metric().push(metric);
    }
    [attempts, expiry]
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn counter_family(
    name: &str,
    help: &str,
    status: &Status,
    value: impl Fn(&control::CounterStatus) -> u64,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(MetricType::COUNTER);
    for c in &status.counters {
        let mut counter = Counter::default();
        // Prometheus counters are floats; 2^53 packets is far away.
        counter.set_value(value(c) as f64);
        let mut metric = Metric::default();
        metric.set_label(vec![
            label("interface", &c.interface),
            label("action", &c.action),
            label("reason", &c.reason),
        ]);
        metric.set_counter(counter);
        family.mut_metric().push(metric);
    }
    family
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })
}

/// Serves `/metrics` until the daemon goes away.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    commands: mpsc::Sender<Command>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let commands = commands.clone();
        tokio::spawn(async move {
            let _ = handle(stream, &metrics, &commands).await;
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    commands: &mpsc::Sender<Command>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let path = loop {
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read(&mut buf[len..]),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (request.method == Some("GET"))
                    .then(|| request.path.unwrap_or("").to_owned());
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => break None,
        }
    };
    let (code, content_type, body) = match path.as_deref() {
        Some("/metrics") => match control::ask(commands, Request::Status).await {
            Response::Status(status) => (
                "200 OK",
                "text/plain; version=0.0.4",
                metrics.render(&status),
            ),
            other => (
                "503 Service Unavailable",
                "text/plain",
                format!("{other:?}\n"),
            ),
        },
        Some(_) => (
            "404 Not Found",
            "text/plain",
            "crmguard serves /metrics\n".to_owned(),
        ),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BanStatus, CounterStatus, InterfaceStatus};

    #[test]
    fn renders_the_contract_names() {
        let metrics = Metrics::new().expect("metrics");
        let status = Status {
            version: "0".into(),
            config: "test".into(),
            mode: "enforce".into(),
            generation: 3,
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
                adopted: false,
                egress: Some("tcx".into()),
            }],
            counters: vec![CounterStatus {
                interface: "eth0".into(),
                action: "drop".into(),
                reason: "default_drop".into(),
                packets: 5,
                bytes: 300,
            }],
            bans: vec![BanStatus {
                net: "203.0.113.7/32".parse().expect("net"),
                expires: None,
                reason: "free text that is never a label".into(),
                source: "admin:alice".into(),
                created: "2025-01-01T00:00:00.000000Z".into(),
            }],
            policy_divergence_entries: 0,
            drop_events_total: 0,
            recent_drops: Vec::new(),
            audit_events: [("agent_start".to_owned(), 1)].into(),
            audit_write_errors: 0,
            vpn: None,
            mfa_attempts: [("ok".to_owned(), 2), ("wrong".to_owned(), 1)].into(),
            mfa_sessions: Default::default(),
            key_expiry: [("alice-laptop".to_owned(), -5)].into(),
            portal: None,
        };
        metrics.ban_added("manual");
        metrics.ban_added("manual");
        metrics.ban_added("auth_failures");
        let text = metrics.render(&status);
        for line in [
            "crmguard_build_info{version=",
            "crmguard_xdp_attached{interface=\"eth0\",mode=\"native\"} 1",
            "crmguard_policy_generation 3",
            "crmguard_policy_divergence_entries 0",
            "crmguard_audit_events_total{type=\"agent_start\"} 1",
            "crmguard_audit_write_errors_total 0",
            "crmguard_xdp_packets_total{interface=\"eth0\",action=\"drop\",reason=\"default_drop\"} 5",
            "crmguard_xdp_bytes_total{interface=\"eth0\",action=\"drop\",reason=\"default_drop\"} 300",
            "# TYPE crmguard_xdp_packets_total counter",
            "crmguard_bans_active 1",
            "# TYPE crmguard_bans_total counter",
            "crmguard_bans_total{reason=\"manual\"} 2",
            "crmguard_bans_total{reason=\"auth_failures\"} 1",
            "crmguard_mfa_attempts_total{result=\"ok\"} 2",
            "crmguard_mfa_attempts_total{result=\"wrong\"} 1",
            "# TYPE crmguard_vpn_key_expiry_seconds gauge",
            "crmguard_vpn_key_expiry_seconds{peer=\"alice-laptop\"} -5",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("free text"), "{text}");
        assert!(!text.contains("203.0.113.7"), "{text}");
    }
}
