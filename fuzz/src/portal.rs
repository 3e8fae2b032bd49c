//! The MFA portal's request handling on arbitrary bytes: the agent's one HTTP request reader
//! ([`crmguard::http::read_request`], also the reader of `/metrics`) and the portal's answer up
//! to the agent's main loop ([`crmguard::portal::answer_bytes`]), with a stand-in main loop
//! that answers each question with the reply the input picks.
//!
//! Input: one byte for how many bytes each read returns (1 to 256: clients trickle), one byte
//! for the main loop's reply, then the bytes the client sends.
//!
//! Checked: no panic; the reader keeps its bounds (a body never longer than the limit); a
//! request the reader refuses gets a 4xx answer (400, 413 or 431); a request the portal does
//! not pass on gets a 4xx answer; the main loop is asked at most once, about the connection's
//! own source; every answer is one well-formed HTTP/1.1 response whose `Content-Length` is its
//! body's, of bounded size.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use crmguard::http::{read_request, Limits, ReadError};
use crmguard::portal::{answer_bytes, PeerView, PortalAction, PortalQuery, PortalReply};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// The portal's address in the tunnel and the staff member's.
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), 8443);
const FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11));

/// The portal's own bounds (`portal.rs`), which its answers are checked against.
const PORTAL_LIMITS: Limits = Limits {
    max_head: 8 * 1024,
    max_body: 1024,
    deadline: Duration::from_secs(10),
};

/// Small bounds, so that every limit of the reader is reached often.
const SMALL_LIMITS: Limits = Limits {
    max_head: 96,
    max_body: 16,
    deadline: Duration::from_secs(10),
};

/// The longest answer the portal may send: its page with every message in it.
const MAX_ANSWER: usize = 64 * 1024;

/// A client that sends `data` in reads of at most `chunk` bytes, then closes.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"))
    })
}

/// The main loop's reply, picked by `choice`; `None`: the main loop drops the question.
fn reply(choice: u8) -> Option<PortalReply> {
    let peer = "bob".to_owned();
    Some(match choice % 11 {
        0 => PortalReply::View(PeerView {
            peer,
            mfa_required: true,
            enabled: true,
            enrolled: true,
            session_expires: Some(1_767_229_200),
            locked_until: None,
        }),
        1 => PortalReply::Opened {
            peer,
            expires: 1_767_229_200,
        },
        2 => PortalReply::Wrong { peer, remaining: 3 },
        3 => PortalReply::LockedOut {
            peer,
            until: 1_767_226_500,
        },
        4 => PortalReply::NotRequired { peer },
        5 => PortalReply::Disabled { peer },
        6 => PortalReply::NotEnrolled { peer },
        7 => PortalReply::Unavailable {
            peer,
            reason: "the audit log cannot be written".to_owned(),
        },
        8 => PortalReply::Closed {
            peer,
            had_session: true,
        },
        9 => PortalReply::UnknownPeer,
        _ => return None,
    })
}

/// The status code of an answer, after checking that it is one well-formed response.
fn status_of(answer: &[u8]) -> u16 {
    assert!(
        answer.len() <= MAX_ANSWER,
        "an answer of {} bytes",
        answer.len()
    );
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!("an answer without the end of its head");
    };
    let head = std::str::from_utf8(&answer[..end]).unwrap_or_else(|e| panic!("a head: {e}"));
    let body = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
    let length = lines
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("an answer without Content-Length"));
    assert_eq!(
        length,
        body.len(),
        "Content-Length is not the body's length"
    );
    assert!(
        head.contains("\r\nConnection: close"),
        "an answer that keeps the connection"
    );
    status
}

