//! Round-trip time through a tunnel: `ping` from the client's namespace to the gateway's tunnel
//! address, alone and during a bulk transfer, as median and 99th percentile. It shows what the
//! gateway's batching costs a packet that is not part of the bulk (an interactive session, a
//! query) while the tunnel is busy.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use crmguard_lab::netns::NetNs;

use crate::vpn::percentile;

/// Probes per measurement.
pub(crate) const PROBES: u32 = 200;
/// Seconds between probes, as `ping -i` takes it.
pub(crate) const INTERVAL: &str = "0.01";
/// How long all the probes take, in whole seconds, rounded up.
pub(crate) const PROBING_S: u32 = 2;

/// Median and 99th percentile of the probes' round trips, in milliseconds; how many of the
/// probes came back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rtt {
    pub median_ms: f64,
    pub p99_ms: f64,
    pub answered: usize,
}

/// Pings `target` from `ns` [`PROBES`] times, [`INTERVAL`] apart.
pub(crate) fn probe(ns: &NetNs, target: &str) -> Result<Rtt> {
    let mut ping = ns.command("ping");
    ping.args([
        "-n",
        "-i",
        INTERVAL,
        "-W",
        "1",
        "-c",
        &PROBES.to_string(),
        target,
    ])
    .stdin(Stdio::null());
    let out = ping.output().context("cannot run ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    summarize(&times(&text))
        .with_context(|| format!("ping {target} got no answers ({})", out.status))
}

/// The `time=` of each answer in `ping`'s output, in milliseconds.
fn times(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(" time=")?.1;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn summarize(times: &[f64]) -> Result<Rtt> {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (Some(median_ms), Some(p99_ms)) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0))
    else {
        bail!("no answers");
    };
    Ok(Rtt {
        median_ms,
        p99_ms,
        answered: sorted.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_from_pings_output_and_lost_ones_are_left_out() {
        let output = "PING 10.77.0.1 (10.77.0.1) 56(84) bytes of data.\n\
            64 bytes from 10.77.0.1: icmp_seq=1 ttl=64 time=0.412 ms\n\
            64 bytes from 10.77.0.1: icmp_seq=3 ttl=64 time=1.93 ms\n\
            \n--- 10.77.0.1 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 20ms\n\
            rtt min/avg/max/mdev = 0.412/1.171/1.930/0.759 ms\n";
        assert_eq!(times(output), vec![0.412, 1.93]);
    }

    #[test]
    fn the_median_and_the_99th_percentile_are_probes_that_were_measured() {
        let times: Vec<f64> = (1..=200).map(f64::from).collect();
        let rtt = summarize(&times).expect("200 probes");
        assert_eq!(rtt.median_ms, 100.0);
        assert_eq!(rtt.p99_ms, 198.0);
        assert_eq!(rtt.answered, 200);
        assert_eq!(summarize(&[3.0]).expect("one probe").p99_ms, 3.0);
        assert!(summarize(&[]).is_err());
    }
}
