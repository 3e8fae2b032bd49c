//! HTTP/2 identification over a real capture: curl --http2-prior-knowledge against nginx.

use super::{analyze, identify, PREFACE};
use crate::proto::tls::tests::{Fixture, Rng};
use crate::protocol::{Context, Ident, Progress, Streams};

/// Every HTTP/2 capture.
pub(crate) const FIXTURES: [Fixture; 1] = [(
    "curl-prior-knowledge",
    include_bytes!("../../../fixtures/http2/curl-prior-knowledge.client").as_slice(),
    include_bytes!("../../../fixtures/http2/curl-prior-knowledge.server").as_slice(),
)];

fn client(bytes: &[u8]) -> Streams<'_> {
    Streams {
        client: bytes,
        ..Streams::default()
    }
}

#[test]
fn identifies_the_capture_and_every_prefix_is_never_no() {
    for (name, c, s) in FIXTURES {
        for k in 0..=c.len() {
            let answer = identify(&client(&c[..k]));
            let expected = if k < PREFACE.len() {
                Ident::More
            } else {
                Ident::Yes
            };
            assert_eq!(answer, expected, "{name}: prefix {k}");
        }
        let with_server = Streams {
            client: c,
            server: s,
            ..Streams::default()
        };
        assert_eq!(identify(&with_server), Ident::Yes, "{name}");
        assert_eq!(
            analyze(&with_server, &Context::default()).progress,
            Progress::Done
        );
    }
}

#[test]
fn other_protocols_captures_are_never_http2() {
    let others = crate::proto::tls::tests::FIXTURES
        .iter()
        .chain(crate::proto::http::tests::FIXTURES.iter());
    for (name, c, s) in others {
        for k in 0..=c.len() {
            let streams = Streams {
                client: &c[..k],
                server: s,
                ..Streams::default()
            };
            assert_ne!(identify(&streams), Ident::Yes, "{name}: prefix {k}");
        }
        assert_eq!(identify(&client(c)), Ident::No, "{name}");
    }
}

#[test]
fn random_streams_are_never_http2() {
    let mut rng = Rng::new(0x7e57_0002);
    for i in 0..10_000 {
        let prefix: &[u8] = if i % 2 == 0 {
            b""
        } else {
            b"PRI * HTTP/2.0\r\n"
        };
        let len = rng.below(2000);
        let bytes = rng.bytes(prefix, len);
        assert_ne!(identify(&client(&bytes)), Ident::Yes, "stream {i}");
    }
}

#[test]
fn near_misses_are_not_http2() {
    let done = Streams {
        client: b"PRI * HTTP/2.0\r\n",
        client_done: true,
        ..Streams::default()
    };
    assert_eq!(identify(&done), Ident::No);
    assert_eq!(identify(&client(b"PRI * HTTP/1.1\r\n\r\n")), Ident::No);
    assert_eq!(identify(&client(b"GET / HTTP/1.1\r\n")), Ident::No);
    let server_first = Streams {
        server: b"220 mail ESMTP\r\n",
        ..Streams::default()
    };
    assert_eq!(identify(&server_first), Ident::No);
}

#[test]
fn the_identification_order_names_the_capture_http2() {
    for (name, c, s) in FIXTURES {
        let streams = Streams {
            client: c,
            server: s,
            ..Streams::default()
        };
        assert_eq!(
            crate::proto::identify(&streams),
            crate::proto::Identified::Known(crate::protocol::Protocol::Http2),
            "{name}"
        );
    }
}
