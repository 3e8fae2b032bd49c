//! HTTP/1.x identification, analysis and watching over real captures: curl against nginx
//! (Basic authentication accepted and refused, form and multipart logins, a password in the
//! query string, HTTP/1.0, two refused requests on one kept-alive connection).

use super::{analyze, identify, is_password_field, watch};
use crate::proto::tls::tests::{Fixture, Rng};
use crate::protocol::{Analysis, Context, Credential, Ident, LoginRule, Progress, Streams, Watch};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../fixtures/http/", $name, ".client")).as_slice(),
            include_bytes!(concat!("../../../fixtures/http/", $name, ".server")).as_slice(),
        )
    };
}

/// Every HTTP/1.x capture.
pub(crate) const FIXTURES: [Fixture; 8] = [
    fixture!("curl-basic-ok"),
    fixture!("curl-basic-401"),
    fixture!("curl-form"),
    fixture!("curl-page"),
    fixture!("curl-multipart"),
    fixture!("curl-query-pwd"),
    fixture!("curl-http10-401"),
    fixture!("curl-keepalive-401x2"),
];

/// What each capture holds: its credential and its failed logins.
const EXPECTED: [(&str, Option<Credential>, u32); 8] = [
    ("curl-basic-ok", Some(Credential::HttpBasic), 0),
    ("curl-basic-401", Some(Credential::HttpBasic), 1),
    ("curl-form", Some(Credential::HttpForm), 0),
    ("curl-page", None, 0),
    ("curl-multipart", Some(Credential::HttpForm), 0),
    ("curl-query-pwd", Some(Credential::HttpForm), 0),
    ("curl-http10-401", None, 1),
    ("curl-keepalive-401x2", Some(Credential::HttpBasic), 2),
];

fn fixture(name: &str) -> Fixture {
    FIXTURES
        .into_iter()
        .find(|f| f.0 == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn client(bytes: &[u8]) -> Streams<'_> {
    Streams {
        client: bytes,
        ..Streams::default()
    }
}

fn run_with(c: &[u8], s: &[u8], rules: &[LoginRule]) -> Analysis {
    let streams = Streams {
        client: c,
        server: s,
        ..Streams::default()
    };
    analyze(&streams, &Context { login_rules: rules })
}

fn run(c: &[u8], s: &[u8]) -> Analysis {
    run_with(c, s, &[])
}

#[test]
fn identifies_every_capture_and_every_prefix_is_never_no() {
    for (name, c, s) in FIXTURES {
        for k in 0..=c.len() {
            assert_ne!(identify(&client(&c[..k])), Ident::No, "{name}: prefix {k}");
        }
        assert_eq!(identify(&client(c)), Ident::Yes, "{name}");
        let with_server = Streams {
            client: c,
            server: s,
            ..Streams::default()
        };
        assert_eq!(identify(&with_server), Ident::Yes, "{name}");
    }
}

#[test]
fn request_lines() {
    let long = [b"GET /".as_slice(), &[b'a'; 9000]].concat();
    let table: [(&[u8], Ident); 16] = [
        (b"", Ident::More),
        (b"GE", Ident::More),
        (b"PROPFI", Ident::More),
        (b"GET /very/long/path", Ident::More),
        (b"GET /login?a=b HTTP/1.", Ident::More),
        (b"GET / HTTP/1.1\r", Ident::More),
        (b"GET / HTTP/1.1\r\n", Ident::Yes),
        (b"OPTIONS * HTTP/1.0\r\n", Ident::Yes),
        (b"CONNECT crm.example.com:443 HTTP/1.1\r\n", Ident::Yes),
        (b"GETX / HTTP/1.1\r\n", Ident::No),
        (b"get / HTTP/1.1\r\n", Ident::No),
        (b"GET  / HTTP/1.1\r\n", Ident::No),
        (b"GET / HTTP/2.0\r\n", Ident::No),
        (b"GET / HTTP/1.1 \r\n", Ident::No),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Ident::No),
        (&long, Ident::No),
    ];
    for (bytes, expected) in table {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
        assert_eq!(identify(&client(bytes)), expected, "{shown:?}");
    }
    let done = Streams {
        client: b"GET / HTTP/1.1",
        client_done: true,
        ..Streams::default()
    };
    assert_eq!(identify(&done), Ident::No);
    let server_first = Streams {
        server: b"220 mail ESMTP\r\n",
        ..Streams::default()
    };
    assert_eq!(identify(&server_first), Ident::No);
}

