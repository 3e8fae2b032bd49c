//! Redis identification and analysis over captures of redis-cli (and an inline client)
//! against redis-server with `requirepass`.

use super::{analyze, identify, watch};
use crate::proto::ssh::tests::{check_identify, check_split_points, fixture};
use crate::protocol::{Credential, Ident, Progress, Protocol, Streams};

#[test]
fn identification() {
    check_identify(Protocol::Redis, identify);
}

#[test]
fn inline_is_not_http() {
    for (client, want) in [
        (&b"PING\r\n"[..], Ident::Yes),
        (b"get key\r\n", Ident::Yes),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ident::No),
        (b"FROB x\r\n", Ident::No),
        (b"GE", Ident::More),
    ] {
        let s = Streams {
            client,
            ..Streams::default()
        };
        assert_eq!(identify(&s), want, "{client:?}");
    }
}

#[test]
fn analysis() {
    let cases = [
        ("redis/wrong_password", Some(Credential::RedisAuth), 1),
        ("redis/right_password", Some(Credential::RedisAuth), 0),
        ("redis/hello_auth", Some(Credential::RedisAuth), 0),
        ("redis/inline_auth", Some(Credential::RedisAuth), 1),
        ("redis/no_password", None, 1),
    ];
    for (name, credential, failures) in cases {
        let a = check_split_points(fixture(name), analyze);
        assert_eq!(a.progress, Progress::Done, "{name}");
        assert_eq!(a.credential, credential, "{name}");
        assert_eq!(a.auth_failures, failures, "{name}");
    }
}

#[test]
fn watched_segments() {
    let cx = Default::default();
    let f = fixture("redis/wrong_password");
    assert_eq!(
        watch(false, f.client, &cx).credential,
        Some(Credential::RedisAuth)
    );
    assert_eq!(
        watch(false, b"auth secret\r\n", &cx).credential,
        Some(Credential::RedisAuth)
    );
    assert_eq!(watch(false, b"*1\r\n$4\r\nPING\r\n", &cx).credential, None);
    assert!(watch(true, f.server, &cx).auth_failure);
    assert!(!watch(true, b"+OK\r\n", &cx).auth_failure);
}
