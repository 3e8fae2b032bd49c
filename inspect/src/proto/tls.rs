//! TLS: a flow whose client opens with a ClientHello in a handshake record.
//!
//! Identification looks at the record header and the first bytes of the first handshake
//! message, reassembled across records (a ClientHello may legally be cut into records of any
//! size). Analysis reassembles the whole ClientHello, which may span several records and
//! several TCP segments (Chromium's, with a post-quantum X25519MLKEM768 key share, is close to
//! 2 KB and crosses one MSS), and parses it and the server's first handshake message with
//! `tls-parser`. It reports the server name and the offered versions, and the version the
//! server chose. Nothing after the hellos is read: the rest of the flow is encrypted, so
//! `watch` has nothing to say.

use std::borrow::Cow;

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_handshake_client_hello,
    parse_tls_handshake_server_hello, parse_tls_server_hello_extensions, TlsExtension,
};

use crate::protocol::{
    Analysis, ClientHello, Context, Ident, Progress, ServerHello, Streams, Watch, WireVersion,
};

/// The record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// The record content type of alerts.
const CONTENT_ALERT: u8 = 21;
/// The size of a record header: content type, version, length.
const RECORD_HEADER: usize = 5;
/// The largest record payload a peer may send: 2^14 plus the expansion TLS 1.2 allows for
/// compression and protection.
const MAX_RECORD: usize = 16384 + 2048;
/// The size of a handshake message header: type and 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// The handshake message type of ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The handshake message type of ServerHello (and of TLS 1.3's HelloRetryRequest).
const SERVER_HELLO: u8 = 2;
/// The shortest ClientHello body: version, random, empty session id, one cipher suite, one
/// compression method.
const MIN_CLIENT_HELLO: usize = 2 + 32 + 1 + 2 + 2 + 1 + 1;
/// The longest ClientHello this parser accepts. The record layer allows 2^24 bytes, but a real
/// one, even with several post-quantum key shares, is a few kilobytes.
const MAX_CLIENT_HELLO: usize = 1 << 16;
/// TLS 1.0 on the wire.
const TLS1_0: WireVersion = 0x0301;
/// TLS 1.2 on the wire, the highest `legacy_version` a ClientHello may carry.
const TLS1_2: WireVersion = 0x0303;

/// The first handshake message of one direction, as far as its records are contiguous.
#[derive(Debug, PartialEq, Eq)]
enum Reassembled<'a> {
    /// The whole message, header included.
    Complete(Cow<'a, [u8]>),
    /// The message's first bytes (maybe none): its records continue past the bytes seen.
    Partial(Cow<'a, [u8]>),
    /// The direction opens with an alert record, not a handshake.
    Alert,
    /// The records break the record layer's rules.
    Broken,
}

/// The header of one record, checked: a known content type is up to the caller, the version is
/// SSL 3.0 to TLS 1.3 and the length is within the record layer's limit.
fn record_header(b: &[u8]) -> Option<(u8, usize)> {
    let header = b.get(..RECORD_HEADER)?;
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    (header[1] == 3 && header[2] <= 4 && (1..=MAX_RECORD).contains(&length))
        .then_some((header[0], length))
}

/// Whether the bytes of a record header seen so far (fewer than five) could still begin a
/// valid header of content type `content_type`.
fn record_header_prefix_ok(b: &[u8], content_type: u8) -> bool {
    let checks = [
        b.first().is_none_or(|&t| t == content_type),
        b.get(1).is_none_or(|&major| major == 3),
        b.get(2).is_none_or(|&minor| minor <= 4),
        // The length's high byte: 0x48 is 18432 = MAX_RECORD.
        b.get(3)
            .is_none_or(|&high| usize::from(high) << 8 <= MAX_RECORD),
    ];
    checks.iter().all(|&ok| ok)
}

/// The first handshake message of `b`, one direction's bytes from the first, reassembled
/// from as many handshake records as it spans. A message ends the reassembly as soon as its
/// bytes are there, even if its last record goes on (a server puts Certificate and more in the
/// record of its ServerHello).
fn first_handshake_message(b: &[u8]) -> Reassembled<'_> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = b;
    let mut first = true;
    loop {
        if rest.len() < RECORD_HEADER {
            let content_type = if first { None } else { Some(CONTENT_HANDSHAKE) };
            let prefix_ok = content_type.map_or_else(
                || {
                    record_header_prefix_ok(rest, CONTENT_HANDSHAKE)
                        || record_header_prefix_ok(rest, CONTENT_ALERT)
                },
                |t| record_header_prefix_ok(rest, t),
            );
            return if prefix_ok {
                Reassembled::Partial(message)
            } else {
                Reassembled::Broken
            };
        }
        let Some((content_type, length)) = record_header(rest) else {
            return Reassembled::Broken;
        };
        match content_type {
            CONTENT_HANDSHAKE => {}
            CONTENT_ALERT if first => return Reassembled::Alert,
            // A handshake message's records are not interleaved with other content.
            _ => return Reassembled::Broken,
        }
        first = false;
        let payload = &rest[RECORD_HEADER..];
        let fragment = &payload[..payload.len().min(length)];
        message = if message.is_empty() {
            Cow::Borrowed(fragment)
        } else {
            let mut joined = message.into_owned();
            joined.extend_from_slice(fragment);
            Cow::Owned(joined)
        };
        if let Some(total) = message_length(&message) {
            if message.len() >= total {
                return Reassembled::Complete(match message {
                    Cow::Borrowed(m) => Cow::Borrowed(&m[..total]),
                    Cow::Owned(mut m) => {
                        m.truncate(total);
                        Cow::Owned(m)
                    }
                });
            }
        }
        if fragment.len() < length {
            return Reassembled::Partial(message);
        }
        rest = &payload[length..];
    }
}

