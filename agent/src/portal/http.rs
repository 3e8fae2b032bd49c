//! The MFA portal's HTTP/1.1: reading one bounded request from a connection, writing one
//! response with the headers every portal answer carries, and decoding form bodies.
//!
//! Only what the portal needs: one request per connection (every answer says
//! `Connection: close`), bodies framed by `Content-Length` alone, and hard bounds on what a
//! peer may send, so that a misbehaving device in the tunnel costs the agent a few KiB at
//! most. Timeouts are the caller's business. Nothing here knows what a TOTP code is.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest request head (request line and headers) the portal reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body the portal reads; a code fits many times over.
pub const MAX_BODY: usize = 1024;
/// The most headers a request may have; browsers send about fifteen.
const MAX_HEADERS: usize = 48;

/// One request, with the headers the portal looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// As sent, e.g. `GET`; methods are case-sensitive.
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub host: Option<String>,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// Whether the client is a browser that wants an HTML page rather than JSON: its `Accept`
    /// header names `text/html`. curl sends `*/*` and gets JSON.
    pub fn wants_html(&self) -> bool {
        self.accept
            .as_deref()
            .is_some_and(|accept| accept.to_ascii_lowercase().contains("text/html"))
    }

    /// The media type of the body, lower case and without parameters: `application/json` for
    /// `Application/JSON; charset=utf-8`.
    pub fn media_type(&self) -> Option<String> {
        let content_type = self.content_type.as_deref()?;
        let media_type = content_type.split(';').next().unwrap_or_default();
        Some(media_type.trim().to_ascii_lowercase())
    }
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed the connection without sending anything; it gets no answer.
    #[error("the connection closed before a request arrived")]
    Closed,
    #[error("reading the request failed")]
    Io(#[source] io::Error),
    /// The client sent something that is not an HTTP/1 request the portal can frame (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request head does not fit in [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers (431).
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// `Content-Length` is above [`MAX_BODY`] (413); the body is not read.
    #[error("the request body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
}

/// Reads one request: the head, then exactly `Content-Length` bytes of body. Bytes after the
/// body are ignored; the connection closes after the answer anyway.
pub async fn read_request<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Request, ReadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let (mut request, head_len, body_len) = loop {
        let n = reader.read(&mut buf[len..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(match len {
                0 => ReadError::Closed,
                _ => ReadError::Malformed("the request head ends early"),
            });
        }
        len += n;
        if let Some(head) = parse_head(&buf[..len])? {
            break head;
        }
        if len == buf.len() {
            return Err(ReadError::HeadTooLarge);
        }
    };
    let mut body = buf[head_len..len].to_vec();
    body.truncate(body_len);
    read_body(reader, &mut body, body_len).await?;
    request.body = body;
    Ok(request)
}

/// Reads until `body` holds `body_len` bytes.
async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    body: &mut Vec<u8>,
    body_len: usize,
) -> Result<(), ReadError> {
    let mut chunk = [0u8; MAX_BODY];
    while body.len() < body_len {
        let wanted = body_len - body.len();
        let n = reader
            .read(&mut chunk[..wanted])
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Malformed(
                "the body is shorter than Content-Length",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Parses a complete head: the request without its body, the head's length and the body's
/// length. `None` while the head is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(Request, usize, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
        Err(_) => return Err(ReadError::Malformed("not an HTTP/1 request")),
    };
    let target = parsed.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let mut request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        ..Request::default()
    };
    let mut body_len = None;
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let slot = match name.as_str() {
            "content-length" => {
                body_len = Some(content_length(header.value, body_len)?);
                continue;
            }
            "transfer-encoding" => {
                return Err(ReadError::Malformed(
                    "Transfer-Encoding is not supported; send Content-Length",
                ))
            }
            "host" => &mut request.host,
            "accept" => &mut request.accept,
            "content-type" => &mut request.content_type,
            "origin" => &mut request.origin,
            "sec-fetch-site" => &mut request.sec_fetch_site,
            _ => continue,
        };
        let value = std::str::from_utf8(header.value)
            .map_err(|_| ReadError::Malformed("a header value is not UTF-8"))?;
        *slot = Some(value.trim().to_owned());
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(ReadError::BodyTooLarge);
    }
    Ok(Some((request, head_len, body_len)))
}

/// The value of a `Content-Length` header; a second one must agree with the first.
fn content_length(value: &[u8], earlier: Option<usize>) -> Result<usize, ReadError> {
    let text = std::str::from_utf8(value).unwrap_or_default().trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReadError::Malformed("Content-Length is not a number"));
    }
    // More digits than fit in usize are certainly more than MAX_BODY.
    let length = text.parse().unwrap_or(usize::MAX);
    match earlier {
        Some(earlier) if earlier != length => {
            Err(ReadError::Malformed("two Content-Length headers disagree"))
        }
        _ => Ok(length),
    }
}

/// One answer. Every answer carries the portal's security headers and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// The `Allow` header of a 405 answer.
    pub allow: Option<&'static str>,
}

