//! Peer provisioning: what `crmguard peer add`, `peer remove`, `peer disable`, `peer enable` and
//! `peer list` do to the peers file, and what they print for a new client.
//!
//! This module owns the peers file (`[vpn] peers_file`) as a document that crmguard edits:
//! reading it, adding or re-keying a peer with the next free tunnel address, removing, enabling
//! and disabling peers, and writing it back atomically (mode 0600). It also renders the
//! wg-quick configuration and the terminal QR code handed to a user whose key crmguard
//! generated, and computes the facts `peer list` shows (key age, time left until the key
//! expires) and which peers the agent disables for inactivity.
//!
//! - `document`: [`PeersFile`], its parser and its TOML text.
//! - `edit`: adding, re-keying, removing, enabling and disabling peers; address allocation.
//! - `client`: the client's wg-quick file and the terminal QR code.
//! - `enabled`: when peers were last enabled (`state_dir/peers-enabled.json`).
//! - `lifecycle`: key expiry and inactivity, all pure (the `peer list` rows are
//!   `crmguard::access::listing` in the binary).
//!
//! Peers written inline in `crmguard.toml` are the operator's hand-written configuration: this
//! module refuses to change them and points at the configuration file instead. The checks of
//! the configuration loader ([`crate::config::load`]) still apply to the peers file on every
//! load and reload; this module checks only what it needs to edit the file safely. Starting
//! from a configuration and peers file that the loader accepts, every edit here leaves a file
//! that it accepts too.
//!
//! Only `document` does IO (reading and writing the peers file). Nothing here talks to the
//! running agent, reads the clock or logs a private key: callers pass the time and decide what
//! to tell the agent.

#![forbid(unsafe_code)]

mod client;
mod document;
mod edit;
mod enabled;
mod lifecycle;

use std::path::PathBuf;

use crate::config::{ConfigErrors, MAX_NAME_LEN};

pub use client::{
    client_config, qr_terminal, valid_endpoint_host, ClientParams, PERSISTENT_KEEPALIVE,
};
pub use document::PeersFile;
pub use edit::Added;
pub use enabled::{load_enabled_at, record_enabled};
pub use lifecycle::{inactive_peers, key_expired, key_expires_at, seconds_until};

/// Why a peers-file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The peers file exists but cannot be read.
    #[error("cannot read the peers file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The peers file is not a list of well-formed `[[peer]]` tables.
    #[error("the peers file is not valid")]
    Invalid {
        #[source]
        source: ConfigErrors,
    },
    /// The peers file cannot be written.
    #[error("cannot write the peers file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration has no `[vpn]` section, so there is no tunnel to add peers to.
    #[error("the configuration has no [vpn] section, so crmguard has no WireGuard peers")]
    NoVpn,
    /// The name is not a valid peer name.
    #[error(
        "`{name}` is not a peer name of 1 to {MAX_NAME_LEN} characters from A-Z, a-z, 0-9, `.`, `_` and `-`"
    )]
    InvalidName { name: String },
    /// The role is not configured.
    #[error("unknown role `{role}`; {known}")]
    UnknownRole {
        role: String,
        /// The configured roles, as the message shows them.
        known: String,
    },
    /// Another peer already uses the public key.
    #[error("the public key is already used by peer `{owner}`")]
    DuplicateKey { owner: String },
    /// The public key is a low-order point (see [`crate::keys::is_low_order`]).
    #[error("the public key is a low-order point of Curve25519, which cannot authenticate a device; make a new key pair")]
    LowOrderKey,
    /// The peer is written inline in the configuration file, which crmguard does not edit.
    #[error(
        "peer `{name}` is defined by a [[peer]] table in the configuration file, not in the peers file {peers_file}; change it there"
    )]
    InlinePeer { name: String, peers_file: PathBuf },
    /// No peer has this name.
    #[error("no peer named `{name}` in the configuration or the peers file {peers_file}")]
    UnknownPeer { name: String, peers_file: PathBuf },
    /// Every peer address of the tunnel subnet is taken.
    #[error("no free peer address left in {subnets}; remove unused peers or widen vpn.address")]
    SubnetFull {
        /// The tunnel subnet(s), as the message shows them.
        subnets: String,
    },
    /// `peer add` for an existing peer with the key it already has.
    #[error("peer `{name}` already has this key; re-keying needs a new key pair from the device (or omit --public-key to generate one)")]
    SameKey { name: String },
    /// The system clock gives no calendar date crmguard can write (before 1970 or after 9999).
    #[error("the system clock is not set to a date between 1970 and 9999")]
    Clock,
    /// The text does not fit in a QR code.
    #[error("cannot draw the QR code")]
    QrCode {
        #[source]
        source: qrcode::types::QrError,
    },
}

/// Whether `name` is a valid peer name: 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._-]`, the
/// rule the configuration loader applies to every peer, role and service name.
pub fn valid_peer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::valid_peer_name;

    #[test]
    fn peer_names() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        for (name, valid) in [
            ("alice-laptop", true),
            ("a.b_c-D9", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("bob laptop", false),
            ("bob/laptop", false),
            ("émile", false),
            ("a\"b", false),
        ] {
            assert_eq!(valid_peer_name(name), valid, "{name:?}");
        }
    }
}
