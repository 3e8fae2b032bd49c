//! The portal over real TCP sockets on 127.0.0.0/8, against a fake agent that answers from a
//! table keyed by the client's source address (127.0.0.N is peer N).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::*;

/// The code the fake agent takes for alice.
const RIGHT_CODE: &str = "123456";
/// 2026-01-01T00:00:00Z.
const EXPIRES: u64 = 1_767_225_600;

const ALICE: u8 = 1;
const BOB_LOCKED: u8 = 2;
const CAROL_NO_MFA: u8 = 3;
const NOBODY: u8 = 4;
const DAVE_UNAVAILABLE: u8 = 5;
/// The fake agent drops the reply channel of this client's requests.
const DROPPED: u8 = 6;

const FAST: Limits = Limits {
    io_timeout: Duration::from_millis(300),
    agent_timeout: Duration::from_millis(300),
    connections: 64,
    per_source: 64,
};

/// How long a test waits for an answer before it fails.
const PATIENCE: Duration = Duration::from_secs(2);

fn alice_view() -> PeerView {
    PeerView {
        peer: "alice".to_owned(),
        mfa_required: true,
        enabled: true,
        enrolled: true,
        session_expires: None,
        locked_until: None,
    }
}

/// The fake agent's table; `None` drops the reply channel.
fn agent(request: PortalRequest) -> Option<PortalReply> {
    let IpAddr::V4(from) = request.from else {
        return Some(PortalReply::UnknownPeer);
    };
    let name = |peer: &str| peer.to_owned();
    let reply = match (from.octets()[3], request.action) {
        (ALICE, PortalAction::Show) => PortalReply::View(alice_view()),
        (ALICE, PortalAction::Open { code }) if code == RIGHT_CODE => PortalReply::Opened {
            peer: name("alice"),
            expires: EXPIRES,
        },
        (ALICE, PortalAction::Open { .. }) => PortalReply::Wrong {
            peer: name("alice"),
            remaining: 4,
        },
        (ALICE, PortalAction::Close) => PortalReply::Closed {
            peer: name("alice"),
            had_session: true,
        },
        (BOB_LOCKED, _) => PortalReply::LockedOut {
            peer: name("bob"),
            until: EXPIRES,
        },
        (CAROL_NO_MFA, _) => PortalReply::NotRequired {
            peer: name("carol"),
        },
        (DAVE_UNAVAILABLE, _) => PortalReply::Unavailable {
            peer: name("dave"),
            reason: name("the audit log cannot be written"),
        },
        (DROPPED, _) => return None,
        _ => PortalReply::UnknownPeer,
    };
    Some(reply)
}

/// Starts the portal on 127.0.0.1 with the fake agent behind it.
async fn start(limits: Limits) -> SocketAddr {
    let (requests, mut questions) = mpsc::channel::<PortalQuery>(8);
    tokio::spawn(async move {
        while let Some((question, reply_to)) = questions.recv().await {
            if let Some(reply) = agent(question) {
                let _ = reply_to.send(reply);
            }
        }
    });
    start_with(limits, requests)
}

fn start_with(limits: Limits, requests: mpsc::Sender<PortalQuery>) -> SocketAddr {
    let mut listeners =
        bind(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], 0, None).expect("bind 127.0.0.1:0");
    let listener = listeners.pop().expect("one listener");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(serve_with(listener, requests, limits));
    addr
}

/// Connects from 127.0.0.`peer`.
async fn connect(server: SocketAddr, peer: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, peer], 0)))
        .expect("bind the source address");
    socket.connect(server).await.expect("connect")
}

/// An answer as the client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    fn html(&self) -> &str {
        assert_eq!(
            self.header("Content-Type"),
            Some("text/html; charset=utf-8")
        );
        &self.body
    }
}

/// Reads the whole answer until the portal closes the connection.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = parsed.parse(&bytes).expect("an HTTP answer") else {
        panic!("an incomplete answer: {bytes:?}");
    };
    let answer = Answer {
        status: parsed.code.expect("a status"),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).expect("UTF-8 header");
                (h.name.to_owned(), value)
            })
            .collect(),
        body: String::from_utf8(bytes[head_len..].to_vec()).expect("UTF-8 body"),
    };
    assert_has_portal_headers(&answer);
    answer
}

