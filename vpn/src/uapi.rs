//! The WireGuard cross-platform configuration protocol (<https://www.wireguard.com/xplatform/>),
//! as `wg(8)` speaks it over `/var/run/wireguard/<interface>.sock`.
//!
//! A client sends `get=1\n\n` or `set=1\n` followed by `key=value` lines and a blank line. The
//! answer to `get` is the device's `key=value` lines; both operations end with `errno=N` and a
//! blank line. This module owns the text: [`format_get`] writes a `get` answer in the order and
//! spelling of wireguard-go (which `wg show` and `wg showconf` read), [`format_errno`] writes the
//! status line, and [`parse_get`] reads a `get` answer back. It does no IO and applies nothing.
//! A `set` is never parsed: crmguard refuses every change (its peers come from its
//! configuration), which the socket answers without reading the body's values.
//!
//! Keys are secrets: no error and no `Debug` output of this module contains a private or
//! pre-shared key.

#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use ipnet::IpNet;

/// The protocol version every peer reports.
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

/// Why a `get` answer was refused. Line numbers count from 1 within the text
/// given; no variant carries a value, since values may be keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    /// A line is not `key=value`.
    #[error("line {line}: expected key=value")]
    Syntax {
        /// The line number.
        line: usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

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
    fn errors_never_show_key_material() {
        let secret = hex(&key(0x77));
        let text = format!("private_key={secret}x\nerrno=0\n\n");
        let Err(error) = parse_get(&text) else {
            panic!("accepted");
        };
        assert!(!error.to_string().contains(&secret[..16]));
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