pub fn run(data: &[u8]) {
    let [chunk, choice, request @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    runtime().block_on(async {
        for limits in [PORTAL_LIMITS, SMALL_LIMITS] {
            let mut client = Trickle {
                data: request,
                chunk,
            };
            if let Ok(read) = read_request(&mut client, &limits).await {
                assert!(read.body.len() <= limits.max_body, "a body past the limit");
            }
        }
        let read = read_request(
            &mut Trickle {
                data: request,
                chunk,
            },
            &PORTAL_LIMITS,
        )
        .await;

        let (tx, mut rx) = mpsc::channel::<PortalQuery>(4);
        let portal = async move {
            let mut client = Trickle {
                data: request,
                chunk,
            };
            answer_bytes(&mut client, FROM, LOCAL, &tx).await
        };
        let main_loop = async {
            let mut asked = Vec::new();
            while let Some((question, reply_to)) = rx.recv().await {
                asked.push(question);
                if let Some(reply) = reply(*choice) {
                    let _ = reply_to.send(reply);
                }
            }
            asked
        };
        let (answer, asked) = tokio::join!(portal, main_loop);
        assert!(
            asked.len() <= 1,
            "one request asked the main loop {} times",
            asked.len()
        );
        for question in &asked {
            assert_eq!(question.from, FROM, "a question about someone else");
            if let PortalAction::Open { code } = &question.action {
                assert!(!code.chars().any(char::is_whitespace), "a code with spaces");
            }
        }
        let Some(answer) = answer else {
            assert!(
                matches!(read, Err(ReadError::Closed)),
                "no answer to a request that was read: {read:?}"
            );
            return;
        };
        let status = status_of(&answer);
        match &read {
            Err(ReadError::Closed | ReadError::Io(_) | ReadError::TimedOut(_)) => {
                panic!("an answer to a request that never arrived: {read:?}")
            }
            Err(ReadError::Malformed(_)) => assert_eq!(status, 400, "{read:?}"),
            Err(ReadError::HeadTooLarge(_)) => assert_eq!(status, 431, "{read:?}"),
            Err(ReadError::BodyTooLarge(_)) => assert_eq!(status, 413, "{read:?}"),
            Ok(_) if asked.is_empty() => assert!(
                (400..500).contains(&status),
                "a request the portal did not pass on got {status}"
            ),
            Ok(_) => assert!(
                matches!(status, 200 | 401 | 403 | 423 | 503),
                "an answer from the main loop with status {status}"
            ),
        }
    });
}

/// What browsers and curl send the portal: the page, the state, a code as a form and as JSON,
/// the end of a session, and a request for another host.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let host = "Host: 10.77.0.1:8443\r\n";
    let browser =
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
                   Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
                   Accept-Language: ru-RU,ru;q=0.8,en-US;q=0.5,en;q=0.3\r\n";
    let form = "code=123+456";
    let json = "{\"code\":\"123456\"}";
    let requests = [
        ("get-page", format!("GET / HTTP/1.1\r\n{host}{browser}\r\n")),
        (
            "get-session-curl",
            format!("GET /session HTTP/1.1\r\n{host}User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"),
        ),
        (
            "post-form",
            format!(
                "POST /session HTTP/1.1\r\n{host}{browser}Origin: http://10.77.0.1:8443\r\n\
                 Sec-Fetch-Site: same-origin\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{form}",
                form.len()
            ),
        ),
        (
            "post-json",
            format!(
                "POST /session HTTP/1.1\r\n{host}Content-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{json}",
                json.len()
            ),
        ),
        (
            "delete-session",
            format!("DELETE /session HTTP/1.1\r\n{host}Accept: */*\r\n\r\n"),
        ),
        (
            "post-end",
            format!(
                "POST /session/end HTTP/1.1\r\n{host}{browser}Origin: http://10.77.0.1:8443\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
        (
            "wrong-host",
            "GET / HTTP/1.1\r\nHost: portal.example.com\r\n\r\n".to_owned(),
        ),
        (
            "metrics",
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nAccept: text/plain\r\n\r\n"
                .to_owned(),
        ),
    ];
    requests
        .into_iter()
        .zip(0u8..)
        .map(|((name, text), n)| {
            let mut input = vec![if n % 2 == 0 { 255 } else { 6 }, n];
            input.extend_from_slice(text.as_bytes());
            (format!("portal-{name}"), input)
        })
        .collect()
}
