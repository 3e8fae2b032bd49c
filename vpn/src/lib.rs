//! The WireGuard endpoint (layer 2 of the product contract): peers' sessions, the UDP socket and
//! the TUN device, and the pure pieces it calls: the answers to packets the identity ACL denies
//! (`reject`) and the text of the WireGuard configuration protocol (`uapi`).
//!
//! - `endpoint`: the running endpoint and its threads (the agent's own IO around the core).
//! - `tunnel`: the sans-IO core: what each datagram, TUN packet and timer tick does (boringtun's
//!   `noise::Tunn` per peer, the source check, the ACL), as actions for the threads to carry out.
//! - `peers`: pure; which peers are admitted, and the peer table with its global allowed-IPs map.
//! - `udp`, `tun`: the one UDP socket (batched, GSO/GRO) and the one TUN device (offloads).
//! - `hints`: the peer that last authenticated from each address, which spares a handshake
//!   initiation from there one Diffie-Hellman exchange.
//! - `keys`: the private key file. `state`: the remembered peer endpoints.
//! - `uapi_server`: `/var/run/wireguard/<interface>.sock` for `wg show`.
//! - `status`: what `status` and `/metrics` show. `supervisor`: starts, restarts and updates
//!   the endpoint for the daemon.

pub mod endpoint;
mod handoff;
mod hints;
pub mod state;
pub mod status;
mod supervisor;
mod tun;
pub mod tunnel;
pub mod uapi;
mod uapi_server;
mod udp;

pub use endpoint::{Endpoint, Settings, VpnError};
pub use supervisor::Supervisor;

/// The TUN device's name unless [`INTERFACE_ENV`] says otherwise.
pub const DEFAULT_INTERFACE: &str = "crmguard0";

/// The environment variable that renames the TUN device. The WireGuard tools find userspace
/// devices by name in `/var/run/wireguard`, which is shared by every network namespace, so
/// several agents on one machine (the test suite runs one per namespace) need distinct names.
pub const INTERFACE_ENV: &str = "CRMGUARD_VPN_INTERFACE";

/// The TUN device's name: `$CRMGUARD_VPN_INTERFACE` when it is a valid interface name,
/// `crmguard0` otherwise. Read once per process.
pub fn interface_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| match std::env::var(INTERFACE_ENV) {
        Ok(name) if valid_interface_name(&name) => name,
        Ok(name) => {
            tracing::warn!(%name, "{INTERFACE_ENV} is not a valid interface name; using {DEFAULT_INTERFACE}");
            DEFAULT_INTERFACE.to_owned()
        }
        Err(_) => DEFAULT_INTERFACE.to_owned(),
    })
    .clone()
}

fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crmguard_core::config::MAX_INTERFACE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "."
        && name != ".."
}
