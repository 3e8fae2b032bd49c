//! A paced flood of Ethernet frames from random (spoofed) source addresses, written onto an
//! interface by a thread of its own.
//!
//! Each frame is one of a few templates, built once, with a fresh random source written in:
//! - IPv4: a source in public space (1.0.0.0 to 223.255.255.255), the header checksum made
//!   right again and the UDP checksum cleared (optional over IPv4), so that what a firewall
//!   admits of a datagram reaches the socket behind it. A TCP checksum goes stale;
//! - IPv6: the 80 bits after 2001:db8:ffff::/48. Upper-layer checksums go stale.
//!
//! Templates are untagged frames (the IP header at byte 14, IPv4 without options), as
//! [`crate::net::udp_frame`] and [`crate::net::tcp_syn_frame`] build them with
//! [`crate::net::Vlan::Untagged`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::net::RawSocket;

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const IPV4_HEADER: usize = 20;
const UDP: u8 = 17;
/// Frames sent between two looks at the clock and the stop flag.
const BURST: u64 = 256;

/// How fast, how many and how long.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Frames a second.
    pub per_second: u64,
    /// The flood does not stop before this many frames were sent, unless `longest` is over.
    pub at_least: u64,
    /// The flood stops after this long, stopped or not.
    pub longest: Duration,
}

/// A running flood; it stops when dropped.
pub struct SpoofedFlood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl SpoofedFlood {
    /// Starts sending `templates` (picked at random, each with a random source) through `raw`.
    pub fn start(raw: RawSocket, templates: Vec<Vec<u8>>, pace: Pace) -> Result<SpoofedFlood> {
        if templates.is_empty() {
            bail!("a flood needs at least one frame template");
        }
        let mut templates = templates
            .into_iter()
            .map(Template::new)
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("spoofed-flood".to_owned())
                .spawn(move || run(&raw, &mut templates, pace, &stop))
                .context("starting the flood thread")?
        };
        Ok(SpoofedFlood {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the flood is over (its minimum sent and stopped, or its time up).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks the flood to stop once it has sent its minimum, and returns at once.
    pub fn ask_to_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Asks the flood to stop once it has sent its minimum, waits for it and returns the frames
    /// sent.
    pub fn stop(mut self) -> Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> Result<u64> {
        self.ask_to_stop();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for SpoofedFlood {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn run(raw: &RawSocket, templates: &mut [Template], pace: Pace, stop: &AtomicBool) -> Result<u64> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0u64;
    let started = Instant::now();
    let deadline = started + pace.longest;
    let per_second = pace.per_second.max(1) as f64;
    while (sent < pace.at_least || !stop.load(Ordering::Relaxed)) && Instant::now() < deadline {
        // Paced, so that the generator, which shares the machine with what it floods, does
        // not measure mostly its own share of the CPUs.
        let due = started + Duration::from_secs_f64(sent as f64 / per_second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for _ in 0..BURST {
            let r = rng.next();
            let at = usize::try_from(r % templates.len() as u64)?;
            let template = &mut templates[at];
            template.spoof(r, &mut rng);
            // A full queue on the interface drops the frame before anything sees it: not
            // counted.
            if raw.send(&template.frame).is_ok() {
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// One frame and its family.
struct Template {
    frame: Vec<u8>,
    v4: bool,
}

impl Template {
    fn new(frame: Vec<u8>) -> Result<Template> {
        let ethertype = frame
            .get(12..14)
            .context("a template shorter than Ethernet")?;
        let (v4, header) = if ethertype == ETHERTYPE_IPV4 {
            (true, IPV4_HEADER)
        } else if ethertype == ETHERTYPE_IPV6 {
            (false, 40)
        } else {
            bail!("a template is neither untagged IPv4 nor IPv6");
        };
        if frame.len() < ETH_HEADER + header {
            bail!("a template of {} bytes has no whole IP header", frame.len());
        }
        if v4 && frame[ETH_HEADER] != 0x45 {
            bail!("an IPv4 template has options");
        }
        Ok(Template { frame, v4 })
    }

    /// Writes a random source into the frame, from `r` and, for IPv6, `rng`.
    fn spoof(&mut self, r: u64, rng: &mut Rng) {
        let f = &mut self.frame;
        if self.v4 {
            let public = u32::try_from(r >> 32).unwrap_or(0) % (223 << 24) + (1 << 24);
            f[26..30].copy_from_slice(&public.to_be_bytes());
            ipv4_checksum(&mut f[ETH_HEADER..ETH_HEADER + IPV4_HEADER]);
            if f[ETH_HEADER + 9] == UDP && f.len() >= ETH_HEADER + IPV4_HEADER + 8 {
                f[40..42].copy_from_slice(&[0, 0]);
            }
        } else {
            // The source is bytes 22..38; the /48 is its first six.
            f[28..30].copy_from_slice(&r.to_be_bytes()[..2]);
            f[30..38].copy_from_slice(&rng.next().to_be_bytes());
        }
    }
}

/// Writes the checksum of an IPv4 header without options (RFC 1071).
fn ipv4_checksum(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !u16::try_from(sum).unwrap_or(0);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
}

/// xorshift64*: random enough for addresses, and fast.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{udp_frame, Vlan, L2};
    use std::net::SocketAddr;

    fn l2() -> L2 {
        L2 {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan: Vlan::Untagged,
        }
    }

    #[test]
    fn a_spoofed_ipv4_datagram_has_a_public_source_and_a_valid_header() -> Result<()> {
        let frame = udp_frame(
            &l2(),
            SocketAddr::from(([1, 0, 0, 1], 40000)),
            SocketAddr::from(([10, 0, 0, 1], 51820)),
            &[1, 0, 0, 0, 9, 9],
        )?;
        let mut template = Template::new(frame)?;
        let mut rng = Rng(7);
        let mut sources = std::collections::HashSet::new();
        for _ in 0..1000 {
            let r = rng.next();
            template.spoof(r, &mut rng);
            let f = &template.frame;
            let first = f[26];
            assert!((1..=223).contains(&first), "source {first}.x.x.x");
            sources.insert(u32::from_be_bytes([f[26], f[27], f[28], f[29]]));
            let parsed = etherparse::Ipv4HeaderSlice::from_slice(&f[14..34])?;
            assert_eq!(
                parsed.header_checksum(),
                parsed.to_header().calc_header_checksum()
            );
            assert_eq!(&f[40..42], &[0, 0], "the UDP checksum is cleared");
            assert_eq!(&f[42..], &[1, 0, 0, 0, 9, 9], "the payload is kept");
        }
        assert!(
            sources.len() > 990,
            "only {} distinct sources",
            sources.len()
        );
        Ok(())
    }

    #[test]
    fn a_spoofed_ipv6_frame_keeps_its_prefix() -> Result<()> {
        let prefix = [0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1];
        let frame = udp_frame(
            &l2(),
            SocketAddr::from((std::net::Ipv6Addr::from(prefix), 40000)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 51820)),
            &[1],
        )?;
        let mut template = Template::new(frame)?;
        let mut rng = Rng(9);
        let r = rng.next();
        template.spoof(r, &mut rng);
        assert_eq!(
            &template.frame[22..28],
            &[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff]
        );
        assert_ne!(&template.frame[28..38], &[0; 10]);
        Ok(())
    }

    #[test]
    fn templates_that_are_not_plain_ip_are_refused() {
        assert!(Template::new(vec![0; 10]).is_err());
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(Template::new(arp).is_err());
    }
}