fn assert_has_portal_headers(answer: &Answer) {
    let expected = [
        ("Cache-Control", "no-store"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Connection", "close"),
        ("Vary", "Accept-Language"),
    ];
    for (name, value) in expected {
        assert_eq!(answer.header(name), Some(value), "{name} in {answer:?}");
    }
    let length = answer.body.len().to_string();
    assert_eq!(answer.header("Content-Length"), Some(length.as_str()));
    let lang = answer.header("Content-Language");
    assert!(
        matches!(lang, Some("en" | "ru")),
        "Content-Language {lang:?}"
    );
}

/// Sends `request` from 127.0.0.`peer` and reads the answer.
async fn exchange(server: SocketAddr, peer: u8, request: &[u8]) -> Answer {
    let mut stream = connect(server, peer).await;
    stream.write_all(request).await.expect("send");
    read_answer(&mut stream).await
}

/// A request with `Host`, the given headers and, with a body, its `Content-Length`.
fn request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";
const JSON_BODY: &str = "Content-Type: application/json";
const BROWSER: &str = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const CURL: &str = "Accept: */*";

#[tokio::test]
async fn get_root_shows_the_peer_and_the_code_form() {
    let server = start(FAST).await;
    let answer = exchange(server, ALICE, &request("GET", "/", &[CURL], "")).await;
    assert_eq!(answer.status, 200);
    let html = answer.html();
    assert!(html.contains("<strong>alice</strong>"), "{html}");
    assert!(html.contains("No session is open"), "{html}");
    assert!(
        html.contains(r#"<form method="post" action="/session">"#),
        "{html}"
    );
    assert!(html.contains(r#"<label for="code">"#), "{html}");
    assert!(
        html.contains(r#"<input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required autofocus>"#),
        "{html}"
    );
    assert!(html.contains(r#"<button type="submit">"#), "{html}");
    assert!(
        !html.contains("/session/end"),
        "no log-out without a session: {html}"
    );
}

#[tokio::test]
async fn get_session_is_the_view_as_json() {
    let server = start(FAST).await;
    let answer = exchange(server, ALICE, &request("GET", "/session", &[], "")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({
            "peer": "alice",
            "mfa_required": true,
            "enabled": true,
            "enrolled": true,
            "session_expires": null,
            "locked_until": null,
        })
    );
}

#[tokio::test]
async fn right_code_in_a_form_opens_a_session() {
    let server = start(FAST).await;
    // Spaces inside and around the code are dropped before the agent sees it.
    let post = request("POST", "/session", &[FORM, CURL], "code=+123+%20456+");
    let answer = exchange(server, ALICE, &post).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"peer": "alice", "expires": "2026-01-01T00:00:00Z"})
    );
}

#[tokio::test]
async fn wrong_code_in_json_is_401_with_the_attempts_left() {
    let server = start(FAST).await;
    let post = request("POST", "/session", &[JSON_BODY], r#"{"code":"000000"}"#);
    let answer = exchange(server, ALICE, &post).await;
    assert_eq!(answer.status, 401);
    let body = answer.json();
    assert_eq!(body["peer"], "alice");
    assert_eq!(body["error"], "wrong_code");
    assert_eq!(body["remaining"], 4);
}

#[tokio::test]
async fn agent_verdicts_become_status_codes() {
    let server = start(FAST).await;
    let post = request("POST", "/session", &[JSON_BODY], r#"{"code":"123456"}"#);
    let check = |peer: u8, status: u16, expected: Value| {
        let post = post.clone();
        async move {
            let answer = exchange(server, peer, &post).await;
            assert_eq!(answer.status, status, "peer {peer}: {answer:?}");
            let body = answer.json();
            for (key, value) in expected.as_object().expect("an object") {
                assert_eq!(&body[key], value, "peer {peer}: {key} in {body}");
            }
        }
    };
    check(
        BOB_LOCKED,
        423,
        json!({"peer": "bob", "error": "locked_out", "until": "2026-01-01T00:00:00Z"}),
    )
    .await;
    check(
        CAROL_NO_MFA,
        403,
        json!({"peer": "carol", "error": "mfa_not_required"}),
    )
    .await;
    check(NOBODY, 403, json!({"error": "unknown_peer"})).await;
    check(
        DAVE_UNAVAILABLE,
        503,
        json!({"error": "unavailable", "reason": "the audit log cannot be written"}),
    )
    .await;
    check(DROPPED, 503, json!({"error": "agent_unavailable"})).await;
}

#[tokio::test]
async fn browsers_get_the_page_with_the_message() {
    let server = start(FAST).await;
    let wrong = request("POST", "/session", &[FORM, BROWSER], "code=000000");
    let answer = exchange(server, ALICE, &wrong).await;
    assert_eq!(answer.status, 401);
    let html = answer.html();
    assert!(
        html.contains(r#"<p role="alert">Wrong code, 4 attempts left.</p>"#),
        "{html}"
    );
    assert!(html.contains(r#"action="/session""#), "a new try: {html}");

    let right = request("POST", "/session", &[FORM, BROWSER], "code=123456");
    let answer = exchange(server, ALICE, &right).await;
    assert_eq!(answer.status, 200);
    let html = answer.html();
    assert!(
        html.contains(r#"<p role="status">Session open until 2026-01-01T00:00:00Z"#),
        "{html}"
    );
    assert!(
        html.contains(r#"action="/session/end""#),
        "log-out form: {html}"
    );

    let locked = exchange(server, BOB_LOCKED, &right).await;
    assert_eq!(locked.status, 423);
    assert!(
        locked
            .html()
            .contains("Locked out until 2026-01-01T00:00:00Z"),
        "{}",
        locked.body
    );
}

#[tokio::test]
async fn accept_language_chooses_russian_or_english() {
    let server = start(FAST).await;
    let russian = "Accept-Language: ru-RU,ru;q=0.9,en;q=0.8";
    let answer = exchange(server, ALICE, &request("GET", "/", &[BROWSER, russian], "")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Content-Language"), Some("ru"));
    let html = answer.html();
    for expected in [
        "<html lang=\"ru\">",
        "<p>Вы подключены как <strong>alice</strong>.</p>",
        "Сеанс не открыт",
        "<button type=\"submit\">Открыть сеанс</button>",
    ] {
        assert!(html.contains(expected), "no {expected:?} in:\n{html}");
    }

    let wrong = request("POST", "/session", &[FORM, BROWSER, russian], "code=000000");
    let answer = exchange(server, ALICE, &wrong).await;
    assert_eq!(answer.status, 401);
    assert!(
        answer
            .html()
            .contains(r#"<p role="alert">Неверный код. Осталось 4 попытки.</p>"#),
        "{}",
        answer.body
    );
    let locked = exchange(server, BOB_LOCKED, &wrong).await;
    assert_eq!(locked.status, 423);
    assert!(
        locked
            .html()
            .contains("Вход заблокирован до 2026-01-01T00:00:00Z"),
        "{}",
        locked.body
    );
    let json = request(
        "POST",
        "/session",
        &[JSON_BODY, CURL, russian],
        r#"{"code":"1"}"#,
    );
    let answer = exchange(server, ALICE, &json).await;
    assert_eq!(answer.header("Content-Language"), Some("ru"));
    assert_eq!(
        answer.json()["message"],
        "Неверный код. Осталось 4 попытки."
    );
    assert_eq!(answer.json()["error"], "wrong_code");
    let missing = exchange(
        server,
        ALICE,
        &request("GET", "/nowhere", &[BROWSER, russian], ""),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.html().contains("Такой страницы на портале нет."),
        "{}",
        missing.body
    );

    // English without the header, for another language, for `*`, and from a second
    // `Accept-Language` header that outweighs the first.
    for headers in [
        &[BROWSER][..],
        &[BROWSER, "Accept-Language: de, en;q=0.5"],
        &[BROWSER, "Accept-Language: *"],
        &[BROWSER, "Accept-Language: ru;q=0.5", "Accept-Language: en"],
    ] {
        let answer = exchange(server, ALICE, &request("GET", "/", headers, "")).await;
        assert_eq!(answer.header("Content-Language"), Some("en"), "{headers:?}");
        assert!(answer.html().contains("No session is open"), "{headers:?}");
    }
    let answer = exchange(
        server,
        ALICE,
        &request(
            "GET",
            "/",
            &[BROWSER, "Accept-Language: en;q=0.1", "Accept-Language: ru"],
            "",
        ),
    )
    .await;
    assert_eq!(answer.header("Content-Language"), Some("ru"));
}

#[tokio::test]
async fn log_out_by_delete_or_by_the_form() {
    let server = start(FAST).await;
    let answer = exchange(server, ALICE, &request("DELETE", "/session", &[], "")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"peer": "alice", "closed": true}));

    let form = request(
        "POST",
        "/session/end",
        &[
            FORM,
            BROWSER,
            "Origin: http://127.0.0.1:8443",
            "Sec-Fetch-Site: same-origin",
        ],
        "",
    );
    let answer = exchange(server, ALICE, &form).await;
    assert_eq!(answer.status, 200);
    assert!(answer.html().contains("Logged out"), "{}", answer.body);
}

#[tokio::test]
async fn forms_from_other_sites_are_refused() {
    let server = start(FAST).await;
    let from_elsewhere = [
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Site: same-site",
        "Origin: http://evil.example",
        // A sandboxed frame or a data: page of any site posts with a null origin.
        "Origin: null",
        "Origin: http://127.0.0.1:8443.evil.example",
    ];
    for header in from_elsewhere {
        for path in ["/session", "/session/end"] {
            let post = request("POST", path, &[FORM, header], "code=000000");
            let answer = exchange(server, ALICE, &post).await;
            assert_eq!(answer.status, 403, "{path} {header}");
            assert_eq!(answer.json()["error"], "cross_origin", "{path} {header}");
        }
    }
    let own = request(
        "POST",
        "/session",
        &[FORM, "Origin: http://127.0.0.1:8443"],
        "code=000000",
    );
    assert_eq!(exchange(server, ALICE, &own).await.status, 401);
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let server = start(FAST).await;
    let big_body = format!("code={}", "1".repeat(2000));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
            "bad_request",
        ),
        (
            request("POST", "/session", &[FORM], &big_body),
            413,
            "body_too_large",
        ),
        (
            request("POST", "/session", &[FORM], "token=123456"),
            400,
            "bad_request",
        ),
        (
            request("POST", "/session", &[JSON_BODY], r#"{"code":123456}"#),
            400,
            "bad_request",
        ),
        (
            request("POST", "/session", &["Content-Type: text/plain"], "123456"),
            415,
            "unsupported_media_type",
        ),
        (request("GET", "/nope", &[], ""), 404, "not_found"),
    ];
    for (bytes, status, error) in cases {
        let answer = exchange(server, ALICE, &bytes).await;
        assert_eq!(
            answer.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(answer.json()["error"], error);
    }
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let server = start(FAST).await;
    let check = |method: &'static str, path: &'static str, allow: &'static str| async move {
        let answer = exchange(server, ALICE, &request(method, path, &[], "")).await;
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.header("Allow"), Some(allow), "{method} {path}");
    };
    check("POST", "/", "GET").await;
    check("PUT", "/session", "GET, POST, DELETE").await;
    check("GET", "/session/end", "POST").await;
}

#[tokio::test]
async fn silent_and_slow_clients_are_cut_off() {
    let server = start(FAST).await;
    for sent in ["", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"] {
        let started = Instant::now();
        let mut stream = connect(server, ALICE).await;
        stream.write_all(sent.as_bytes()).await.expect("send");
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("a clean close");
        assert_eq!(rest, b"", "{sent:?}");
        assert!(started.elapsed() >= FAST.io_timeout, "{sent:?}");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let one = Limits {
        io_timeout: Duration::from_millis(1500),
        connections: 1,
        ..FAST
    };
    let server = start(one).await;
    // The portal accepts connections in the order they were made, so this one holds the only
    // slot when the next is accepted.
    let _idle = connect(server, ALICE).await;
    let started = Instant::now();
    let mut extra = connect(server, ALICE).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, extra.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert_eq!(rest, b"");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn one_source_cannot_take_every_slot() {
    let two_each = Limits {
        io_timeout: Duration::from_millis(1500),
        per_source: 2,
        ..FAST
    };
    let server = start(two_each).await;
    let _first = connect(server, ALICE).await;
    let _second = connect(server, ALICE).await;
    let started = Instant::now();
    let mut third = connect(server, ALICE).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, third.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert_eq!(rest, b"");
    assert!(started.elapsed() < Duration::from_millis(500));
    // Another peer is still served (the fake agent's answer for Carol: her role needs no MFA).
    let answer = exchange(server, CAROL_NO_MFA, &request("GET", "/", &[], "")).await;
    assert_eq!(answer.status, 403);
}

#[tokio::test]
async fn a_closed_agent_channel_is_503() {
    let (requests, questions) = mpsc::channel::<PortalQuery>(1);
    drop(questions);
    let server = start_with(FAST, requests);
    let answer = exchange(server, ALICE, &request("GET", "/", &[], "")).await;
    assert_eq!(answer.status, 503);
    assert!(answer.html().contains("not answering"), "{}", answer.body);
}

#[tokio::test]
async fn binds_an_address_the_host_does_not_have_yet() {
    // 192.0.2.0/24 is for documentation: no host has it, as the VPN address before the TUN
    // device is up.
    let listeners = bind(&[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))], 0, None).expect("IP_FREEBIND");
    assert_eq!(listeners.len(), 1);
}

#[test]
fn codes_stay_out_of_debug_output() {
    let request = PortalRequest {
        from: IpAddr::V4(Ipv4Addr::LOCALHOST),
        action: PortalAction::Open {
            code: "987654".to_owned(),
        },
    };
    let debug = format!("{request:?}");
    assert!(!debug.contains("987654"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn only_the_portals_own_address_is_a_valid_host() {
    let v4: SocketAddr = "10.77.0.1:8443".parse().expect("addr");
    let v6: SocketAddr = "[fd77::1]:8443".parse().expect("addr");
    for (host, local, ok) in [
        (Some("10.77.0.1"), v4, true),
        (Some("10.77.0.1:8443"), v4, true),
        (None, v4, true),
        (Some("crm-portal.example.com:8443"), v4, false),
        (Some("10.77.0.2:8443"), v4, false),
        (Some("[fd77::1]:8443"), v6, true),
        (Some("[FD77:0::1]"), v6, true),
        (Some("[fd77::2]"), v6, false),
        (Some("evil.example"), v6, false),
    ] {
        assert_eq!(super::host_is_own(host, local), ok, "{host:?} at {local}");
    }
}