/// The length of a handshake message, header included, once its header is there.
fn message_length(message: &[u8]) -> Option<usize> {
    let header = message.get(..HANDSHAKE_HEADER)?;
    let body = u32::from_be_bytes([0, header[1], header[2], header[3]]);
    usize::try_from(body).ok().map(|b| b + HANDSHAKE_HEADER)
}

/// Whether the first bytes of a handshake message (up to the ClientHello's `legacy_version`)
/// can be a ClientHello: `Yes` once all six are there and are one.
fn client_hello_prefix(m: &[u8]) -> Ident {
    if m.first().is_some_and(|&t| t != CLIENT_HELLO) {
        return Ident::No;
    }
    if m.len() >= HANDSHAKE_HEADER {
        let length = message_length(m).map_or(0, |l| l - HANDSHAKE_HEADER);
        if !(MIN_CLIENT_HELLO..=MAX_CLIENT_HELLO).contains(&length) {
            return Ident::No;
        }
    } else if m.get(1).is_some_and(|&high| high != 0) {
        // Three length bytes of at most MAX_CLIENT_HELLO: the first is zero.
        return Ident::No;
    }
    let version = [m.get(4), m.get(5)];
    if version[0].is_some_and(|&major| major != 3) {
        return Ident::No;
    }
    match version[1] {
        None => Ident::More,
        Some(&minor) if (1..=3).contains(&minor) => Ident::Yes,
        Some(_) => Ident::No,
    }
}

/// Whether `s` is TLS: the client's first record is a handshake record whose first message is
/// a ClientHello. The client speaks first in TLS: a server that spoke before it is not TLS.
pub fn identify(s: &Streams<'_>) -> Ident {
    if s.client.is_empty() {
        return if s.client_done || !s.server.is_empty() {
            Ident::No
        } else {
            Ident::More
        };
    }
    if s.client[0] != CONTENT_HANDSHAKE {
        return Ident::No;
    }
    let answer = match first_handshake_message(s.client) {
        Reassembled::Complete(m) | Reassembled::Partial(m) => client_hello_prefix(&m),
        Reassembled::Alert | Reassembled::Broken => Ident::No,
    };
    if answer == Ident::More && s.client_done {
        return Ident::No;
    }
    answer
}

