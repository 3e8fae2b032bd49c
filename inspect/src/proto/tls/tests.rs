//! TLS identification and analysis over real captures: curl, openssl s_client and Chromium
//! against nginx on this machine (client's first 8 KiB, server's first 4 KiB).

use super::{analyze, identify};
use crate::protocol::{
    Analysis, ClientHello, Context, Ident, Progress, ServerHello, Streams, WireVersion,
};

/// One capture: its name, the client's bytes and the server's.
pub(crate) type Fixture = (&'static str, &'static [u8], &'static [u8]);

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../fixtures/tls/", $name, ".client")).as_slice(),
            include_bytes!(concat!("../../../fixtures/tls/", $name, ".server")).as_slice(),
        )
    };
}

/// Every TLS capture.
pub(crate) const FIXTURES: [Fixture; 7] = [
    fixture!("curl-tls12-sni"),
    fixture!("curl-tls13-sni"),
    fixture!("curl-ip-no-sni"),
    fixture!("openssl-tls13"),
    fixture!("openssl-tls12"),
    fixture!("openssl-tls11-refused"),
    fixture!("chromium-mlkem"),
];

/// A small deterministic generator (xorshift64*) for the random streams.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        usize::try_from(self.next() % n).unwrap_or(0)
    }

    /// `len` random bytes after `prefix`.
    pub(crate) fn bytes(&mut self, prefix: &[u8], len: usize) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.extend((0..len).map(|_| self.next().to_le_bytes()[3]));
        v
    }
}

fn client(bytes: &[u8]) -> Streams<'_> {
    Streams {
        client: bytes,
        ..Streams::default()
    }
}

fn both<'a>(client: &'a [u8], server: &'a [u8]) -> Streams<'a> {
    Streams {
        client,
        server,
        ..Streams::default()
    }
}

fn run(client: &[u8], server: &[u8]) -> Analysis {
    analyze(&both(client, server), &Context::default())
}

