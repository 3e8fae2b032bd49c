//! A small blocking HTTP/1.1 client for the agent's outgoing calls: alert delivery (webhook,
//! Alertmanager) and the CrowdSec Local API.
//!
//! It runs on worker threads, never on the daemon's runtime, and sends one request per
//! connection (`Connection: close`), so there is no pooling to go wrong. Plain `http://` only:
//! these services are reached on loopback or a management network, and `https://` would need a
//! TLS stack the agent does not otherwise carry. Responses are framed by `Content-Length`,
//! `Transfer-Encoding: chunked` (Go's servers use it for bodies they stream) or the end of the
//! connection, and bounded in size. Every connection has one deadline for the whole exchange.
//!
//! Written over `std::net::TcpStream` with `httparse` (already the agent's request parser)
//! rather than adding an HTTP client crate: the agent needs four request shapes.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The largest response body kept; a CrowdSec startup stream of ~100,000 decisions fits.
pub const MAX_BODY: usize = 32 << 20;

/// The most response headers read.
const MAX_HEADERS: usize = 64;

/// The largest response head.
const MAX_HEAD: usize = 64 << 10;

/// An `http://host:port/base` address, parsed once at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host` or `host:port` as written, for the `Host` header.
    authority: String,
    host: String,
    port: u16,
    /// The path prefix, without a trailing `/` (empty for the root).
    base: String,
}

/// Why a URL or an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http://host[:port][/path]`.
    Url(String),
    /// Name resolution, connection, or I/O (including the deadline).
    Io(String),
    /// The server's answer is not HTTP/1.x as this client reads it.
    Protocol(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Url(e) => write!(f, "bad URL: {e}"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Protocol(e) => write!(f, "bad HTTP response: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl Url {
    /// Parses `http://host[:port][/path]`; IPv6 hosts in brackets. `https://` is refused with
    /// a message that says why.
    pub fn parse(text: &str) -> Result<Url, HttpError> {
        let text = text.trim();
        if text.starts_with("https://") {
            return Err(HttpError::Url(format!(
                "{text}: https is not supported (use http:// on loopback or a trusted network)"
            )));
        }
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| HttpError::Url(format!("{text}: must start with http://")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::Url(format!("{text}: no host, or user info")));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| HttpError::Url(format!("{text}: unclosed [")))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(HttpError::Url(format!("{text}: junk after ]"))),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| HttpError::Url(format!("{text}: bad port {port:?}")))?,
            None => 80,
        };
        if host.is_empty() || path.contains(['?', '#', ' ']) {
            return Err(HttpError::Url(format!("{text}: no host, or a query")));
        }
        Ok(Url {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            base: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The URL as configured, for logs.
    pub fn display(&self) -> String {
        format!("http://{}{}", self.authority, self.base)
    }

    /// The request target for `path` (which starts with `/`) under this URL's base; an empty
    /// `path` is the base itself.
    fn target(&self, path: &str) -> String {
        match (self.base.is_empty(), path.is_empty()) {
            (true, true) => "/".to_owned(),
            (_, _) => format!("{}{path}", self.base),
        }
    }
}

/// One response: status and body (headers are not needed by any caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, lossy, shortened for logs.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text.to_owned(),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path under the URL's base, with its query string, starting with `/` (or empty).
    pub path: &'a str,
    /// Extra headers (name, value); values must not contain CR or LF.
    pub headers: &'a [(&'a str, &'a str)],
    /// A JSON body, sent with `Content-Type: application/json`.
    pub json: Option<&'a [u8]>,
}

/// Sends `request` to `url` and reads the whole response, all within `timeout`.
pub fn exchange(
    url: &Url,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(url, deadline)?;
    let head = request_head(url, request)?;
    let mut bytes = head.into_bytes();
    if let Some(body) = request.json {
        bytes.extend_from_slice(body);
    }
    set_deadline(&stream, deadline)?;
    stream
        .write_all(&bytes)
        .map_err(|e| HttpError::Io(format!("sending to {}: {e}", url.display())))?;
    read_response(&mut stream, deadline, request.method == "HEAD")
}

fn request_head(url: &Url, request: &Request<'_>) -> Result<String, HttpError> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crmguard/{}\r\nConnection: close\r\n",
        request.method,
        url.target(request.path),
        url.authority,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in request.headers {
        if name.contains([':', '\r', '\n']) || value.contains(['\r', '\n']) {
            return Err(HttpError::Url(format!("header {name:?} has CR, LF or ':'")));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = request.json {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if request.method == "POST" || request.method == "PUT" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    Ok(head)
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Io("timed out".to_owned()));
    }
    Ok(left)
}

fn set_deadline(stream: &TcpStream, deadline: Instant) -> Result<(), HttpError> {
    let left = remaining(deadline)?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(|e| HttpError::Io(format!("socket timeouts: {e}")))
}

fn connect(url: &Url, deadline: Instant) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| HttpError::Io(format!("resolving {}: {e}", url.host)))?
        .collect();
    let mut last = format!("{}: no address", url.host);
    for addr in addrs {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(HttpError::Io(last))
}

/// Reads until `buf` holds at least `want` bytes or the peer closes; false on close.
fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    deadline: Instant,
) -> Result<bool, HttpError> {
    let mut chunk = [0_u8; 16 << 10];
    while buf.len() < want {
        set_deadline(stream, deadline)?;
        let n = stream
            .read(&mut chunk)
            .map_err(|e| HttpError::Io(format!("reading the response: {e}")))?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_BODY + MAX_HEAD {
            return Err(HttpError::Protocol("response too large".to_owned()));
        }
    }
    Ok(true)
}

