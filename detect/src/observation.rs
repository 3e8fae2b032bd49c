//! What the daemon feeds the detectors: one timestamped fact at a time.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

/// One fact, with the wall-clock time it happened. The detectors read no clock: windows and
/// rate limits are measured between the times of observations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub at: SystemTime,
    pub input: Input,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A failed login. From inspection, `source` is the peer's tunnel address and `peer` names
    /// it; from a `[[detection.log_source]]`, `peer` is `None` and `protocol` is the log
    /// source's name.
    LoginFailure {
        source: IpAddr,
        peer: Option<String>,
        protocol: String,
        service: Option<String>,
        user: Option<String>,
    },
    /// A packet from outside that the XDP filter dropped (a sample of them).
    Dropped {
        source: IpAddr,
        dst_port: u16,
        /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP); others carry no port.
        proto: u8,
    },
    /// A completed WireGuard handshake of a peer from `endpoint`.
    Handshake { peer: String, endpoint: SocketAddr },
    /// A peer's cumulative byte counters, from the gateway's point of view: `rx_total` is what
    /// the peer sent, `tx_total` what the gateway sent to it. A value lower than the previous
    /// one means the counters started again from zero.
    PeerBytes {
        peer: String,
        rx_total: u64,
        tx_total: u64,
    },
    /// The identity ACL refused a peer's connection to a service; `reason` is the ACL's
    /// reason name (`outside_hours` when the role's `hours` do not cover the moment).
    AclDenied {
        peer: String,
        service: String,
        reason: String,
    },
}
