//! One module per protocol, each a pure `identify`, `analyze` and `watch` over a flow's bytes
//! (see [`crate::protocol`]), and the order in which they are asked.

use crate::protocol::{Analysis, Context, Ident, Protocol, Streams, Watch};

pub mod http;
pub mod http2;
pub mod mysql;
pub mod postgresql;
pub mod redis;
pub mod smtp;
pub mod ssh;
pub mod tls;

/// The identification order: the protocols whose first bytes are the most specific first.
/// Each parser must answer `No` for the others' bytes, so the order only saves work.
pub const ORDER: [Protocol; 8] = [
    Protocol::Tls,
    Protocol::Http2,
    Protocol::Http,
    Protocol::Postgresql,
    Protocol::Ssh,
    Protocol::Redis,
    Protocol::Mysql,
    Protocol::Smtp,
];

/// The outcome of asking every parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identified {
    /// This protocol.
    Known(Protocol),
    /// None of them, whatever follows.
    Unknown,
    /// Some parser needs more bytes.
    More,
}

/// Asks every parser, in [`ORDER`]. When neither direction can grow any more, a parser that
/// still wants more bytes has lost: the flow is `Unknown`.
pub fn identify(s: &Streams<'_>) -> Identified {
    let mut more = false;
    for protocol in ORDER {
        match identify_as(protocol, s) {
            Ident::Yes => return Identified::Known(protocol),
            Ident::More => more = true,
            Ident::No => {}
        }
    }
    if more && !(s.client_done && s.server_done) {
        Identified::More
    } else {
        Identified::Unknown
    }
}

/// Whether `s` is `protocol`.
pub fn identify_as(protocol: Protocol, s: &Streams<'_>) -> Ident {
    match protocol {
        Protocol::Tls => tls::identify(s),
        Protocol::Http => http::identify(s),
        Protocol::Http2 => http2::identify(s),
        Protocol::Postgresql => postgresql::identify(s),
        Protocol::Mysql => mysql::identify(s),
        Protocol::Redis => redis::identify(s),
        Protocol::Ssh => ssh::identify(s),
        Protocol::Smtp => smtp::identify(s),
        Protocol::Unknown | Protocol::Midstream => Ident::No,
    }
}

/// What `protocol`'s parser finds in `s`.
pub fn analyze(protocol: Protocol, s: &Streams<'_>, cx: &Context<'_>) -> Analysis {
    match protocol {
        Protocol::Tls => tls::analyze(s, cx),
        Protocol::Http => http::analyze(s, cx),
        Protocol::Http2 => http2::analyze(s, cx),
        Protocol::Postgresql => postgresql::analyze(s, cx),
        Protocol::Mysql => mysql::analyze(s, cx),
        Protocol::Redis => redis::analyze(s, cx),
        Protocol::Ssh => ssh::analyze(s, cx),
        Protocol::Smtp => smtp::analyze(s, cx),
        Protocol::Unknown | Protocol::Midstream => Analysis {
            progress: crate::protocol::Progress::Done,
            ..Analysis::default()
        },
    }
}

/// What one segment of a `protocol` flow whose analysis is done says on its own.
pub fn watch(protocol: Protocol, from_server: bool, segment: &[u8], cx: &Context<'_>) -> Watch {
    match protocol {
        Protocol::Http => http::watch(from_server, segment, cx),
        Protocol::Redis => redis::watch(from_server, segment, cx),
        Protocol::Smtp => smtp::watch(from_server, segment, cx),
        Protocol::Tls => tls::watch(from_server, segment, cx),
        Protocol::Http2 => http2::watch(from_server, segment, cx),
        Protocol::Postgresql => postgresql::watch(from_server, segment, cx),
        Protocol::Mysql => mysql::watch(from_server, segment, cx),
        Protocol::Ssh => ssh::watch(from_server, segment, cx),
        Protocol::Unknown | Protocol::Midstream => Watch::default(),
    }
}
