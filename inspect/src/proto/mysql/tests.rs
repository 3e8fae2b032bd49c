//! MySQL identification and analysis over captures of the mariadb client against MariaDB 10.11.

use super::{analyze, identify};
use crate::proto::ssh::tests::{check_identify, check_split_points, fixture};
use crate::protocol::{Credential, Ident, Progress, Protocol, Streams};

#[test]
fn identification() {
    check_identify(Protocol::Mysql, identify);
}

#[test]
fn server_speaks_first() {
    let f = fixture("mysql/wrong_password");
    let greeting_only = Streams {
        server: f.server,
        ..Streams::default()
    };
    assert_eq!(identify(&greeting_only), Ident::Yes);
    let refused = fixture("mysql/host_not_allowed");
    assert!(refused.client.is_empty());
    assert_eq!(
        identify(&crate::proto::ssh::tests::whole(refused)),
        Ident::Yes
    );
}

#[test]
fn wrong_password_is_a_failure() {
    let a = check_split_points(fixture("mysql/wrong_password"), analyze);
    assert_eq!(
        (a.progress, a.credential, a.auth_failures),
        (Progress::Done, None, 1)
    );
}

#[test]
fn right_password() {
    let a = check_split_points(fixture("mysql/right_password"), analyze);
    assert_eq!(
        (a.progress, a.credential, a.auth_failures),
        (Progress::Done, None, 0)
    );
}

#[test]
fn clear_password_after_switch() {
    let a = check_split_points(fixture("mysql/clear_password_switch"), analyze);
    assert_eq!(a.progress, Progress::Done);
    assert_eq!(a.credential, Some(Credential::MysqlCleartext));
    assert_eq!(a.auth_failures, 1);
}

#[test]
fn ssl_request_is_encrypted() {
    let a = check_split_points(fixture("mysql/ssl_request"), analyze);
    assert_eq!((a.progress, a.credential), (Progress::Encrypted, None));
}

#[test]
fn host_refused_is_done() {
    let a = check_split_points(fixture("mysql/host_not_allowed"), analyze);
    assert_eq!((a.progress, a.auth_failures), (Progress::Done, 0));
}
