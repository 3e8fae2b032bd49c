//! The endpoint's TUN device (`crmguard0`): the gateway's side of the tunnel, carrying
//! `[vpn] address` and `address6`.
//!
//! Opened with offloads (`IFF_VNET_HDR`, TSO and USO): a read may return a TCP or UDP
//! super-packet that is split into MTU-sized packets here, and the packets written in one batch
//! are coalesced back into super-packets where they belong to one flow, so the kernel's stack
//! handles a few large packets instead of many small ones. One reader and one writer thread;
//! the queue towards the reader is long so bursts are not dropped.

use std::io;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use nix::poll::PollFlags;
use tun_rs::{DeviceBuilder, GROTable, SyncDevice};

pub use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// The tunnel MTU: 1500 less the IPv6, UDP and WireGuard overhead (80 bytes), as WireGuard
/// clients assume.
pub const MTU: u16 = 1420;

/// The queue of packets the kernel holds for the reader.
const TX_QUEUE_LEN: u32 = 10_000;

/// Room in front of every packet written, for the virtio header.
pub const WRITE_OFFSET: usize = VIRTIO_NET_HDR_LEN;

pub struct Tun {
    device: SyncDevice,
    offload: bool,
}

impl Tun {
    /// Creates the device `name` with the gateway's addresses and brings it up.
    pub fn create(name: &str, address: Ipv4Net, address6: Option<Ipv6Net>) -> io::Result<Tun> {
        let build = |offload: bool| {
            DeviceBuilder::new()
                .name(name)
                .mtu(MTU)
                .ipv4(address.addr(), address.prefix_len(), None)
                .with(|b| {
                    b.offload(offload).tx_queue_len(TX_QUEUE_LEN);
                })
                .enable(true)
                .build_sync()
        };
        let (device, offload) = match build(true) {
            Ok(device) => (device, true),
            Err(e) => {
                tracing::warn!(error = %e, interface = name, "the TUN device refused offloads; the VPN runs without them (slower)");
                (build(false)?, false)
            }
        };
        if let Some(v6) = address6 {
            device.add_address_v6(v6.addr(), v6.prefix_len())?;
        }
        // Reads drain the device until it is empty; waiting is done with poll.
        device.set_nonblocking(true)?;
        Ok(Tun { device, offload })
    }

    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Waits up to `timeout` for packets; true when some are there.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        super::udp::wait(&self.device, PollFlags::POLLIN, timeout)
    }

    /// Reads one packet or super-packet and splits it into `bufs` (each packet at offset 0,
    /// its length in `sizes`). `scratch` must hold `VIRTIO_NET_HDR_LEN + 65535` bytes.
    pub fn recv(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.device.recv_multiple(scratch, bufs, sizes, 0)
    }

    /// Writes a batch of packets, each at [`WRITE_OFFSET`] in its buffer, coalescing those of
    /// one flow.
    pub fn send(&self, gro: &mut GROTable, bufs: &mut [Vec<u8>]) -> io::Result<usize> {
        if bufs.is_empty() {
            return Ok(0);
        }
        self.device.send_multiple(gro, bufs, WRITE_OFFSET)
    }
}