fn read_response(
    stream: &mut TcpStream,
    deadline: Instant,
    head_only: bool,
) -> Result<Response, HttpError> {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response
            .parse(&buf)
            .map_err(|e| HttpError::Protocol(e.to_string()))?
        {
            httparse::Status::Complete(head_len) => {
                let status = response.code.unwrap_or_default();
                let framing = framing(response.headers)?;
                let rest = buf.split_off(head_len);
                // 1xx answers precede the real one; 204 and 304 have no body.
                if (100..200).contains(&status) {
                    buf = rest;
                    continue;
                }
                let body = if head_only || status == 204 || status == 304 {
                    Vec::new()
                } else {
                    read_body(stream, rest, framing, deadline)?
                };
                return Ok(Response { status, body });
            }
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(HttpError::Protocol("response head too large".to_owned()));
                }
                let want = buf.len() + 1;
                if !fill(stream, &mut buf, want, deadline)? {
                    return Err(HttpError::Protocol(
                        "connection closed before the response head ended".to_owned(),
                    ));
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, HttpError> {
    let mut framing = Framing::Close;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            if value.trim().ends_with("chunked") {
                return Ok(Framing::Chunked);
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Protocol("bad Content-Length".to_owned()))?;
            if length > MAX_BODY {
                return Err(HttpError::Protocol(format!("body of {length} bytes")));
            }
            framing = Framing::Length(length);
        }
    }
    Ok(framing)
}

fn read_body(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    framing: Framing,
    deadline: Instant,
) -> Result<Vec<u8>, HttpError> {
    match framing {
        Framing::Length(length) => {
            if !fill(stream, &mut buf, length, deadline)? {
                return Err(HttpError::Protocol(format!(
                    "connection closed after {} of {length} body bytes",
                    buf.len()
                )));
            }
            buf.truncate(length);
            Ok(buf)
        }
        Framing::Close => {
            fill(stream, &mut buf, usize::MAX, deadline)?;
            Ok(buf)
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                let line_end = loop {
                    if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                        break at + i;
                    }
                    let want = buf.len() + 1;
                    if !fill(stream, &mut buf, want, deadline)? {
                        return Err(HttpError::Protocol("truncated chunk size".to_owned()));
                    }
                };
                let line = String::from_utf8_lossy(&buf[at..line_end]);
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| HttpError::Protocol(format!("bad chunk size {size_text:?}")))?;
                at = line_end + 2;
                if size == 0 {
                    return Ok(body);
                }
                // Subtracted, not added: a size near `usize::MAX` would wrap the sum.
                if size > MAX_BODY.saturating_sub(body.len()) {
                    return Err(HttpError::Protocol("chunked body too large".to_owned()));
                }
                if !fill(stream, &mut buf, at + size + 2, deadline)? {
                    return Err(HttpError::Protocol("truncated chunk".to_owned()));
                }
                body.extend_from_slice(&buf[at..at + size]);
                if &buf[at + size..at + size + 2] != b"\r\n" {
                    return Err(HttpError::Protocol("chunk not ended by CRLF".to_owned()));
                }
                at += size + 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_body` on what a server at the other end of a local connection sends.
    fn body_of(sent: &'static [u8], framing: Framing) -> Result<Vec<u8>, HttpError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
            std::io::Write::write_all(&mut conn, sent).unwrap_or_else(|e| panic!("{e}"));
        });
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let body = read_body(
            &mut stream,
            Vec::new(),
            framing,
            Instant::now() + Duration::from_secs(5),
        );
        server
            .join()
            .unwrap_or_else(|_| panic!("the server thread"));
        body
    }

    #[test]
    fn chunked_bodies_are_joined_and_huge_sizes_refused() {
        let body = body_of(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", Framing::Chunked);
        assert_eq!(body.ok().as_deref(), Some(&b"abcde"[..]));
        // A size that wraps `usize` when added to what was read is refused, not a panic.
        let body = body_of(b"1\r\nx\r\nffffffffffffffff\r\nz", Framing::Chunked);
        assert!(
            matches!(&body, Err(HttpError::Protocol(m)) if m == "chunked body too large"),
            "{body:?}"
        );
    }

    #[test]
    fn urls() {
        let url = Url::parse("http://127.0.0.1:9093").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.port, 9093);
        assert_eq!(url.target("/api/v2/alerts"), "/api/v2/alerts");
        let url =
            Url::parse("http://hooks.example.com/crm/hook/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((url.host.as_str(), url.port), ("hooks.example.com", 80));
        assert_eq!(url.target(""), "/crm/hook");
        let url = Url::parse("http://[::1]:8080").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((url.host.as_str(), url.port), ("::1", 8080));
        assert_eq!(url.target(""), "/");
        for bad in [
            "https://x",
            "ftp://x",
            "http://",
            "http://x:99999",
            "http://u@x/",
            "http://x/?q",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
