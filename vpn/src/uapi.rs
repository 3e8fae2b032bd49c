//! The WireGuard cross-platform configuration protocol (<https://www.wireguard.com/xplatform/>),
//! as `wg(8)` speaks it over `/var/run/wireguard/<interface>.sock`.
//!
//! A client sends `get=1\n\n` or `set=1\n` followed by `key=value` lines and a blank line. The
//! answer to `get` is the device's `key=value` lines; both operations end with `errno=N` and a
//! blank line. This module owns the text: [`format_get`] writes a `get` answer in the order and
//! spelling of wireguard-go (which `wg show` and `wg showconf` read), [`parse_set`] reads the
//! body of a `set`, [`format_errno`] writes the status line, and [`parse_get`] reads a `get`
//! answer back. It does no IO and applies nothing: the socket, permissions and the decision
//! whether crmguard accepts a `set` (it may refuse peers that are not in its configuration)
//! belong to the endpoint.
//!
//! Keys are secrets: no error and no `Debug` output of this module contains a private or
//! pre-shared key.

#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use ipnet::IpNet;

/// The protocol version every peer reports and the only one `set` accepts.
pub const PROTOCOL_VERSION: u32 = 1;

/// `EINVAL`: a key or value the device does not accept.
const EINVAL: i32 = 22;
/// `EPROTO`: a line that is not `key=value`.
const EPROTO: i32 = 71;

/// The state of the WireGuard device, as a `get` reports it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's private key; all zero means none, and is then not reported.
    pub private_key: [u8; 32],
    /// The UDP port; 0 means none, and is then not reported.
    pub listen_port: u16,
    /// The firewall mark of the UDP socket, if any (0 is reported as none).
    pub fwmark: Option<u32>,
    /// The peers, in the order they are reported.
    pub peers: Vec<PeerInfo>,
}

/// The state of one peer, as a `get` reports it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// The pre-shared key, if any (reported as all zero when there is none, as wireguard-go
    /// does).
    pub preshared_key: Option<[u8; 32]>,
    /// The address the peer was last heard from, if any.
    pub endpoint: Option<SocketAddr>,
    /// The peer's allowed IPs, reported with their host bits cleared.
    pub allowed_ips: Vec<IpNet>,
    /// When the last handshake completed, if ever (reported as zero otherwise).
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// The persistent keepalive interval in seconds; 0 means off.
    pub persistent_keepalive: u16,
}

/// One instruction of a `set`, in the order the client sent them. Every peer instruction applies
/// to the peer named by the last [`SetCommand::PublicKey`] before it; [`parse_set`] guarantees
/// that there is one, and that device instructions come before the first peer.
#[derive(Clone, PartialEq, Eq)]
pub enum SetCommand {
    /// `private_key`: the device's new private key, `None` (all zero) to remove it.
    PrivateKey(Option<[u8; 32]>),
    /// `listen_port`: the UDP port to listen on.
    ListenPort(u16),
    /// `fwmark`: the firewall mark of the UDP socket, 0 to clear it.
    Fwmark(u32),
    /// `replace_peers=true`: remove every peer before adding the ones that follow.
    ReplacePeers,
    /// `public_key`: the peer the following instructions apply to, created unless
    /// [`SetCommand::UpdateOnly`] follows.
    PublicKey([u8; 32]),
    /// `remove=true`: remove the current peer.
    Remove,
    /// `update_only=true`: change the current peer only if it exists.
    UpdateOnly,
    /// `preshared_key`: the current peer's pre-shared key, `None` (all zero) to remove it.
    PresharedKey(Option<[u8; 32]>),
    /// `endpoint`: the current peer's endpoint.
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval`: seconds, 0 to turn it off.
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`: remove the current peer's allowed IPs before adding the ones
    /// that follow.
    ReplaceAllowedIps,
    /// `allowed_ip`: add an allowed IP to the current peer.
    AllowedIp(IpNet),
}