/// `Content-Type` of the portal's pages.
pub const HTML: &str = "text/html; charset=utf-8";
/// `Content-Type` of the portal's JSON answers.
pub const JSON: &str = "application/json";

/// Headers on every answer: nothing is cached (a page shows a session's state), nothing is
/// loaded from elsewhere, the page cannot be framed (no clickjacking of the code form) and
/// forms may only post back to the portal.
const SECURITY_HEADERS: &str = "Cache-Control: no-store\r\n\
    Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'\r\n\
    X-Content-Type-Options: nosniff\r\n\
    Referrer-Policy: no-referrer\r\n\
    Connection: close\r\n";

impl Response {
    /// The answer as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{SECURITY_HEADERS}",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len(),
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// The reason phrase of each status the portal sends.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        423 => "Locked",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why a form body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("a `%` is not followed by two hexadecimal digits")]
    BadEscape,
    #[error("a decoded field is not UTF-8")]
    NotUtf8,
}

/// The value of the first field called `name` in an `application/x-www-form-urlencoded`
/// body, with `+` read as a space and `%XX` as the byte XX. `None` when there is no such field.
pub fn form_field(body: &[u8], name: &str) -> Result<Option<String>, FormError> {
    for pair in body.split(|&b| b == b'&') {
        let mut parts = pair.splitn(2, |&b| b == b'=');
        let key = form_decode(parts.next().unwrap_or_default())?;
        if key == name {
            return form_decode(parts.next().unwrap_or_default()).map(Some);
        }
    }
    Ok(None)
}

/// Decodes one form-encoded key or value.
fn form_decode(bytes: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let [high, low, tail @ ..] = rest else {
                    return Err(FormError::BadEscape);
                };
                out.push(hex_digit(*high)? << 4 | hex_digit(*low)?);
                rest = tail;
            }
            _ => out.push(byte),
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

fn hex_digit(byte: u8) -> Result<u8, FormError> {
    let digit = char::from(byte).to_digit(16).ok_or(FormError::BadEscape)?;
    u8::try_from(digit).map_err(|_| FormError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_form(body: &str, expected: Result<Option<&str>, FormError>) {
        let actual = form_field(body.as_bytes(), "code");
        assert_eq!(actual, expected.map(|v| v.map(str::to_owned)), "{body:?}");
    }

    #[test]
    fn form_fields_are_decoded() {
        check_form("code=123456", Ok(Some("123456")));
        check_form("code=123+456", Ok(Some("123 456")));
        check_form("code=%31%32%33%34%35%36", Ok(Some("123456")));
        check_form("c%6Fde=1%2b2", Ok(Some("1+2")));
        check_form("other=1&code=42&code=43", Ok(Some("42")));
        check_form("code=", Ok(Some("")));
        check_form("code", Ok(Some("")));
        check_form("codes=1", Ok(None));
        check_form("", Ok(None));
        check_form("code=%e2%80%93", Ok(Some("\u{2013}")));
        check_form("code=12%3", Err(FormError::BadEscape));
        check_form("code=%zz", Err(FormError::BadEscape));
        check_form("code=%ff", Err(FormError::NotUtf8));
    }

    async fn read(bytes: &[u8]) -> Result<Request, ReadError> {
        let mut reader = bytes;
        read_request(&mut reader).await
    }

    #[tokio::test]
    async fn reads_head_and_body() {
        let request = read(
            b"POST /session?x=1 HTTP/1.1\r\nHost: 10.77.0.1:8443\r\nContent-Type: Application/X-WWW-Form-Urlencoded; charset=UTF-8\r\n\
              Accept: text/html,*/*\r\nContent-Length: 11\r\n\r\ncode=123456extra",
        )
        .await
        .expect("a request");
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/session");
        assert_eq!(request.host.as_deref(), Some("10.77.0.1:8443"));
        assert_eq!(
            request.media_type().as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert!(request.wants_html());
        assert_eq!(request.body, b"code=123456");
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_frame() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "Closed"),
            (b"GET / HTTP/1.1\r\n", "Malformed"),
            (b"\x00\x01garbage\r\n\r\n", "Malformed"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
                "BodyTooLarge",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "Malformed",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "Malformed",
            ),
        ];
        for (bytes, expected) in cases {
            let actual = format!("{:?}", read(bytes).await.expect_err("an error"));
            assert!(actual.starts_with(expected), "{bytes:?}: {actual}");
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            read(huge.as_bytes()).await,
            Err(ReadError::HeadTooLarge)
        ));
    }

    #[test]
    fn every_response_carries_the_security_headers() {
        let response = Response {
            status: 405,
            content_type: JSON,
            body: "{}".to_owned(),
            allow: Some("POST"),
        };
        let text = String::from_utf8(response.to_bytes()).expect("UTF-8");
        assert_eq!(
            text,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
             Cache-Control: no-store\r\n\
             Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'\r\n\
             X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\
             Allow: POST\r\n\r\n{}"
        );
    }
}
