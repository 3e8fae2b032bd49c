//! HTTP/2 with prior knowledge: a flow whose client opens with the connection preface in the
//! clear (RFC 9113, section 3.4).
//!
//! Only identification: the frames that follow are HPACK-compressed, and this parser keeps no
//! HPACK decoder (its dynamic table would need state across calls), so it looks for no
//! credentials and its analysis is done at once. HTTP/2 over TLS is identified as TLS.

use crate::protocol::{Analysis, Context, Ident, Progress, Streams, Watch};

/// The client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `s` is HTTP/2: the client's bytes begin with the preface; `More` while they are a
/// prefix of it. The client speaks first: a server that spoke before it is not HTTP/2.
pub fn identify(s: &Streams<'_>) -> Ident {
    if s.client.is_empty() && (s.client_done || !s.server.is_empty()) {
        return Ident::No;
    }
    if s.client.starts_with(PREFACE) {
        Ident::Yes
    } else if PREFACE.starts_with(s.client) && !s.client_done {
        Ident::More
    } else {
        Ident::No
    }
}

/// Done at once: without HPACK decoding there is nothing more to learn.
pub fn analyze(_s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    Analysis {
        progress: Progress::Done,
        ..Analysis::default()
    }
}

/// Nothing: headers are HPACK-compressed.
pub fn watch(_from_server: bool, _segment: &[u8], _cx: &Context<'_>) -> Watch {
    Watch::default()
}

#[cfg(test)]
pub(crate) mod tests;