/// Why a `set` body or a `get` answer was refused. Line numbers count from 1 within the text
/// given; no variant carries a value, since values may be keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    /// A line is not `key=value`.
    #[error("line {line}: expected key=value")]
    Syntax {
        /// The line number.
        line: usize,
    },
    /// A key the protocol does not know.
    #[error("line {line}: unknown key `{key}`")]
    UnknownKey {
        /// The line number.
        line: usize,
        /// The key as sent.
        key: String,
    },
    /// A peer key before any `public_key`.
    #[error("line {line}: `{key}` before any public_key")]
    PeerKeyWithoutPeer {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A device key after a `public_key`.
    #[error("line {line}: device key `{key}` after a public_key")]
    DeviceKeyInPeer {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A value the key does not accept.
    #[error("line {line}: invalid value for `{key}`")]
    Value {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// Text after the blank line that ends the operation.
    #[error("line {line}: text after the blank line that ends the operation")]
    Trailing {
        /// The line number.
        line: usize,
    },
    /// A `get` answer without its `errno` line.
    #[error("the answer has no errno line")]
    NoErrno,
    /// A `get` answer that reports an error.
    #[error("the device answered errno={errno}")]
    Remote {
        /// The number as sent (negative, as wireguard-go sends it).
        errno: i32,
    },
}

impl UapiError {
    /// The errno that describes this error to the client, positive: `EPROTO` for a line that is
    /// not `key=value`, `EINVAL` for the rest. Send it with [`format_errno`].
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Syntax { .. } => EPROTO,
            UapiError::Remote { errno } => errno.saturating_abs(),
            _ => EINVAL,
        }
    }
}

/// The status that ends every answer: `errno=0` and a blank line on success. `errno` is a
/// positive errno value (0 for success); it is written negated, as wireguard-go does, which is
/// what `wg` turns back into the error it prints.
pub fn format_errno(errno: i32) -> String {
    format!("errno={}\n\n", errno.saturating_neg())
}

/// The whole answer to `get=1`: the device, each peer, `errno=0` and the blank line.
///
/// Keys are lowercase hex. The order is wireguard-go's: `private_key`, `listen_port`, `fwmark`,
/// then for each peer `public_key`, `preshared_key`, `protocol_version`, `endpoint`,
/// `last_handshake_time_sec`, `last_handshake_time_nsec`, `tx_bytes`, `rx_bytes`,
/// `persistent_keepalive_interval` and its `allowed_ip` lines. The handshake time is absolute
/// Unix time; zero means never.
pub fn format_get(device: &DeviceInfo) -> String {
    let mut out = String::new();
    if device.private_key != [0; 32] {
        push_key(&mut out, "private_key", &device.private_key);
    }
    if device.listen_port != 0 {
        push_line(&mut out, "listen_port", device.listen_port);
    }
    if let Some(mark) = device.fwmark.filter(|mark| *mark != 0) {
        push_line(&mut out, "fwmark", mark);
    }
    for peer in &device.peers {
        push_key(&mut out, "public_key", &peer.public_key);
        push_key(
            &mut out,
            "preshared_key",
            &peer.preshared_key.unwrap_or([0; 32]),
        );
        push_line(&mut out, "protocol_version", PROTOCOL_VERSION);
        if let Some(endpoint) = peer.endpoint {
            push_line(&mut out, "endpoint", endpoint);
        }
        let since_epoch = peer
            .last_handshake
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        push_line(&mut out, "last_handshake_time_sec", since_epoch.as_secs());
        push_line(
            &mut out,
            "last_handshake_time_nsec",
            since_epoch.subsec_nanos(),
        );
        push_line(&mut out, "tx_bytes", peer.tx_bytes);
        push_line(&mut out, "rx_bytes", peer.rx_bytes);
        push_line(
            &mut out,
            "persistent_keepalive_interval",
            peer.persistent_keepalive,
        );
        for net in &peer.allowed_ips {
            push_line(&mut out, "allowed_ip", net.trunc());
        }
    }
    out.push_str(&format_errno(0));
    out
}

