//! SSH identification over real captures, plus the corpus every protocol's tests share: the
//! captured sessions of each protocol, a seeded byte generator, and the identification and
//! "every split point" checks.

use super::{analyze, identify};
use crate::protocol::{Analysis, Context, Ident, Progress, Protocol, Streams};

/// One captured session: what the client and the server sent, from their first byte.
pub(crate) struct Fixture {
    pub name: &'static str,
    pub protocol: Protocol,
    pub client: &'static [u8],
    pub server: &'static [u8],
}

macro_rules! fixture {
    ($protocol:ident, $dir:literal, $name:literal) => {
        Fixture {
            name: concat!($dir, "/", $name),
            protocol: Protocol::$protocol,
            client: include_bytes!(concat!("../../../fixtures/", $dir, "/", $name, ".client")),
            server: include_bytes!(concat!("../../../fixtures/", $dir, "/", $name, ".server")),
        }
    };
}

/// Every capture, of every protocol.
pub(crate) const ALL: &[Fixture] = &[
    fixture!(Postgresql, "postgresql", "cleartext_ok"),
    fixture!(Postgresql, "postgresql", "cleartext_wrong"),
    fixture!(Postgresql, "postgresql", "md5_ok"),
    fixture!(Postgresql, "postgresql", "md5_wrong"),
    fixture!(Postgresql, "postgresql", "scram_ok"),
    fixture!(Postgresql, "postgresql", "ssl_require"),
    fixture!(Postgresql, "postgresql", "sslrequest_refused_cleartext"),
    fixture!(Mysql, "mysql", "clear_password_switch"),
    fixture!(Mysql, "mysql", "host_not_allowed"),
    fixture!(Mysql, "mysql", "right_password"),
    fixture!(Mysql, "mysql", "ssl_request"),
    fixture!(Mysql, "mysql", "wrong_password"),
    fixture!(Redis, "redis", "hello_auth"),
    fixture!(Redis, "redis", "inline_auth"),
    fixture!(Redis, "redis", "no_password"),
    fixture!(Redis, "redis", "right_password"),
    fixture!(Redis, "redis", "wrong_password"),
    fixture!(Ssh, "ssh", "banner_exchange"),
    fixture!(Smtp, "smtp", "auth_login_wrong"),
    fixture!(Smtp, "smtp", "auth_plain_ok"),
    fixture!(Smtp, "smtp", "no_auth_quit"),
    fixture!(Smtp, "smtp", "starttls"),
];

/// The capture named `name` (`"<protocol>/<name>"`).
pub(crate) fn fixture(name: &str) -> &'static Fixture {
    ALL.iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// Both directions of `f`, complete.
pub(crate) fn whole(f: &Fixture) -> Streams<'static> {
    Streams {
        client: f.client,
        server: f.server,
        client_done: true,
        server_done: true,
    }
}

/// A small seeded generator (xorshift64*), so random streams are the same on every run.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }

    /// `len` random bytes after `head`.
    pub fn bytes(&mut self, head: &[u8], len: usize) -> Vec<u8> {
        let mut out = head.to_vec();
        out.extend((0..len).map(|_| self.next().to_le_bytes()[3]));
        out
    }
}

/// Plausible first bytes of several protocols, to start random streams with.
pub(crate) const HEADERS: &[&[u8]] = &[
    b"",
    b"*",
    b"*2\r\n$4\r\n",
    b"SSH-",
    b"SSH-2.0",
    b"\x00\x00\x00\x08",
    b"\x00\x00\x00\x08\x04\xd2",
    b"\x00\x00\x00\x40\x00\x03\x00\x00",
    b"\x64\x00\x00\x00\x0a5.",
    b"220 ",
    b"EHLO ",
    b"AUTH ",
    b"+",
    b"-",
    b"R\x00\x00\x00\x08",
];

