//! SMTP identification and analysis over captures of swaks against aiosmtpd.

use super::{analyze, identify, watch};
use crate::proto::ssh::tests::{check_identify, check_split_points, fixture};
use crate::protocol::{Credential, Ident, Progress, Protocol, Streams};

#[test]
fn identification() {
    check_identify(Protocol::Smtp, identify);
}

#[test]
fn greeting_alone_is_not_enough() {
    let f = fixture("smtp/no_auth_quit");
    let greeting = Streams {
        server: &f.server[..33],
        ..Streams::default()
    };
    assert_eq!(identify(&greeting), Ident::More);
    let ftp = Streams {
        server: &f.server[..33],
        client: b"USER anonymous\r\n",
        ..Streams::default()
    };
    assert_eq!(identify(&ftp), Ident::No);
}

#[test]
fn auth_login_refused() {
    let a = check_split_points(fixture("smtp/auth_login_wrong"), analyze);
    assert_eq!(a.progress, Progress::Done);
    assert_eq!(a.credential, Some(Credential::SmtpAuth));
    assert_eq!(a.auth_failures, 1);
}

#[test]
fn auth_plain_accepted() {
    let a = check_split_points(fixture("smtp/auth_plain_ok"), analyze);
    assert_eq!(a.progress, Progress::Done);
    assert_eq!(a.credential, Some(Credential::SmtpAuth));
    assert_eq!(a.auth_failures, 0);
}

#[test]
fn starttls_hides_the_auth() {
    let a = check_split_points(fixture("smtp/starttls"), analyze);
    assert_eq!((a.progress, a.credential), (Progress::Encrypted, None));
}

#[test]
fn quit_without_auth() {
    let a = check_split_points(fixture("smtp/no_auth_quit"), analyze);
    assert_eq!(
        (a.progress, a.credential, a.auth_failures),
        (Progress::Done, None, 0)
    );
}

#[test]
fn watched_segments() {
    let cx = Default::default();
    assert!(
        watch(
            true,
            b"535 5.7.8 Authentication credentials invalid\r\n",
            &cx
        )
        .auth_failure
    );
    assert!(!watch(true, b"235 2.7.0 Authentication successful\r\n", &cx).auth_failure);
    assert_eq!(
        watch(false, b"auth PLAIN AGFsaWNlAHNlY3JldDY=\r\n", &cx).credential,
        Some(Credential::SmtpAuth)
    );
    assert_eq!(watch(false, b"MAIL FROM:<a@b>\r\n", &cx).credential, None);
}