/// Parses the body of a `set` operation: the lines after `set=1`, up to and including the blank
/// line that ends it (the blank line may be missing at the end of `text`).
///
/// The values are checked as wireguard-go checks them: keys are 64 hex digits, numbers are
/// decimal digits within range, flags are exactly `true`, `protocol_version` is exactly `1` (and
/// yields no command), `endpoint` is a numeric `address:port` (IPv6 in brackets) and `allowed_ip`
/// an `address/prefix`.
pub fn parse_set(text: &str) -> Result<Vec<SetCommand>, UapiError> {
    let mut commands = Vec::new();
    let mut in_peer = false;
    for (line, key, value) in lines(text)? {
        let peer_key = move |key: &'static str| {
            if in_peer {
                Ok(())
            } else {
                Err(UapiError::PeerKeyWithoutPeer { line, key })
            }
        };
        let device_key = move |key: &'static str| {
            if in_peer {
                Err(UapiError::DeviceKeyInPeer { line, key })
            } else {
                Ok(())
            }
        };
        let command = match key {
            "private_key" => {
                device_key("private_key")?;
                SetCommand::PrivateKey(nonzero(parse_key(value).ok_or(UapiError::Value {
                    line,
                    key: "private_key",
                })?))
            }
            "listen_port" => {
                device_key("listen_port")?;
                SetCommand::ListenPort(parse_number(value).ok_or(UapiError::Value {
                    line,
                    key: "listen_port",
                })?)
            }
            "fwmark" => {
                device_key("fwmark")?;
                SetCommand::Fwmark(parse_number(value).ok_or(UapiError::Value {
                    line,
                    key: "fwmark",
                })?)
            }
            "replace_peers" => {
                device_key("replace_peers")?;
                parse_true(value, line, "replace_peers")?;
                SetCommand::ReplacePeers
            }
            "public_key" => {
                in_peer = true;
                SetCommand::PublicKey(parse_key(value).ok_or(UapiError::Value {
                    line,
                    key: "public_key",
                })?)
            }
            "remove" => {
                peer_key("remove")?;
                parse_true(value, line, "remove")?;
                SetCommand::Remove
            }
            "update_only" => {
                peer_key("update_only")?;
                parse_true(value, line, "update_only")?;
                SetCommand::UpdateOnly
            }
            "preshared_key" => {
                peer_key("preshared_key")?;
                SetCommand::PresharedKey(nonzero(parse_key(value).ok_or(UapiError::Value {
                    line,
                    key: "preshared_key",
                })?))
            }
            "endpoint" => {
                peer_key("endpoint")?;
                SetCommand::Endpoint(value.parse().map_err(|_| UapiError::Value {
                    line,
                    key: "endpoint",
                })?)
            }
            "persistent_keepalive_interval" => {
                peer_key("persistent_keepalive_interval")?;
                SetCommand::PersistentKeepalive(parse_number(value).ok_or(UapiError::Value {
                    line,
                    key: "persistent_keepalive_interval",
                })?)
            }
            "replace_allowed_ips" => {
                peer_key("replace_allowed_ips")?;
                parse_true(value, line, "replace_allowed_ips")?;
                SetCommand::ReplaceAllowedIps
            }
            "allowed_ip" => {
                peer_key("allowed_ip")?;
                SetCommand::AllowedIp(value.parse().map_err(|_| UapiError::Value {
                    line,
                    key: "allowed_ip",
                })?)
            }
            "protocol_version" => {
                peer_key("protocol_version")?;
                if value != "1" {
                    return Err(UapiError::Value {
                        line,
                        key: "protocol_version",
                    });
                }
                continue;
            }
            _ => {
                return Err(UapiError::UnknownKey {
                    line,
                    key: key.to_owned(),
                })
            }
        };
        commands.push(command);
    }
    Ok(commands)
}