fn fixture(name: &str) -> Fixture {
    FIXTURES
        .into_iter()
        .find(|f| f.0 == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

#[test]
fn identifies_every_capture_and_every_prefix_is_never_no() {
    for (name, c, s) in FIXTURES {
        for k in 0..=c.len() {
            assert_ne!(identify(&client(&c[..k])), Ident::No, "{name}: prefix {k}");
        }
        assert_eq!(identify(&client(c)), Ident::Yes, "{name}");
        assert_eq!(identify(&both(c, s)), Ident::Yes, "{name} with its server");
    }
}

#[test]
fn yes_needs_the_client_hello_version() {
    let (_, c, _) = fixture("curl-tls13-sni");
    // Record header (5), handshake header (4), legacy_version (2).
    assert_eq!(identify(&client(&c[..10])), Ident::More);
    assert_eq!(identify(&client(&c[..11])), Ident::Yes);
    let done = Streams {
        client: &c[..10],
        client_done: true,
        ..Streams::default()
    };
    assert_eq!(identify(&done), Ident::No);
}

#[test]
fn a_server_that_speaks_first_is_not_tls() {
    assert_eq!(identify(&both(b"", b"SSH-2.0-OpenSSH_9.2\r\n")), Ident::No);
    assert_eq!(identify(&client(b"")), Ident::More);
}

#[test]
fn other_protocols_captures_are_never_tls() {
    let others = crate::proto::http::tests::FIXTURES
        .iter()
        .chain(crate::proto::http2::tests::FIXTURES.iter());
    for (name, c, s) in others {
        for k in 0..=c.len() {
            assert_ne!(
                identify(&both(&c[..k], s)),
                Ident::Yes,
                "{name}: prefix {k}"
            );
        }
        assert_eq!(identify(&client(c)), Ident::No, "{name}");
    }
}

#[test]
fn random_streams_are_never_tls() {
    let mut rng = Rng::new(0x7e57_0001);
    for i in 0..10_000 {
        let prefix: &[u8] = if i % 2 == 0 { &[] } else { &[0x16, 0x03, 0x01] };
        let len = rng.below(2000);
        let bytes = rng.bytes(prefix, len);
        assert_ne!(
            identify(&client(&bytes)),
            Ident::Yes,
            "stream {i}: {bytes:02x?}"
        );
    }
}

fn hello(sni: Option<&str>, versions: &[WireVersion]) -> Option<ClientHello> {
    Some(ClientHello {
        sni: sni.map(str::to_owned),
        versions: versions.to_vec(),
    })
}

fn server(version: WireVersion) -> Option<ServerHello> {
    Some(ServerHello { version })
}

const SNI: Option<&str> = Some("crm.example.com");

#[test]
fn analysis_of_every_capture() {
    let check = |name: &str, client_hello, server_hello| {
        let (_, c, s) = fixture(name);
        let expected = Analysis {
            progress: Progress::Done,
            client_hello,
            server_hello,
            ..Analysis::default()
        };
        assert_eq!(run(c, s), expected, "{name}");
    };
    // curl --tls-max 1.2 sends no supported_versions: TLS 1.0 up to legacy_version 1.2.
    check(
        "curl-tls12-sni",
        hello(SNI, &[0x0301, 0x0302, 0x0303]),
        server(0x0303),
    );
    // curl --tlsv1.3 makes TLS 1.3 the least it accepts.
    check("curl-tls13-sni", hello(SNI, &[0x0304]), server(0x0304));
    // An address is not a server name: curl sends no SNI for https://127.0.0.1/.
    check(
        "curl-ip-no-sni",
        hello(None, &[0x0304, 0x0303]),
        server(0x0304),
    );
    check("openssl-tls13", hello(SNI, &[0x0304]), server(0x0304));
    check(
        "openssl-tls12",
        hello(SNI, &[0x0301, 0x0302, 0x0303]),
        server(0x0303),
    );
    // nginx allows TLS 1.2 and 1.3 only: a protocol_version alert, no ServerHello.
    check("openssl-tls11-refused", hello(SNI, &[0x0301, 0x0302]), None);
    // Chromium offers GREASE in supported_versions; it is left out.
    check(
        "chromium-mlkem",
        hello(SNI, &[0x0304, 0x0303]),
        server(0x0304),
    );
}

#[test]
fn chromium_hello_with_a_post_quantum_key_share_crosses_one_segment() {
    let (_, c, _) = fixture("chromium-mlkem");
    let length = usize::from(u16::from_be_bytes([c[3], c[4]]));
    assert!(
        length > 1400,
        "Chromium's ClientHello record is {length} bytes"
    );
    // The X25519MLKEM768 group (0x11ec) is in its key_share.
    assert!(c.windows(2).any(|w| w == [0x11, 0xec]));
    // Cut where a 1400-byte segment would end: not complete yet.
    assert_eq!(run(&c[..1400], b"").progress, Progress::More);
    assert_eq!(run(&c[..1400], b"").client_hello, None);
}

/// The ClientHello of `c` (one record) cut into records of `sizes` bytes, then the rest.
fn reframe(c: &[u8], sizes: &[usize]) -> Vec<u8> {
    let length = usize::from(u16::from_be_bytes([c[3], c[4]]));
    let mut message = &c[5..5 + length];
    let mut out = Vec::new();
    let mut cuts = sizes.iter().copied().chain(std::iter::once(usize::MAX));
    while !message.is_empty() {
        let n = cuts.next().unwrap_or(usize::MAX).min(message.len());
        out.extend_from_slice(&c[..3]);
        out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&message[..n]);
        message = &message[n..];
    }
    out.extend_from_slice(&c[5 + length..]);
    out
}

#[test]
fn a_hello_over_several_records_is_reassembled() {
    for (name, c, s) in FIXTURES {
        let whole = run(c, s);
        for sizes in [&[1, 2, 700][..], &[3], &[4], &[5, 1000], &[200, 200, 200]] {
            let framed = reframe(c, sizes);
            assert_eq!(identify(&client(&framed)), Ident::Yes, "{name} {sizes:?}");
            for k in 0..framed.len() {
                assert_ne!(
                    identify(&client(&framed[..k])),
                    Ident::No,
                    "{name} {sizes:?} prefix {k}"
                );
            }
            assert_eq!(run(&framed, s), whole, "{name} {sizes:?}");
        }
    }
}

#[test]
fn every_split_point_gives_the_same_answer_or_more() {
    for (name, c, s) in FIXTURES {
        let whole = run(c, s);
        assert_eq!(whole.progress, Progress::Done, "{name}");
        for k in 0..c.len() {
            let part = run(&c[..k], s);
            if part.progress != Progress::More {
                assert_eq!(part, whole, "{name}: client prefix {k}");
            }
        }
        for k in 0..s.len() {
            let part = run(c, &s[..k]);
            if part.progress != Progress::More {
                assert_eq!(part, whole, "{name}: server prefix {k}");
            }
        }
        let framed = reframe(c, &[300]);
        for k in 0..framed.len() {
            let part = run(&framed[..k], s);
            if part.progress != Progress::More {
                assert_eq!(part, whole, "{name}: two records, prefix {k}");
            }
        }
    }
}

/// The server flight of `s` with its first `count` handshake records merged into one, as many
/// TLS 1.2 servers send ServerHello, Certificate and ServerHelloDone.
fn merge_records(s: &[u8], count: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut at = 0;
    for _ in 0..count {
        assert_eq!(s[at], 22, "a handshake record at {at}");
        let length = usize::from(u16::from_be_bytes([s[at + 3], s[at + 4]]));
        payload.extend_from_slice(&s[at + 5..at + 5 + length]);
        at += 5 + length;
    }
    let mut out = s[..3].to_vec();
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&s[at..]);
    out
}