/// Whether `v` is a GREASE value (RFC 8701): 0x0a0a, 0x1a1a ... 0xfafa.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// The client's hello, or `Err(())` when its bytes do not parse.
fn parse_client_hello(message: &[u8]) -> Result<ClientHello, ()> {
    if message.first() != Some(&CLIENT_HELLO) {
        return Err(());
    }
    let body = &message[HANDSHAKE_HEADER..];
    let (rest, hello) = parse_tls_handshake_client_hello(body).map_err(|_| ())?;
    if !rest.is_empty() {
        return Err(());
    }
    let mut found = ClientHello::default();
    let mut supported: Option<Vec<WireVersion>> = None;
    let (rest, extensions) =
        parse_tls_client_hello_extensions(hello.ext.unwrap_or_default()).map_err(|_| ())?;
    if !rest.is_empty() {
        return Err(());
    }
    for extension in extensions {
        match extension {
            TlsExtension::SNI(names) => {
                // host_name is type 0; RFC 6066 allows one name of each type. The name is
                // ASCII by definition; other bytes are kept visible rather than dropped.
                found.sni = names
                    .iter()
                    .find(|(kind, _)| kind.0 == 0)
                    .map(|(_, name)| String::from_utf8_lossy(name).into_owned());
            }
            TlsExtension::SupportedVersions(versions) => {
                supported = Some(
                    versions
                        .iter()
                        .map(|v| v.0)
                        .filter(|&v| !is_grease(v))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    found.versions = supported.unwrap_or_else(|| (TLS1_0..=hello.version.0.min(TLS1_2)).collect());
    Ok(found)
}

/// The server's hello, or `Err(())` when its bytes do not parse.
fn parse_server_hello(message: &[u8]) -> Result<ServerHello, ()> {
    if message.first() != Some(&SERVER_HELLO) {
        return Err(());
    }
    let body = &message[HANDSHAKE_HEADER..];
    let (rest, hello) = parse_tls_handshake_server_hello(body).map_err(|_| ())?;
    if !rest.is_empty() {
        return Err(());
    }
    let (rest, extensions) =
        parse_tls_server_hello_extensions(hello.ext.unwrap_or_default()).map_err(|_| ())?;
    if !rest.is_empty() {
        return Err(());
    }
    let chosen = extensions.iter().find_map(|e| match e {
        TlsExtension::SupportedVersions(v) => v.first().map(|v| v.0),
        _ => None,
    });
    Ok(ServerHello {
        version: chosen.unwrap_or(hello.version.0),
    })
}

/// One direction's hello: parsed, not complete yet, or not there at all.
enum Hello<T> {
    Parsed(T),
    Incomplete,
    /// The server answered with an alert (the client never does before its hello).
    Refused,
    Malformed,
}

/// The hello of handshake type `kind` at the start of `bytes`, parsed by `parse`.
fn hello<T>(bytes: &[u8], kind: u8, parse: fn(&[u8]) -> Result<T, ()>) -> Hello<T> {
    match first_handshake_message(bytes) {
        Reassembled::Complete(m) => parse(&m).map_or(Hello::Malformed, Hello::Parsed),
        Reassembled::Partial(m) => {
            // A message whose header already says it is not the hello is wrong now.
            if m.first().is_some_and(|&t| t != kind) {
                Hello::Malformed
            } else {
                Hello::Incomplete
            }
        }
        Reassembled::Alert => Hello::Refused,
        Reassembled::Broken => Hello::Malformed,
    }
}

/// The ClientHello and the ServerHello of `s`.
///
/// Progress is `More` until both hellos are parsed; `Done` once they are, once the server
/// refused with an alert, or once a direction that has not completed its hello can no longer
/// grow (a ClientHello larger than the window is reported as none); `Malformed` when a
/// direction's bytes claimed TLS and do not parse.
pub fn analyze(s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    let mut analysis = Analysis::default();
    let client = match hello(s.client, CLIENT_HELLO, parse_client_hello) {
        Hello::Parsed(h) => {
            analysis.client_hello = Some(h);
            true
        }
        Hello::Incomplete => s.client_done,
        Hello::Refused | Hello::Malformed => {
            analysis.progress = Progress::Malformed;
            return analysis;
        }
    };
    let server = if s.server.is_empty() {
        s.server_done
    } else {
        match hello(s.server, SERVER_HELLO, parse_server_hello) {
            Hello::Parsed(h) => {
                analysis.server_hello = Some(h);
                true
            }
            Hello::Incomplete => s.server_done,
            // An alert instead of a ServerHello: the handshake ends here.
            Hello::Refused => true,
            Hello::Malformed => {
                analysis.progress = Progress::Malformed;
                return analysis;
            }
        }
    };
    analysis.progress = if client && server {
        Progress::Done
    } else {
        Progress::More
    };
    analysis
}

/// Nothing: after the hellos a TLS flow is encrypted.
pub fn watch(_from_server: bool, _segment: &[u8], _cx: &Context<'_>) -> Watch {
    Watch::default()
}

#[cfg(test)]
pub(crate) mod tests;
