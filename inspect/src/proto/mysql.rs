//! MySQL and MariaDB's client/server protocol: the server speaks first with an initial
//! handshake (protocol version 10) or, when it refuses the host outright, an ERR packet. The
//! client's HandshakeResponse41 then tells whether it switches to TLS and which authentication
//! plugin it uses; `mysql_clear_password` (chosen by the client or requested by the server's
//! AuthSwitchRequest) sends the password in the clear. ERR 1045 is a failed login.
//!
//! Every packet is a 3-byte little-endian payload length, a sequence number, then the payload.

use crate::protocol::{Analysis, Context, Credential, Ident, Progress, Streams, Watch};

#[cfg(test)]
mod tests;

/// Capability flags used here.
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_PLUGIN_AUTH_LENENC_DATA: u32 = 0x20_0000;
/// The plugin that sends the password as is.
const CLEAR_PASSWORD: &[u8] = b"mysql_clear_password";
/// ER_ACCESS_DENIED_ERROR.
const ACCESS_DENIED: u16 = 1045;

/// The packet at the start of `b`: `Some((seq, payload))` once complete.
fn packet(b: &[u8]) -> Option<(u8, &[u8])> {
    let head = b.get(..4)?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    Some((head[3], b.get(4..4 + len)?))
}

/// The packets of `b`, as far as complete.
fn packets(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (seq, payload) = packet(b)?;
        b = &b[4 + payload.len()..];
        Some((seq, payload))
    })
}

/// Checks the server's first packet as far as it goes: `Yes`, `More` or `No`.
fn greeting(b: &[u8]) -> Ident {
    if b.len() >= 3 {
        let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
        if !(8..=1024).contains(&len) {
            return Ident::No;
        }
    }
    match (b.get(3), b.get(4)) {
        (Some(0), Some(10)) => handshake_v10(&b[5..]),
        (Some(0), Some(0xff)) => first_error(b),
        (Some(0), None) | (None, None) => Ident::More,
        _ => Ident::No,
    }
}

/// After the protocol version: a printable server version beginning with a digit, NUL,
/// a 4-byte connection id, 8 bytes of scramble and a zero filler.
fn handshake_v10(b: &[u8]) -> Ident {
    let limit = b.len().min(64);
    let version_end = b[..limit].iter().position(|&x| x == 0);
    let version = &b[..version_end.unwrap_or(limit)];
    let starts_with_digit = version.first().is_none_or(u8::is_ascii_digit);
    if !starts_with_digit || !version.iter().all(|x| (0x20..0x7f).contains(x)) {
        return Ident::No;
    }
    let Some(end) = version_end else {
        return if b.len() >= 64 {
            Ident::No
        } else {
            Ident::More
        };
    };
    if end == 0 {
        return Ident::No;
    }
    match b.get(end + 1 + 4 + 8) {
        None => Ident::More,
        Some(0) => Ident::Yes,
        Some(_) => Ident::No,
    }
}

/// An ERR packet as the first one, refusing the connection ("Host ... is not allowed",
/// "Too many connections"): an error code in MySQL's range and a printable message.
fn first_error(b: &[u8]) -> Ident {
    let code = match (b.get(5), b.get(6)) {
        (Some(&lo), Some(&hi)) => u16::from_le_bytes([lo, hi]),
        _ => return Ident::More,
    };
    if !(1000..5000).contains(&code) {
        return Ident::No;
    }
    let message = &b[7..];
    if !message.iter().all(|&x| x >= 0x20 && x != 0x7f) {
        return Ident::No;
    }
    match packet(b) {
        Some((_, payload)) if payload.len() >= 3 + 10 => Ident::Yes,
        Some(_) => Ident::No,
        None => Ident::More,
    }
}

/// Whether `s` is MySQL: the server's first packet, with a client that is silent or whose
/// first packet carries sequence number 1.
pub fn identify(s: &Streams<'_>) -> Ident {
    if s.client.get(3).is_some_and(|&seq| seq != 1) {
        return Ident::No;
    }
    greeting(s.server)
}

