//! Reading one HTTP/1.1 request from a connection: the one request reader of the MFA portal
//! and of `/metrics`.
//!
//! Only what the agent's servers need: one request per connection (every answer they send
//! says `Connection: close`), bodies framed by `Content-Length` alone, and hard bounds on what
//! a client may send, so that a misbehaving client costs the agent a few KiB and a few seconds
//! at most. The bounds are the caller's ([`Limits`]): the size of the head, the size of the
//! body, and one deadline for the whole request, so that a client trickling one byte at a
//! time cannot hold a connection longer than a client that sends nothing.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most headers a request may have; browsers send about fifteen.
const MAX_HEADERS: usize = 48;

/// What one server accepts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request head (request line and headers).
    pub max_head: usize,
    /// The largest request body; a larger `Content-Length` is refused before the body is read.
    pub max_body: usize,
    /// The time the whole request, head and body, may take to arrive.
    pub deadline: Duration,
}

/// One request, with the headers the agent's servers look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// As sent, e.g. `GET`; methods are case-sensitive.
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub host: Option<String>,
    pub accept: Option<String>,
    /// `Accept-Language`; several such headers are joined with `,` into one list.
    pub accept_language: Option<String>,
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
    /// The request did not arrive within [`Limits::deadline`]; the client gets no answer.
    #[error("the request did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The client sent something that is not an HTTP/1 request the agent can frame (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request head does not fit in [`Limits::max_head`] bytes or the most headers (431).
    #[error("the request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    /// `Content-Length` is above [`Limits::max_body`] (413); the body is not read.
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// Reads one request within `limits`: the head, then exactly `Content-Length` bytes of body.
/// Bytes after the body are ignored; the connection closes after the answer anyway.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
) -> Result<Request, ReadError> {
    tokio::time::timeout(limits.deadline, read_unbounded_in_time(reader, limits))
        .await
        .map_err(|_elapsed| ReadError::TimedOut(limits.deadline))?
}

/// [`read_request`] without the deadline.
async fn read_unbounded_in_time<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
) -> Result<Request, ReadError> {
    let mut buf = vec![0u8; limits.max_head];
    let mut len = 0;
    let (mut request, head_len, body_len) = loop {
        if len == buf.len() {
            return Err(ReadError::HeadTooLarge(limits.max_head));
        }
        let n = reader.read(&mut buf[len..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(match len {
                0 => ReadError::Closed,
                _ => ReadError::Malformed("the request head ends early"),
            });
        }
        len += n;
        if let Some(head) = parse_head(&buf[..len], limits)? {
            break head;
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
    let mut chunk = [0u8; 1024];
    while body.len() < body_len {
        let wanted = (body_len - body.len()).min(chunk.len());
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
fn parse_head(bytes: &[u8], limits: &Limits) -> Result<Option<(Request, usize, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::HeadTooLarge(limits.max_head))
        }
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
            "accept-language" => {
                let value = std::str::from_utf8(header.value)
                    .map_err(|_| ReadError::Malformed("a header value is not UTF-8"))?
                    .trim();
                request.accept_language = Some(match request.accept_language.take() {
                    Some(earlier) => format!("{earlier},{value}"),
                    None => value.to_owned(),
                });
                continue;
            }
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
    if body_len > limits.max_body {
        return Err(ReadError::BodyTooLarge(limits.max_body));
    }
    Ok(Some((request, head_len, body_len)))
}

/// The value of a `Content-Length` header; a second one must agree with the first.
fn content_length(value: &[u8], earlier: Option<usize>) -> Result<usize, ReadError> {
    let text = std::str::from_utf8(value).unwrap_or_default().trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReadError::Malformed("Content-Length is not a number"));
    }
    // More digits than fit in usize are certainly more than any body limit.
    let length = text.parse().unwrap_or(usize::MAX);
    match earlier {
        Some(earlier) if earlier != length => {
            Err(ReadError::Malformed("two Content-Length headers disagree"))
        }
        _ => Ok(length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 8 * 1024,
        max_body: 1024,
        deadline: Duration::from_secs(5),
    };

    async fn read(bytes: &[u8]) -> Result<Request, ReadError> {
        let mut reader = bytes;
        read_request(&mut reader, &LIMITS).await
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
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(LIMITS.max_head)
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: [(&[u8], &str); 8] = [
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
            (huge.as_bytes(), "HeadTooLarge"),
            (many.as_bytes(), "HeadTooLarge"),
        ];
        for (bytes, expected) in cases {
            let actual = format!("{:?}", read(bytes).await.expect_err("an error"));
            assert!(actual.starts_with(expected), "{bytes:?}: {actual}");
        }
    }

    /// The deadline covers the whole request: a client that sends its head a byte at a time,
    /// each byte well within the deadline, is still cut off when the deadline passes.
    #[tokio::test]
    async fn one_deadline_for_the_whole_request() {
        let limits = Limits {
            deadline: Duration::from_millis(300),
            ..LIMITS
        };
        let (mut client, mut server) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" {
                if client.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = std::time::Instant::now();
        let read = read_request(&mut server, &limits).await;
        assert!(matches!(read, Err(ReadError::TimedOut(_))), "{read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        trickle.abort();
    }
}
