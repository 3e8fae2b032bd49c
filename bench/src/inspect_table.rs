//! The memory of inspection's flow table when full: `max_flows` TCP connections opened by
//! peers, each a SYN and the server's SYN-ACK, held by one `Inspector` in this process, and
//! the resident memory it took (from /proc/self/status, before and after). And the cost of
//! the common packet: one of a flow inspection has decided, timed in this process.

use std::time::Instant;

use anyhow::{Context, Result};
use crmguard_core::config::default_policy;
use crmguard_inspect::{Dir, InspectMetrics, Inspector, Policy, Tick};

/// What filling the table cost.
#[derive(Debug, Clone, Copy)]
pub struct TableMemory {
    pub flows: usize,
    pub rss_growth_kib: u64,
    pub bytes_per_flow: f64,
    pub fill_seconds: f64,
}

/// Fills a table of `max_flows` and measures it.
pub fn measure(max_flows: u32, decided: bool) -> Result<TableMemory> {
    let mut config = default_policy().inspection;
    config.max_flows = max_flows;
    let policy = Policy::new(&config);
    let before = rss_kib()?;
    let inspector = Inspector::new(
        max_flows,
        InspectMetrics::unregistered()?,
        Box::new(crmguard_inspect::event::Discard),
    );
    let tick = Tick { secs: 1, unix: 0 };
    let started = Instant::now();
    let mut packet = [0u8; 41];
    let service = if decided { 9999 } else { 5432 };
    for i in 0..max_flows {
        // Peers 10.64.0.0/10, ports from 1024: every flow distinct.
        let peer = 0x0a40_0000 | (i >> 6);
        let port = u16::try_from(1024 + (i & 63)).unwrap_or(1024);
        segment(&mut packet, peer, 0x0a4d_0001, port, service, 0x02, None);
        inspector.packet(&policy, Dir::FromPeer, "bench", &packet[..40], tick);
        segment(&mut packet, 0x0a4d_0001, peer, service, port, 0x12, None);
        inspector.packet(&policy, Dir::ToPeer, "bench", &packet[..40], tick);
        if decided {
            segment(
                &mut packet,
                peer,
                0x0a4d_0001,
                port,
                service,
                0x18,
                Some(0xee),
            );
            inspector.packet(&policy, Dir::FromPeer, "bench", &packet, tick);
        }
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let flows = inspector.status(&policy).flows;
    let after = rss_kib()?;
    let growth = after.saturating_sub(before);
    drop(inspector);
    Ok(TableMemory {
        flows,
        rss_growth_kib: growth,
        bytes_per_flow: (growth * 1024) as f64 / flows.max(1) as f64,
        fill_seconds,
    })
}

/// The time `Inspector::packet` takes for a packet of a decided flow, averaged over
/// `packets`: a data segment to the peer and the peer's bare ACK, in turn, as a download
/// through the tunnel gives them.
pub fn per_packet_ns(packets: u32) -> Result<f64> {
    let config = default_policy().inspection;
    let policy = Policy::new(&config);
    let inspector = Inspector::new(
        config.max_flows,
        InspectMetrics::unregistered()?,
        Box::new(crmguard_inspect::event::Discard),
    );
    let tick = Tick { secs: 1, unix: 0 };
    let (peer, gateway, port, service) = (0x0a40_0002, 0x0a4d_0001, 40_000, 9999);
    let mut syn = [0u8; 41];
    let mut syn_ack = [0u8; 41];
    let mut data = [0u8; 41];
    let mut ack = [0u8; 41];
    segment(&mut syn, peer, gateway, port, service, 0x02, None);
    segment(&mut syn_ack, gateway, peer, service, port, 0x12, None);
    segment(&mut data, gateway, peer, service, port, 0x18, Some(0x55));
    segment(&mut ack, peer, gateway, port, service, 0x10, None);
    let mut request = [0u8; 41];
    segment(&mut request, peer, gateway, port, service, 0x18, Some(0xee));
    // The handshake, then the client's first byte: the flow is decided (no known protocol).
    inspector.packet(&policy, Dir::FromPeer, "bench", &syn[..40], tick);
    inspector.packet(&policy, Dir::ToPeer, "bench", &syn_ack[..40], tick);
    inspector.packet(&policy, Dir::FromPeer, "bench", &request, tick);
    if inspector.status(&policy).flows != 1 {
        anyhow::bail!("the flow was not taken into the table");
    }
    let started = Instant::now();
    for _ in 0..packets / 2 {
        std::hint::black_box(inspector.packet(&policy, Dir::ToPeer, "bench", &data, tick));
        std::hint::black_box(inspector.packet(&policy, Dir::FromPeer, "bench", &ack[..40], tick));
    }
    Ok(started.elapsed().as_nanos() as f64 / f64::from(packets / 2 * 2).max(1.0))
}

/// An IPv4 TCP segment of 40 bytes, or 41 with one byte of payload (checksums are not read by
/// inspection). The payload rides at sequence number 1001, after a SYN at 1000.
fn segment(
    out: &mut [u8; 41],
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: Option<u8>,
) {
    out.fill(0);
    out[0] = 0x45;
    let len: u16 = if payload.is_some() { 41 } else { 40 };
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out[8] = 64;
    out[9] = 6;
    out[12..16].copy_from_slice(&src.to_be_bytes());
    out[16..20].copy_from_slice(&dst.to_be_bytes());
    out[20..22].copy_from_slice(&sport.to_be_bytes());
    out[22..24].copy_from_slice(&dport.to_be_bytes());
    let seq: u32 = if payload.is_some() { 1001 } else { 1000 };
    out[24..28].copy_from_slice(&seq.to_be_bytes());
    out[32] = 5 << 4;
    out[33] = flags;
    if let Some(byte) = payload {
        out[40] = byte;
    }
}

fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

#[cfg(test)]
mod tests {
    use super::{measure, per_packet_ns};

    #[test]
    fn a_decided_flows_packets_are_timed() {
        let ns = per_packet_ns(200_000).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(ns > 0.0);
    }

    #[test]
    fn a_table_fills_to_its_bound_in_both_shapes() {
        for decided in [false, true] {
            let t = measure(20_000, decided).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(t.flows, 20_000, "decided {decided}");
        }
    }
}