/// Parses an answer to `get=1` as [`format_get`] writes it, up to and including the blank line.
///
/// Like `wg`, it ignores keys it does not know and treats an all-zero pre-shared key and a zero
/// handshake time as none. An answer whose `errno` is not 0 is [`UapiError::Remote`].
pub fn parse_get(text: &str) -> Result<DeviceInfo, UapiError> {
    let mut device = DeviceInfo {
        private_key: [0; 32],
        listen_port: 0,
        fwmark: None,
        peers: Vec::new(),
    };
    let mut errno = None;
    // The handshake time arrives in two lines; it is assembled into the peer's field as each
    // arrives.
    let mut handshake = (0u64, 0u32);
    for (line, key, value) in lines(text)? {
        let bad = |key: &'static str| UapiError::Value { line, key };
        let peer = device.peers.last_mut();
        match (key, peer) {
            ("errno", _) => {
                errno = Some(parse_signed(value).ok_or(bad("errno"))?);
            }
            ("private_key", None) => {
                device.private_key = parse_key(value).ok_or(bad("private_key"))?;
            }
            ("listen_port", None) => {
                device.listen_port = parse_number(value).ok_or(bad("listen_port"))?;
            }
            ("fwmark", None) => {
                device.fwmark = Some(parse_number(value).ok_or(bad("fwmark"))?).filter(|m| *m != 0);
            }
            ("public_key", _) => {
                handshake = (0, 0);
                device.peers.push(PeerInfo {
                    public_key: parse_key(value).ok_or(bad("public_key"))?,
                    preshared_key: None,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                });
            }
            ("preshared_key", Some(peer)) => {
                peer.preshared_key = nonzero(parse_key(value).ok_or(bad("preshared_key"))?);
            }
            ("protocol_version", Some(_))
                if parse_number::<u32>(value) != Some(PROTOCOL_VERSION) =>
            {
                return Err(bad("protocol_version"));
            }
            ("endpoint", Some(peer)) => {
                peer.endpoint = Some(value.parse().map_err(|_| bad("endpoint"))?);
            }
            ("last_handshake_time_sec", Some(peer)) => {
                handshake.0 = parse_number(value).ok_or(bad("last_handshake_time_sec"))?;
                peer.last_handshake = handshake_time(handshake);
            }
            ("last_handshake_time_nsec", Some(peer)) => {
                handshake.1 = parse_number(value)
                    .filter(|nanos| *nanos < 1_000_000_000)
                    .ok_or(bad("last_handshake_time_nsec"))?;
                peer.last_handshake = handshake_time(handshake);
            }
            ("tx_bytes", Some(peer)) => {
                peer.tx_bytes = parse_number(value).ok_or(bad("tx_bytes"))?;
            }
            ("rx_bytes", Some(peer)) => {
                peer.rx_bytes = parse_number(value).ok_or(bad("rx_bytes"))?;
            }
            ("persistent_keepalive_interval", Some(peer)) => {
                peer.persistent_keepalive =
                    parse_number(value).ok_or(bad("persistent_keepalive_interval"))?;
            }
            ("allowed_ip", Some(peer)) => {
                peer.allowed_ips
                    .push(value.parse().map_err(|_| bad("allowed_ip"))?);
            }
            _ => {}
        }
    }
    match errno {
        Some(0) => Ok(device),
        Some(errno) => Err(UapiError::Remote { errno }),
        None => Err(UapiError::NoErrno),
    }
}

/// The `key=value` lines of `text` up to the first blank line, numbered from 1. Anything but the
/// end of the text after the blank line is an error.
fn lines(text: &str) -> Result<Vec<(usize, &str, &str)>, UapiError> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let (current, after) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = after;
        if current.is_empty() {
            if rest.is_empty() {
                return Ok(out);
            }
            return Err(UapiError::Trailing { line: line + 1 });
        }
        let (key, value) = current.split_once('=').ok_or(UapiError::Syntax { line })?;
        out.push((line, key, value));
    }
    Ok(out)
}

fn handshake_time((seconds, nanos): (u64, u32)) -> Option<SystemTime> {
    if seconds == 0 && nanos == 0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

fn push_line(out: &mut String, key: &str, value: impl fmt::Display) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{key}={value}");
}

