//! The MFA portal's HTTP/1.1: writing one response with the headers every portal answer
//! carries, and decoding form bodies. Requests are read by the agent's one request reader,
//! [`crate::http`], with the portal's bounds. Nothing here knows what a TOTP code is.

pub use crate::http::{ReadError, Request};

use crate::i18n::Lang;

/// One answer. Every answer carries the portal's security headers and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// The `Allow` header of a 405 answer.
    pub allow: Option<&'static str>,
    /// The language of the body's sentences (`Content-Language`), negotiated from the
    /// request's `Accept-Language`; every answer says so with `Vary: Accept-Language`.
    pub lang: Lang,
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
    Referrer-Policy: same-origin\r\n\
    Connection: close\r\n";

impl Response {
    /// The answer as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Content-Language: {}\r\nVary: Accept-Language\r\n{SECURITY_HEADERS}",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len(),
            self.lang.tag(),
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

    #[test]
    fn every_response_carries_the_security_headers() {
        let response = Response {
            status: 405,
            content_type: JSON,
            body: "{}".to_owned(),
            allow: Some("POST"),
            lang: Lang::Ru,
        };
        let text = String::from_utf8(response.to_bytes()).expect("UTF-8");
        assert_eq!(
            text,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
             Content-Language: ru\r\nVary: Accept-Language\r\n\
             Cache-Control: no-store\r\n\
             Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'\r\n\
             X-Content-Type-Options: nosniff\r\nReferrer-Policy: same-origin\r\nConnection: close\r\n\
             Allow: POST\r\n\r\n{}"
        );
    }
}