/// A NUL-terminated string at the start of `b`, and what follows it.
fn c_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&x| x == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

/// A length-encoded integer at the start of `b`, and what follows it.
fn lenenc(b: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let width = match first {
        0..=0xfa => return Some((usize::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let value = bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &x| acc << 8 | u64::from(x));
    Some((usize::try_from(value).ok()?, &rest[width..]))
}

/// What the client's HandshakeResponse says.
enum Response<'a> {
    /// The short SSL request: TLS follows.
    Ssl,
    /// The authentication plugin it names, if any.
    Plugin(Option<&'a [u8]>),
}

/// Parses a HandshakeResponse41 (or the older 320, which names no plugin).
fn response(payload: &[u8]) -> Option<Response<'_>> {
    let caps = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    if caps & CLIENT_SSL != 0 && payload.len() == 32 {
        return Some(Response::Ssl);
    }
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return Some(Response::Plugin(None));
    }
    let (_user, rest) = c_string(payload.get(32..)?)?;
    let rest = if caps & CLIENT_PLUGIN_AUTH_LENENC_DATA != 0 {
        let (len, rest) = lenenc(rest)?;
        rest.get(len..)?
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let (&len, rest) = rest.split_first()?;
        rest.get(usize::from(len)..)?
    } else {
        c_string(rest)?.1
    };
    let rest = if caps & CLIENT_CONNECT_WITH_DB != 0 {
        c_string(rest)?.1
    } else {
        rest
    };
    if caps & CLIENT_PLUGIN_AUTH == 0 {
        return Some(Response::Plugin(None));
    }
    Some(Response::Plugin(Some(c_string(rest)?.0)))
}

/// What `s` holds: a switch to TLS, a password sent with `mysql_clear_password`, failed logins.
/// Done once the server answers the login with OK or ERR (and the client's answer to a
/// clear-password switch is in).
pub fn analyze(s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    let mut out = Analysis::default();
    let waiting = |mut out: Analysis| {
        if s.client_done || s.server_done {
            out.progress = Progress::Done;
        }
        out
    };
    let mut server = packets(s.server);
    let Some((_, first)) = server.next() else {
        return waiting(out);
    };
    if first.first() == Some(&0xff) {
        out.auth_failures += u32::from(error_code(first) == Some(ACCESS_DENIED));
        out.progress = Progress::Done;
        return out;
    }
    let mut client = packets(s.client);
    let Some((_, hello)) = client.next() else {
        return waiting(out);
    };
    match response(hello) {
        None => {
            out.progress = Progress::Malformed;
            return out;
        }
        Some(Response::Ssl) => {
            out.progress = Progress::Encrypted;
            return out;
        }
        Some(Response::Plugin(Some(CLEAR_PASSWORD))) => {
            out.credential = Some(Credential::MysqlCleartext);
        }
        Some(Response::Plugin(_)) => {}
    }
    let mut switched_to_clear = false;
    for (_, payload) in server {
        match payload.first() {
            Some(0x00) => {
                out.progress = Progress::Done;
                break;
            }
            Some(0xff) => {
                out.auth_failures += u32::from(error_code(payload) == Some(ACCESS_DENIED));
                out.progress = Progress::Done;
                break;
            }
            Some(0xfe) => {
                switched_to_clear |=
                    c_string(&payload[1..]).map(|(name, _)| name) == Some(CLEAR_PASSWORD);
            }
            _ => {}
        }
    }
    if switched_to_clear && out.credential.is_none() {
        if client.next().is_some() {
            out.credential = Some(Credential::MysqlCleartext);
        } else {
            out.progress = Progress::More;
        }
    }
    if out.progress == Progress::More {
        waiting(out)
    } else {
        out
    }
}

/// The error code of an ERR packet's payload.
fn error_code(payload: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*payload.get(1)?, *payload.get(2)?]))
}

/// Nothing to watch once the login is over.
pub fn watch(_from_server: bool, _segment: &[u8], _cx: &Context<'_>) -> Watch {
    Watch::default()
}