fn push_key(out: &mut String, key: &str, bytes: &[u8; 32]) {
    out.push_str(key);
    out.push('=');
    HEXLOWER.encode_append(bytes, out);
    out.push('\n');
}

/// 64 hex digits, either case.
fn parse_key(text: &str) -> Option<[u8; 32]> {
    if HEXLOWER_PERMISSIVE.decode_len(text.len()).ok()? != 32 {
        return None;
    }
    let mut key = [0u8; 32];
    HEXLOWER_PERMISSIVE
        .decode_mut(text.as_bytes(), &mut key)
        .ok()?;
    Some(key)
}

fn nonzero(key: [u8; 32]) -> Option<[u8; 32]> {
    (key != [0; 32]).then_some(key)
}

/// Decimal digits only (no sign, no spaces), within the type's range.
fn parse_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An optional minus sign and decimal digits.
fn parse_signed(text: &str) -> Option<i32> {
    match text.strip_prefix('-') {
        Some(digits) => parse_number::<i32>(digits).map(|n| -n),
        None => parse_number(text),
    }
}

fn parse_true(value: &str, line: usize, key: &'static str) -> Result<(), UapiError> {
    if value == "true" {
        Ok(())
    } else {
        Err(UapiError::Value { line, key })
    }
}

/// Writes keys as `<32-byte key>` so that no secret reaches a log through `{:?}`.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<32-byte key>")
    }
}

/// Public keys are not secret but long; they are shown as their first 4 bytes in hex.
struct ShortKey<'a>(&'a [u8; 32]);

impl fmt::Debug for ShortKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&HEXLOWER.encode(&self.0[..4]))?;
        f.write_str("…")
    }
}

impl fmt::Debug for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceInfo")
            .field("private_key", &Redacted)
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers)
            .finish()
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("public_key", &ShortKey(&self.public_key))
            .field("preshared_key", &self.preshared_key.map(|_| Redacted))
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("last_handshake", &self.last_handshake)
            .field("rx_bytes", &self.rx_bytes)
            .field("tx_bytes", &self.tx_bytes)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

