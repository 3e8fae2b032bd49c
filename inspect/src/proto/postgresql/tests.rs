//! PostgreSQL identification and analysis over captures of psql against PostgreSQL 15.

use super::{analyze, identify};
use crate::proto::ssh::tests::{check_identify, check_split_points, fixture, whole};
use crate::protocol::{Credential, Ident, Progress, Protocol, Streams};

#[test]
fn identification() {
    check_identify(Protocol::Postgresql, identify);
}

#[test]
fn opening_messages() {
    let cases: [(&[u8], Ident); 7] = [
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Ident::Yes),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x30", Ident::Yes),
        (
            b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39",
            Ident::Yes,
        ),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2e", Ident::No),
        // A StartupMessage without `user`.
        (
            b"\x00\x00\x00\x15\x00\x03\x00\x00database\x00db\x00\x00",
            Ident::No,
        ),
        (
            b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00",
            Ident::Yes,
        ),
        // Protocol 2.0 is long gone.
        (
            b"\x00\x00\x00\x12\x00\x02\x00\x00user\x00bob\x00\x00",
            Ident::No,
        ),
    ];
    for (client, want) in cases {
        let s = Streams {
            client,
            ..Streams::default()
        };
        assert_eq!(identify(&s), want, "{client:?}");
    }
}

#[test]
fn cleartext_password() {
    for (name, failures) in [
        ("postgresql/cleartext_ok", 0),
        ("postgresql/cleartext_wrong", 1),
        ("postgresql/sslrequest_refused_cleartext", 0),
    ] {
        let a = check_split_points(fixture(name), analyze);
        assert_eq!(a.progress, Progress::Done, "{name}");
        assert_eq!(
            a.credential,
            Some(Credential::PostgresqlCleartext),
            "{name}"
        );
        assert_eq!(a.auth_failures, failures, "{name}");
    }
}

#[test]
fn md5_password() {
    for (name, failures) in [("postgresql/md5_ok", 0), ("postgresql/md5_wrong", 1)] {
        let a = check_split_points(fixture(name), analyze);
        assert_eq!(a.progress, Progress::Done, "{name}");
        assert_eq!(a.credential, Some(Credential::PostgresqlMd5), "{name}");
        assert_eq!(a.auth_failures, failures, "{name}");
    }
}

#[test]
fn scram_is_not_a_plaintext_credential() {
    let a = check_split_points(fixture("postgresql/scram_ok"), analyze);
    assert_eq!(a.progress, Progress::Done);
    assert_eq!(a.credential, None);
    assert_eq!(a.auth_failures, 0);
}

#[test]
fn tls_accepted() {
    let a = check_split_points(fixture("postgresql/ssl_require"), analyze);
    assert_eq!(a.progress, Progress::Encrypted);
    assert_eq!(a.credential, None);
}

#[test]
fn waits_for_the_password_before_done() {
    // The server's whole answer is in but the client's PasswordMessage is not yet.
    let f = fixture("postgresql/cleartext_wrong");
    let s = Streams {
        client: &f.client[..0x40],
        server: f.server,
        ..Streams::default()
    };
    assert_eq!(analyze(&s, &Default::default()).progress, Progress::More);
    assert_eq!(
        analyze(&whole(f), &Default::default()).credential,
        Some(Credential::PostgresqlCleartext)
    );
}