#[test]
fn the_server_hello_is_read_before_its_record_ends() {
    // nginx (OpenSSL) sends each TLS 1.2 handshake message in a record of its own; many servers
    // put ServerHello, Certificate... in one record. The ServerHello alone is enough.
    let (_, c, s) = fixture("openssl-tls12");
    let s = &merge_records(s, 3)[..];
    let record = usize::from(u16::from_be_bytes([s[3], s[4]]));
    let hello_end = 5 + 4 + usize::from(u16::from_be_bytes([s[7], s[8]]));
    assert!(hello_end < 5 + record, "the ServerHello shares its record");
    assert_eq!(s[hello_end], 11, "a Certificate follows in the same record");
    let at_end = run(c, &s[..hello_end]);
    assert_eq!(at_end.server_hello, server(0x0303));
    assert_eq!(at_end.progress, Progress::Done);
    assert_eq!(run(c, &s[..hello_end - 1]).progress, Progress::More);
}

#[test]
fn a_window_that_closes_before_the_hellos_ends_the_analysis() {
    let (_, c, s) = fixture("chromium-mlkem");
    let cut = Streams {
        client: &c[..1400],
        client_done: true,
        ..Streams::default()
    };
    assert_eq!(analyze(&cut, &Context::default()).progress, Progress::More);
    let cut = Streams {
        client: &c[..1400],
        server: s,
        client_done: true,
        server_done: false,
    };
    let analysis = analyze(&cut, &Context::default());
    assert_eq!(
        (analysis.progress, analysis.client_hello),
        (Progress::Done, None)
    );
    let silent = Streams {
        client: c,
        server_done: true,
        ..Streams::default()
    };
    let analysis = analyze(&silent, &Context::default());
    assert_eq!(analysis.progress, Progress::Done);
    assert_eq!(analysis.server_hello, None);
    assert!(analysis.client_hello.is_some());
}

#[test]
fn broken_bytes_are_malformed() {
    let (_, c, s) = fixture("curl-tls13-sni");
    let malformed = |client: &[u8], server: &[u8]| run(client, server).progress;
    // The extensions' length runs past the message.
    let mut bad = c.to_vec();
    let ext_len_at = {
        let sid = usize::from(c[5 + 4 + 34]);
        let at = 5 + 4 + 35 + sid;
        let ciphers = usize::from(u16::from_be_bytes([c[at], c[at + 1]]));
        let at = at + 2 + ciphers;
        at + 1 + usize::from(c[at])
    };
    bad[ext_len_at] ^= 0x40;
    assert_eq!(malformed(&bad, s), Progress::Malformed);
    // The second record of a split hello is application data.
    let mut framed = reframe(c, &[100]);
    framed[5 + 100] = 23;
    assert_eq!(malformed(&framed, s), Progress::Malformed);
    // A record longer than the record layer allows.
    let mut framed = reframe(c, &[100]);
    framed[5 + 100 + 3] = 0x60;
    assert_eq!(malformed(&framed, s), Progress::Malformed);
    // The server answers with something that is not a ServerHello.
    assert_eq!(
        malformed(c, b"HTTP/1.1 400 Bad Request\r\n"),
        Progress::Malformed
    );
    let mut other = s.to_vec();
    other[5] = 11;
    assert_eq!(malformed(c, &other), Progress::Malformed);
    // A handshake that is not a ClientHello is not identified at all.
    let mut finished = c.to_vec();
    finished[5] = 20;
    assert_eq!(identify(&client(&finished)), Ident::No);
}

#[test]
fn grease_values_are_recognized() {
    for v in [0x0a0a, 0x1a1a, 0xfafa] {
        assert!(super::is_grease(v), "{v:#06x}");
    }
    for v in [0x0304, 0x0a1a, 0x0a0b] {
        assert!(!super::is_grease(v), "{v:#06x}");
    }
}

#[test]
fn the_identification_order_names_every_capture_tls() {
    for (name, c, s) in FIXTURES {
        assert_eq!(
            crate::proto::identify(&both(c, s)),
            crate::proto::Identified::Known(crate::protocol::Protocol::Tls),
            "{name}"
        );
    }
}