/// Checks `identify` for `protocol`: its own captures are `Yes` when whole and never `No` on
/// any prefix (client growing with the server empty or whole, server growing with the client
/// empty or whole); other protocols' captures and 10,000 random streams are never `Yes`.
pub(crate) fn check_identify(protocol: Protocol, identify: fn(&Streams<'_>) -> Ident) {
    let mut own = 0;
    for f in ALL {
        let mine = f.protocol == protocol;
        own += usize::from(mine);
        let got = identify(&whole(f));
        if mine {
            assert_eq!(got, Ident::Yes, "{}: whole capture", f.name);
        } else {
            assert_ne!(got, Ident::Yes, "{}: taken for {protocol}", f.name);
        }
        let empty: &[u8] = b"";
        let mut sweeps: Vec<Streams<'_>> = Vec::new();
        for k in 0..=f.client.len() {
            for server in [empty, f.server] {
                sweeps.push(Streams {
                    client: &f.client[..k],
                    server,
                    ..Streams::default()
                });
            }
        }
        for k in 0..=f.server.len() {
            for client in [empty, f.client] {
                sweeps.push(Streams {
                    client,
                    server: &f.server[..k],
                    ..Streams::default()
                });
            }
        }
        for s in &sweeps {
            let got = identify(s);
            let (c, sv) = (s.client.len(), s.server.len());
            if mine {
                assert_ne!(got, Ident::No, "{}: prefix client {c} server {sv}", f.name);
            } else {
                assert_ne!(
                    got,
                    Ident::Yes,
                    "{}: prefix {c}/{sv} taken for {protocol}",
                    f.name
                );
            }
        }
    }
    assert!(own > 0, "no capture of {protocol}");
    let mut rng = Rng::new(0x5eed_0000 + u64::try_from(protocol.index()).unwrap_or(0));
    for i in 0..10_000 {
        let head = HEADERS[i % HEADERS.len()];
        let client_len = rng.below(2000);
        let server_len = rng.below(2000);
        let client = rng.bytes(if i % 2 == 0 { head } else { b"" }, client_len);
        let server = rng.bytes(if i % 2 == 1 { head } else { b"" }, server_len);
        for done in [false, true] {
            let s = Streams {
                client: &client,
                server: &server,
                client_done: done,
                server_done: done,
            };
            assert_ne!(
                identify(&s),
                Ident::Yes,
                "random stream {i} taken for {protocol}"
            );
        }
    }
}

/// Checks that `analyze` never gives a final answer on a prefix (the client cut at any byte
/// with the server whole, and the other way round, neither side closed) that differs from the whole capture's.
pub(crate) fn check_split_points(
    f: &Fixture,
    analyze: fn(&Streams<'_>, &Context<'_>) -> Analysis,
) -> Analysis {
    let cx = Context::default();
    let full = analyze(&whole(f), &cx);
    assert_ne!(
        full.progress,
        Progress::More,
        "{}: whole capture not final",
        f.name
    );
    for k in 0..f.client.len() {
        let s = Streams {
            client: &f.client[..k],
            server: f.server,
            ..Streams::default()
        };
        let got = analyze(&s, &cx);
        if got.progress != Progress::More {
            assert_eq!(got, full, "{}: client cut at {k}", f.name);
        }
    }
    for k in 0..f.server.len() {
        let s = Streams {
            client: f.client,
            server: &f.server[..k],
            ..Streams::default()
        };
        let got = analyze(&s, &cx);
        if got.progress != Progress::More {
            assert_eq!(got, full, "{}: server cut at {k}", f.name);
        }
    }
    full
}

#[test]
fn identification() {
    check_identify(Protocol::Ssh, identify);
}

#[test]
fn banner_of_either_side() {
    let f = fixture("ssh/banner_exchange");
    let server_only = Streams {
        server: f.server,
        ..Streams::default()
    };
    assert_eq!(identify(&server_only), Ident::Yes);
    let client_only = Streams {
        client: f.client,
        ..Streams::default()
    };
    assert_eq!(identify(&client_only), Ident::Yes);
    let unfinished = Streams {
        client: &f.client[..8],
        ..Streams::default()
    };
    assert_eq!(identify(&unfinished), Ident::More);
    let old = Streams {
        client: b"SSH-1.99-OpenSSH_3.9\r\n",
        ..Streams::default()
    };
    assert_eq!(identify(&old), Ident::Yes);
    let version_one = Streams {
        client: b"SSH-1.5-old\r\n",
        ..Streams::default()
    };
    assert_eq!(identify(&version_one), Ident::No);
}

#[test]
fn server_lines_before_the_banner() {
    // The captured server banner, preceded by the kind of notice RFC 4253 allows.
    let f = fixture("ssh/banner_exchange");
    let mut server = b"Authorized use only.\r\nAll sessions are logged.\r\n".to_vec();
    server.extend_from_slice(f.server);
    let s = Streams {
        server: &server,
        ..Streams::default()
    };
    assert_eq!(identify(&s), Ident::Yes);
    for k in 0..server.len() {
        let s = Streams {
            server: &server[..k],
            ..Streams::default()
        };
        assert_ne!(identify(&s), Ident::No, "cut at {k}");
    }
    // Past the bound, the prelude is not looked through.
    let mut long = b"notice\r\n".repeat(200);
    long.extend_from_slice(f.server);
    let s = Streams {
        server: &long,
        ..Streams::default()
    };
    assert_eq!(identify(&s), Ident::No);
}

#[test]
fn nothing_to_analyze() {
    let f = fixture("ssh/banner_exchange");
    let a = check_split_points(f, analyze);
    assert_eq!(a.progress, Progress::Done);
    assert_eq!(a.credential, None);
    assert_eq!(a.auth_failures, 0);
}