impl fmt::Debug for SetCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetCommand::PrivateKey(key) => f
                .debug_tuple("PrivateKey")
                .field(&key.map(|_| Redacted))
                .finish(),
            SetCommand::ListenPort(port) => f.debug_tuple("ListenPort").field(port).finish(),
            SetCommand::Fwmark(mark) => f.debug_tuple("Fwmark").field(mark).finish(),
            SetCommand::ReplacePeers => f.write_str("ReplacePeers"),
            SetCommand::PublicKey(key) => f.debug_tuple("PublicKey").field(&ShortKey(key)).finish(),
            SetCommand::Remove => f.write_str("Remove"),
            SetCommand::UpdateOnly => f.write_str("UpdateOnly"),
            SetCommand::PresharedKey(key) => f
                .debug_tuple("PresharedKey")
                .field(&key.map(|_| Redacted))
                .finish(),
            SetCommand::Endpoint(endpoint) => f.debug_tuple("Endpoint").field(endpoint).finish(),
            SetCommand::PersistentKeepalive(seconds) => {
                f.debug_tuple("PersistentKeepalive").field(seconds).finish()
            }
            SetCommand::ReplaceAllowedIps => f.write_str("ReplaceAllowedIps"),
            SetCommand::AllowedIp(net) => f.debug_tuple("AllowedIp").field(net).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

    fn key(first: u8) -> [u8; 32] {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = first.wrapping_add(u8::try_from(i).unwrap_or(0));
        }
        key
    }

    fn hex(key: &[u8; 32]) -> String {
        HEXLOWER.encode(key)
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn device() -> DeviceInfo {
        DeviceInfo {
            private_key: key(0xa0),
            listen_port: 51820,
            fwmark: None,
            peers: vec![
                PeerInfo {
                    public_key: key(0x10),
                    preshared_key: None,
                    endpoint: Some(SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 40123))),
                    allowed_ips: vec![net("10.77.0.10/32"), net("fd77::10/128")],
                    last_handshake: Some(UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789)),
                    rx_bytes: 2224,
                    tx_bytes: 38333,
                    persistent_keepalive: 0,
                },
                PeerInfo {
                    public_key: key(0xf0),
                    preshared_key: Some(key(0x55)),
                    endpoint: Some(SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x33),
                        51820,
                        0,
                        0,
                    ))),
                    allowed_ips: vec![net("10.77.0.11/32")],
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 25,
                },
                PeerInfo {
                    public_key: key(0x01),
                    preshared_key: None,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                },
            ],
        }
    }

    /// What wireguard-go answers for [`device`], line for line.
    fn golden() -> String {
        [
            format!("private_key={}", hex(&key(0xa0))),
            "listen_port=51820".to_owned(),
            format!("public_key={}", hex(&key(0x10))),
            format!("preshared_key={}", "0".repeat(64)),
            "protocol_version=1".to_owned(),
            "endpoint=198.51.100.7:40123".to_owned(),
            "last_handshake_time_sec=1790000000".to_owned(),
            "last_handshake_time_nsec=123456789".to_owned(),
            "tx_bytes=38333".to_owned(),
            "rx_bytes=2224".to_owned(),
            "persistent_keepalive_interval=0".to_owned(),
            "allowed_ip=10.77.0.10/32".to_owned(),
            "allowed_ip=fd77::10/128".to_owned(),
            format!("public_key={}", hex(&key(0xf0))),
            format!("preshared_key={}", hex(&key(0x55))),
            "protocol_version=1".to_owned(),
            "endpoint=[2001:db8::33]:51820".to_owned(),
            "last_handshake_time_sec=0".to_owned(),
            "last_handshake_time_nsec=0".to_owned(),
            "tx_bytes=0".to_owned(),
            "rx_bytes=0".to_owned(),
            "persistent_keepalive_interval=25".to_owned(),
            "allowed_ip=10.77.0.11/32".to_owned(),
            format!("public_key={}", hex(&key(0x01))),
            format!("preshared_key={}", "0".repeat(64)),
            "protocol_version=1".to_owned(),
            "last_handshake_time_sec=0".to_owned(),
            "last_handshake_time_nsec=0".to_owned(),
            "tx_bytes=0".to_owned(),
            "rx_bytes=0".to_owned(),
            "persistent_keepalive_interval=0".to_owned(),
            "errno=0".to_owned(),
            String::new(),
            String::new(),
        ]
        .join("\n")
    }

    #[test]
    fn get_matches_wireguard_go_byte_for_byte() {
        assert_eq!(format_get(&device()), golden());
    }

    #[test]
    fn get_parses_back() {
        let device = device();
        assert_eq!(parse_get(&format_get(&device)), Ok(device));
    }

    #[test]
    fn get_omits_what_is_unset_and_masks_allowed_ips() {
        let mut device = device();
        device.private_key = [0; 32];
        device.listen_port = 0;
        device.fwmark = Some(0);
        device.peers.truncate(1);
        device.peers[0].allowed_ips = vec![net("10.77.0.10/24")];
        let text = format_get(&device);
        assert!(text.starts_with("public_key="), "{text}");
        assert!(text.contains("\nallowed_ip=10.77.0.0/24\n"), "{text}");
        device.fwmark = Some(51);
        assert!(format_get(&device).starts_with("fwmark=51\npublic_key="));
        let empty = DeviceInfo {
            private_key: [0; 32],
            listen_port: 0,
            fwmark: None,
            peers: Vec::new(),
        };
        assert_eq!(format_get(&empty), "errno=0\n\n");
        assert_eq!(parse_get("errno=0\n\n"), Ok(empty));
    }

    #[test]
    fn get_parses_the_order_of_the_protocol_documentation() {
        // The example answer of wireguard.com/xplatform, whose lines come in another order.
        let text = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
            listen_port=12912\n\
            public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
            preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52\n\
            allowed_ip=192.168.4.4/32\n\
            endpoint=[abcd:23::33%2]:51820\n\
            public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
            tx_bytes=38333\n\
            rx_bytes=2224\n\
            allowed_ip=192.168.4.6/32\n\
            persistent_keepalive_interval=111\n\
            endpoint=182.122.22.19:3233\n\
            public_key=662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58\n\
            endpoint=5.152.198.39:51820\n\
            allowed_ip=192.168.4.10/32\n\
            allowed_ip=192.168.4.11/32\n\
            tx_bytes=1212111\n\
            rx_bytes=1929999999\n\
            protocol_version=1\n\
            errno=0\n\
            \n";
        let device = parse_get(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(device.listen_port, 12912);
        assert_eq!(device.peers.len(), 3);
        assert_eq!(
            device.peers[0].endpoint,
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0xabcd, 0x23, 0, 0, 0, 0, 0, 0x33),
                51820,
                0,
                2
            )))
        );
        assert!(device.peers[0].preshared_key.is_some());
        assert_eq!(device.peers[1].persistent_keepalive, 111);
        assert_eq!(device.peers[1].tx_bytes, 38333);
        assert_eq!(device.peers[2].rx_bytes, 1_929_999_999);
        assert_eq!(
            device.peers[2].allowed_ips,
            vec![net("192.168.4.10/32"), net("192.168.4.11/32")]
        );
    }

    #[test]
    fn get_reports_remote_errors() {
        assert_eq!(
            parse_get("errno=-22\n\n"),
            Err(UapiError::Remote { errno: -22 })
        );
        assert_eq!(parse_get("listen_port=1\n\n"), Err(UapiError::NoErrno));
        assert_eq!(
            parse_get(&format!(
                "public_key={}\nprotocol_version=2\nerrno=0\n\n",
                hex(&key(1))
            )),
            Err(UapiError::Value {
                line: 2,
                key: "protocol_version"
            })
        );
        assert_eq!(
            parse_get("listen_port=x\nerrno=0\n\n"),
            Err(UapiError::Value {
                line: 1,
                key: "listen_port"
            })
        );
    }

    #[test]
    fn set_parses_what_wg_setconf_sends() {
        // The order of wireguard-tools' userspace_set_device.
        let text = format!(
            "private_key={}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={}\npreshared_key={}\nendpoint=[2001:db8::33]:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=10.77.0.10/32\nallowed_ip=fd77::10/128\n\
             public_key={}\nremove=true\n\
             public_key={}\nupdate_only=true\nprotocol_version=1\npreshared_key={}\n\n",
            hex(&key(0xa0)),
            hex(&key(0x10)),
            hex(&key(0x55)).to_uppercase(),
            hex(&key(0x20)),
            hex(&key(0x30)),
            "0".repeat(64),
        );
        let expected = vec![
            SetCommand::PrivateKey(Some(key(0xa0))),
            SetCommand::ListenPort(51820),
            SetCommand::Fwmark(0),
            SetCommand::ReplacePeers,
            SetCommand::PublicKey(key(0x10)),
            SetCommand::PresharedKey(Some(key(0x55))),
            SetCommand::Endpoint(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x33)),
                51820,
            )),
            SetCommand::PersistentKeepalive(25),
            SetCommand::ReplaceAllowedIps,
            SetCommand::AllowedIp(net("10.77.0.10/32")),
            SetCommand::AllowedIp(net("fd77::10/128")),
            SetCommand::PublicKey(key(0x20)),
            SetCommand::Remove,
            SetCommand::PublicKey(key(0x30)),
            SetCommand::UpdateOnly,
            SetCommand::PresharedKey(None),
        ];
        assert_eq!(parse_set(&text), Ok(expected));
    }

    #[test]
    fn set_accepts_an_empty_body_and_a_missing_blank_line() {
        assert_eq!(parse_set(""), Ok(Vec::new()));
        assert_eq!(parse_set("\n"), Ok(Vec::new()));
        assert_eq!(
            parse_set("listen_port=1"),
            Ok(vec![SetCommand::ListenPort(1)])
        );
        assert_eq!(
            parse_set(&format!("private_key={}\n", "0".repeat(64))),
            Ok(vec![SetCommand::PrivateKey(None)])
        );
    }

    fn check_set_error(text: &str, expected: UapiError) {
        assert_eq!(parse_set(text), Err(expected), "{text:?}");
    }

    #[test]
    fn set_refuses_bad_lines() {
        let pk = format!("public_key={}\n", hex(&key(1)));
        let value = |line, key| UapiError::Value { line, key };
        check_set_error("listen_port\n", UapiError::Syntax { line: 1 });
        check_set_error(
            "listen_port=1\nbogus=1\n",
            UapiError::UnknownKey {
                line: 2,
                key: "bogus".into(),
            },
        );
        check_set_error("listen_port=65536\n", value(1, "listen_port"));
        check_set_error("listen_port=+1\n", value(1, "listen_port"));
        check_set_error("listen_port= 1\n", value(1, "listen_port"));
        check_set_error("listen_port=\n", value(1, "listen_port"));
        check_set_error("fwmark=4294967296\n", value(1, "fwmark"));
        check_set_error("replace_peers=false\n", value(1, "replace_peers"));
        check_set_error("private_key=abc\n", value(1, "private_key"));
        check_set_error(
            &format!("private_key={}\n", "g".repeat(64)),
            value(1, "private_key"),
        );
        check_set_error(&format!("{pk}remove=yes\n"), value(2, "remove"));
        check_set_error(&format!("{pk}update_only=1\n"), value(2, "update_only"));
        check_set_error(
            &format!("{pk}protocol_version=2\n"),
            value(2, "protocol_version"),
        );
        check_set_error(&format!("{pk}endpoint=host:51820\n"), value(2, "endpoint"));
        check_set_error(&format!("{pk}endpoint=10.0.0.1\n"), value(2, "endpoint"));
        check_set_error(
            &format!("{pk}allowed_ip=10.0.0.1\n"),
            value(2, "allowed_ip"),
        );
        check_set_error(
            &format!("{pk}allowed_ip=10.0.0.0/33\n"),
            value(2, "allowed_ip"),
        );
        check_set_error(
            &format!("{pk}persistent_keepalive_interval=-1\n"),
            value(2, "persistent_keepalive_interval"),
        );
        check_set_error(
            &format!("{pk}replace_allowed_ips=TRUE\n"),
            value(2, "replace_allowed_ips"),
        );
        check_set_error(
            "endpoint=10.0.0.1:1\n",
            UapiError::PeerKeyWithoutPeer {
                line: 1,
                key: "endpoint",
            },
        );
        check_set_error(
            &format!("{pk}listen_port=1\n"),
            UapiError::DeviceKeyInPeer {
                line: 2,
                key: "listen_port",
            },
        );
        check_set_error(
            "listen_port=1\n\nlisten_port=2\n",
            UapiError::Trailing { line: 3 },
        );
        check_set_error("listen_port=1\r\n", value(1, "listen_port"));
    }

    #[test]
    fn errors_never_show_key_material() {
        let secret = hex(&key(0x77));
        let text = format!("private_key={secret}x\n");
        let Err(error) = parse_set(&text) else {
            panic!("accepted");
        };
        assert!(!error.to_string().contains(&secret[..16]));
        let Ok(commands) = parse_set(&format!("private_key={secret}\n")) else {
            panic!("refused");
        };
        assert!(!format!("{commands:?}").contains(&secret[..16]));
        let mut device = device();
        device.private_key = key(0x77);
        assert!(!format!("{device:?}").contains(&secret[..16]));
        assert!(!format!("{device:?}").contains("5556"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(format_errno(0), "errno=0\n\n");
        assert_eq!(format_errno(EINVAL), "errno=-22\n\n");
        assert_eq!(UapiError::Syntax { line: 1 }.errno(), EPROTO);
        assert_eq!(
            UapiError::Value {
                line: 1,
                key: "fwmark"
            }
            .errno(),
            EINVAL
        );
    }
}