#[test]
fn other_protocols_captures_are_never_http() {
    let others = crate::proto::tls::tests::FIXTURES
        .iter()
        .chain(crate::proto::http2::tests::FIXTURES.iter());
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
fn random_streams_are_never_http() {
    let mut rng = Rng::new(0x7e57_0003);
    for i in 0..10_000 {
        let prefix: &[u8] = match i % 3 {
            0 => b"",
            1 => b"GET ",
            _ => &[0x16, 0x03, 0x01],
        };
        let len = rng.below(2000);
        let bytes = rng.bytes(prefix, len);
        assert_ne!(identify(&client(&bytes)), Ident::Yes, "stream {i}");
    }
}

#[test]
fn analysis_of_every_capture() {
    for (name, credential, auth_failures) in EXPECTED {
        let (_, c, s) = fixture(name);
        let expected = Analysis {
            progress: Progress::Done,
            credential,
            auth_failures,
            ..Analysis::default()
        };
        assert_eq!(run(c, s), expected, "{name}");
    }
}

fn rule(method: Option<&str>, path: &str, status: u16) -> LoginRule {
    LoginRule {
        method: method.map(str::to_owned),
        path: path.to_owned(),
        status,
    }
}

#[test]
fn login_rules_count_failures_that_are_not_401() {
    let table = [
        // POST /login answered 200 (the form again).
        ("curl-form", rule(Some("POST"), "/login", 200), 1),
        ("curl-form", rule(None, "/login", 200), 1),
        ("curl-form", rule(Some("GET"), "/login", 200), 0),
        ("curl-form", rule(Some("POST"), "/login", 302), 0),
        ("curl-form", rule(Some("POST"), "/log", 200), 0),
        // The path is the target without its query.
        ("curl-query-pwd", rule(Some("GET"), "/login", 200), 1),
        // A 401 that a rule also matches counts once.
        ("curl-basic-401", rule(None, "/secure/", 401), 1),
        (
            "curl-keepalive-401x2",
            rule(Some("GET"), "/secure/", 401),
            2,
        ),
        ("curl-basic-ok", rule(Some("GET"), "/secure/", 200), 1),
        ("curl-page", rule(Some("GET"), "/secure/", 200), 0),
    ];
    for (name, rule, expected) in table {
        let (_, c, s) = fixture(name);
        let rules = [rule];
        assert_eq!(
            run_with(c, s, &rules).auth_failures,
            expected,
            "{name} {rules:?}"
        );
    }
}

#[test]
fn every_split_point_gives_the_same_answer_or_more() {
    let rules = [rule(Some("POST"), "/login", 200)];
    for (name, c, s) in FIXTURES {
        let whole = run_with(c, s, &rules);
        assert_eq!(whole.progress, Progress::Done, "{name}");
        for k in 0..c.len() {
            let part = run_with(&c[..k], s, &rules);
            if part.progress != Progress::More {
                assert_eq!(part, whole, "{name}: client prefix {k}");
            }
        }
        // A server prefix may end after a response the whole window follows with more: its
        // answer counts the failures seen so far, and the later ones are left to `watch`.
        for k in 0..s.len() {
            let part = run_with(c, &s[..k], &rules);
            if part.progress != Progress::More {
                assert_eq!(
                    part.credential, whole.credential,
                    "{name}: server prefix {k}"
                );
                assert!(
                    part.auth_failures <= whole.auth_failures,
                    "{name}: server prefix {k}"
                );
            }
        }
    }
}

#[test]
fn a_kept_alive_connection_counts_each_failure_once() {
    let (_, c, s) = fixture("curl-keepalive-401x2");
    let second = s
        .windows(12)
        .rposition(|w| w == b"HTTP/1.1 401")
        .unwrap_or_else(|| panic!("no second response"));
    assert!(second > 0);
    let first = run(c, &s[..second]);
    assert_eq!(first.progress, Progress::Done);
    assert_eq!(first.auth_failures, 1);
    assert!(watch(true, &s[second..], &Context::default()).auth_failure);
    assert_eq!(run(c, s).auth_failures, 2);
}

#[test]
fn a_side_that_can_grow_no_more_ends_the_analysis() {
    let (_, c, _) = fixture("curl-basic-401");
    let closed = Streams {
        client: c,
        server_done: true,
        ..Streams::default()
    };
    let analysis = analyze(&closed, &Context::default());
    assert_eq!(analysis.progress, Progress::Done);
    assert_eq!(analysis.credential, Some(Credential::HttpBasic));
    assert_eq!(run(c, b"").progress, Progress::More);
}

#[test]
fn bytes_that_break_http_are_malformed() {
    let (_, c, s) = fixture("curl-page");
    assert_eq!(
        run(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", s).progress,
        Progress::Malformed
    );
    assert_eq!(
        run(c, b"SSH-2.0-OpenSSH_9.2\r\n").progress,
        Progress::Malformed
    );
    let bad_length = b"POST /login HTTP/1.1\r\nContent-Length: x\r\n\r\n";
    assert_eq!(run(bad_length, s).progress, Progress::Malformed);
}

/// The urlencoded body of the form capture, sent in chunks of `size` bytes.
fn chunked_form(size: usize) -> Vec<u8> {
    let (_, c, _) = fixture("curl-form");
    let text = String::from_utf8_lossy(c);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head"));
    let head = head.replace("Content-Length: 31", "Transfer-Encoding: chunked");
    let mut out = format!("{head}\r\n\r\n").into_bytes();
    for chunk in body.as_bytes().chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_chunked_form_is_read_across_its_chunks() {
    let (_, _, s) = fixture("curl-form");
    for size in [1, 3, 7, 31] {
        let c = chunked_form(size);
        let whole = run(&c, s);
        assert_eq!(
            whole.credential,
            Some(Credential::HttpForm),
            "chunks of {size}"
        );
        assert_eq!(whole.progress, Progress::Done);
        for k in 0..c.len() {
            let part = run(&c[..k], s);
            if part.progress != Progress::More {
                assert_eq!(part, whole, "chunks of {size}: prefix {k}");
            }
        }
    }
}

#[test]
fn only_part_headers_name_multipart_fields() {
    let (_, c, s) = fixture("curl-multipart");
    // The same upload, but the part is named "comment" and its contents mention a password
    // field (an uploaded HTML form): no credential.
    let text = String::from_utf8_lossy(c).replace(
        "name=\"password\"\r\n\r\nhunter2",
        "name=\"comment\"\r\n\r\nname=\"pass",
    );
    assert_eq!(run(text.as_bytes(), s).credential, None);
    assert_eq!(run(c, s).credential, Some(Credential::HttpForm));
}

#[test]
fn password_field_names() {
    let table: [(&[u8], bool); 12] = [
        (b"password", true),
        (b"Password", true),
        (b"PASSWD", true),
        (b"pwd", true),
        (b"pass", true),
        (b"passphrase", true),
        (b"user[password]", true),
        (b"login.pwd", true),
        (b"username", false),
        (b"passport", false),
        (b"password_hint", false),
        (b"", false),
    ];
    for (name, expected) in table {
        assert_eq!(
            is_password_field(name),
            expected,
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    // Keys are URL-decoded; a key needs its '=' (a cut "pass" of "passport" is not one).
    let check = |target: &[u8], expected| {
        let request = [b"GET ".as_slice(), target, b" HTTP/1.1\r\n\r\n"].concat();
        let (_, _, s) = fixture("curl-page");
        assert_eq!(run(&request, s).credential, expected, "{request:?}");
    };
    check(b"/login?p%61ssword=x", Some(Credential::HttpForm));
    check(b"/login?user=a&pass", None);
    check(b"/login?user=a#password=x", None);
    let (_, _, s) = fixture("curl-page");
    let proxy = b"GET http://crm.example.com/ HTTP/1.1\r\nProxy-Authorization: basic dTpw\r\n\r\n";
    assert_eq!(run(proxy, s).credential, Some(Credential::HttpBasic));
    let bearer = b"GET / HTTP/1.1\r\nAuthorization: Bearer Basic\r\n\r\n";
    assert_eq!(run(bearer, s).credential, None);
}

#[test]
fn the_identification_order_names_every_capture_http() {
    for (name, c, s) in FIXTURES {
        let streams = Streams {
            client: c,
            server: s,
            ..Streams::default()
        };
        assert_eq!(
            crate::proto::identify(&streams),
            crate::proto::Identified::Known(crate::protocol::Protocol::Http),
            "{name}"
        );
    }
}

#[test]
fn watch_sees_401s_and_credentials_at_a_segment_start() {
    let cx = Context::default();
    for (name, credential, failures) in EXPECTED {
        let (_, c, s) = fixture(name);
        let from_server = watch(true, s, &cx);
        assert_eq!(from_server.auth_failure, failures > 0, "{name}");
        assert_eq!(from_server.credential, None, "{name}");
        let from_client = watch(false, c, &cx);
        assert_eq!(
            from_client,
            Watch {
                credential,
                auth_failure: false
            },
            "{name}"
        );
    }
    let (_, c, s) = fixture("curl-basic-401");
    // The header cut before its scheme; a segment in the middle of a message.
    let cut = c
        .windows(18)
        .position(|w| w == b"Authorization: Bas")
        .map_or(0, |at| at + 18);
    assert_eq!(watch(false, &c[..cut], &cx).credential, None);
    assert_eq!(watch(false, &c[1..], &cx).credential, None);
    assert!(!watch(true, &s[1..], &cx).auth_failure);
    assert!(!watch(true, b"HTTP/1.1 4011 x\r\n", &cx).auth_failure);
    assert!(watch(true, b"HTTP/1.0 401", &cx).auth_failure);
}

#[test]
fn a_chunk_size_near_the_top_of_usize_ends_the_body_instead_of_wrapping() {
    for size in ["FFFFFFFFFFFFFFEC", "FFFFFFFFFFFFFFFF", "FFFFFFFFFFFFFFFE"] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: crm\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\npassword=x&rest"
        );
        let s = crate::protocol::Streams {
            client: request.as_bytes(),
            server: b"",
            client_done: true,
            server_done: false,
        };
        // Returns at once; what it says about the body does not matter here.
        let _ = super::analyze(&s, &crate::protocol::Context::default());
        let response =
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nbody");
        let s = crate::protocol::Streams {
            client: b"GET / HTTP/1.1\r\nHost: crm\r\n\r\n",
            server: response.as_bytes(),
            client_done: false,
            server_done: true,
        };
        let _ = super::analyze(&s, &crate::protocol::Context::default());
    }
}

#[test]
fn a_multipart_boundary_longer_than_rfc_2046_allows_is_not_searched() {
    let boundary = "b".repeat(2_700);
    let body = format!("--{}\r\n", "b".repeat(2_699)).repeat(2);
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: crm\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = std::time::Instant::now();
    for cut in (0..request.len()).step_by(97) {
        let s = crate::protocol::Streams {
            client: &request.as_bytes()[..cut],
            server: b"",
            client_done: false,
            server_done: false,
        };
        let _ = super::analyze(&s, &crate::protocol::Context::default());
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
