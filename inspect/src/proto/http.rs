//! HTTP/1.0 and HTTP/1.1 in the clear: credentials a client sends unprotected and the logins
//! a server refuses.
//!
//! Identification reads the client's request line by hand (method, target, version), so that a
//! prefix can be told apart from a non-match byte by byte. Analysis frames the requests and
//! responses in the window with `httparse` (bodies by `Content-Length` or chunked encoding) and
//! pairs them in order. It reports:
//!
//! - a credential in the clear: an `Authorization: Basic` (or `Proxy-Authorization: Basic`)
//!   header ([`Credential::HttpBasic`]),
//!   or a field named like a password ([`is_password_field`]) in the query string, in an
//!   `application/x-www-form-urlencoded` body or as a `multipart/form-data` part
//!   ([`Credential::HttpForm`]);
//! - failed logins: every response with status 401, and every response to a request that
//!   matches one of the operator's [`LoginRule`]s (method, path without query, status). One
//!   response counts once even if it is both.
//!
//! `watch` checks a single segment of a kept-alive connection: a server segment that starts
//! with a `401` status line, a client segment that starts with a request carrying a credential
//! within the segment. Login rules need the request that a response answers, which a segment
//! alone does not carry: they are applied by `analyze` only.

use crate::protocol::{Analysis, Context, Credential, Ident, LoginRule, Progress, Streams, Watch};

/// The methods a request line may start with: RFC 9110's, PATCH (RFC 5789) and WebDAV's
/// (RFC 4918, RFC 3253 for REPORT), which CRM file shares use.
const METHODS: [&[u8]; 17] = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
];

/// The longest request target identification waits for: the client's whole window. A longer
/// one cannot be seen to its end, so the flow cannot be identified.
const MAX_TARGET: usize = 8192;

/// The ends of a request line after its target.
const VERSIONS: [&[u8]; 4] = [
    b"HTTP/1.1\r\n",
    b"HTTP/1.0\r\n",
    // Bare LF ends a line for httparse and for most servers too.
    b"HTTP/1.1\n",
    b"HTTP/1.0\n",
];

/// Field names that carry a password, compared without regard to case. Nested names are
/// judged by their last part: `user[password]`, `user.password` and `login[pwd]` count.
const PASSWORD_FIELDS: [&str; 7] = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "passcode",
    "secret",
];

/// The most headers one message may have for analysis; more is treated as not HTTP.
const MAX_HEADERS: usize = 96;

/// Whether `b` (a client's bytes from the first) is an HTTP/1.x request line: `Yes` once the
/// line ended, `More` while it could still become one, `No` as soon as it cannot.
fn request_line(b: &[u8]) -> Ident {
    let Some(space) = b.iter().take(10).position(|&c| c == b' ') else {
        let could = b.len() < 10 && METHODS.iter().any(|m| m.starts_with(b));
        return if could { Ident::More } else { Ident::No };
    };
    if !METHODS.contains(&&b[..space]) {
        return Ident::No;
    }
    let rest = &b[space + 1..];
    let target_end = rest.iter().position(|&c| !(0x21..=0x7e).contains(&c));
    let Some(target_end) = target_end else {
        return if rest.len() <= MAX_TARGET {
            Ident::More
        } else {
            Ident::No
        };
    };
    if target_end == 0 || target_end > MAX_TARGET || rest[target_end] != b' ' {
        return Ident::No;
    }
    let version = &rest[target_end + 1..];
    if VERSIONS.iter().any(|v| version.starts_with(v)) {
        Ident::Yes
    } else if VERSIONS.iter().any(|v| v.starts_with(version)) {
        Ident::More
    } else {
        Ident::No
    }
}

/// Whether `s` is HTTP/1.x: the client's first bytes are a request line. The client speaks
/// first in HTTP: a server that spoke before it is not HTTP.
pub fn identify(s: &Streams<'_>) -> Ident {
    if s.client.is_empty() && (s.client_done || !s.server.is_empty()) {
        return Ident::No;
    }
    match request_line(s.client) {
        Ident::More if s.client_done => Ident::No,
        answer => answer,
    }
}

/// Whether a form or query field called `name` carries a password (see [`PASSWORD_FIELDS`]).
pub fn is_password_field(name: &[u8]) -> bool {
    let last = name
        .split(|&c| matches!(c, b'[' | b']' | b'.'))
        .rfind(|part| !part.is_empty())
        .unwrap_or_default();
    PASSWORD_FIELDS
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(last))
}

/// `s` with `%XX` escapes and `+` decoded, as form field names are written.
fn url_decode(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(h), Some(l)) = (
                    s.get(i + 1).copied().and_then(hex),
                    s.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(h << 4 | l);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Whether a `key=value&...` list has a password field. A key counts only with its `=`, so a
/// field cut short by the end of the bytes seen is not judged by its first letters.
fn form_has_password(fields: &[u8]) -> bool {
    fields
        .split(|&c| c == b'&' || c == b';')
        .filter_map(|field| {
            let eq = field.iter().position(|&c| c == b'=')?;
            Some(url_decode(&field[..eq]))
        })
        .any(|key| is_password_field(&key))
}

/// The value of parameter `name` in a header value such as `multipart/form-data; boundary=x`.
fn parameter<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    value.split(|&c| c == b';').skip(1).find_map(|p| {
        let p = p.trim_ascii();
        let eq = p.iter().position(|&c| c == b'=')?;
        if !p[..eq].trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
            return None;
        }
        let v = p[eq + 1..].trim_ascii();
        Some(
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v),
        )
    })
}

/// The longest multipart boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether a `multipart/form-data` body (as far as seen) has a part named like a password.
/// Only the parts' own headers are read, not their contents (an uploaded HTML page may well
/// hold `name="password"`).
fn multipart_has_password(body: &[u8], boundary: &[u8]) -> bool {
    // RFC 2046 bounds a boundary at 70 characters; a longer one is no form a browser sends, and
    // searching for it would cost its length times the body's.
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
        return false;
    }
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut rest = body;
    while let Some(at) = find(rest, &delimiter) {
        rest = &rest[at + delimiter.len()..];
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            return false;
        };
        let named = rest[..head_end].split(|&c| c == b'\n').any(|line| {
            let line = line.trim_ascii();
            let Some(colon) = line.iter().position(|&c| c == b':') else {
                return false;
            };
            line[..colon].eq_ignore_ascii_case(b"content-disposition")
                && parameter(&line[colon..], "name").is_some_and(is_password_field)
        });
        if named {
            return true;
        }
        rest = &rest[head_end..];
    }
    false
}

/// A header's name and value.
type Header<'a> = (&'a [u8], &'a [u8]);

/// The credential a request carries in the clear, from its target, headers and (as much as
/// was seen of) its body.
fn credential(target: &[u8], headers: &[Header<'_>], body: &[u8]) -> Option<Credential> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.trim_ascii())
    };
    let is_basic = |v: &[u8]| {
        v.len() > 6 && v[..5].eq_ignore_ascii_case(b"basic") && matches!(v[5], b' ' | b'\t')
    };
    // A proxy's credentials travel the same way, and are as readable.
    let basic = ["authorization", "proxy-authorization"]
        .into_iter()
        .any(|name| header(name).is_some_and(is_basic));
    if basic {
        return Some(Credential::HttpBasic);
    }
    let query = target
        .iter()
        .position(|&c| c == b'?')
        .map(|q| &target[q + 1..])
        .map(|q| q.split(|&c| c == b'#').next().unwrap_or_default());
    if query.is_some_and(form_has_password) {
        return Some(Credential::HttpForm);
    }
    let content_type = header("content-type").unwrap_or_default();
    let media = content_type
        .split(|&c| c == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let form = if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        form_has_password(body)
    } else if media.eq_ignore_ascii_case(b"multipart/form-data") {
        parameter(content_type, "boundary").is_some_and(|b| multipart_has_password(body, b))
    } else {
        false
    };
    form.then_some(Credential::HttpForm)
}

/// How a message's body is framed.
enum Body {
    /// `n` bytes (`Content-Length`, or none at all).
    Length(usize),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (a response with neither).
    UntilClose,
}

/// The framing its headers give a message; `Err` for a `Content-Length` that is not a number.
fn framing(headers: &[httparse::Header<'_>], otherwise: Body) -> Result<Body, ()> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value
                .rsplit(|&c| c == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        {
            return Ok(Body::Chunked);
        }
    }
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(())?;
            return Ok(Body::Length(n));
        }
    }
    Ok(otherwise)
}

/// A chunked body at the start of `b`: its length on the wire and its data, or `None` while it
/// continues past `b` (the data seen so far is still returned). `Err` for a broken size line.
fn dechunk(b: &[u8]) -> Result<(Option<usize>, Vec<u8>), ()> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&b[at..], b"\r\n") else {
            return Ok((None, data));
        };
        let line = &b[at..at + eol];
        let size = line.split(|&c| c == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size.trim_ascii())
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(())?;
        at += eol + 2;
        if size == 0 {
            // Trailer fields, if any, then an empty line.
            let end = if b[at..].starts_with(b"\r\n") {
                Some(2)
            } else {
                find(&b[at..], b"\r\n\r\n").map(|end| end + 4)
            };
            return Ok((end.map(|end| at + end), data));
        }
        let available = b.len().saturating_sub(at).min(size);
        data.extend_from_slice(&b[at..at + available]);
        // A size that runs past the bytes seen (however large: it comes from the peer) means
        // the body goes on beyond the window.
        match at.checked_add(size).and_then(|end| end.checked_add(2)) {
            Some(next) if next <= b.len() => at = next,
            _ => return Ok((None, data)),
        }
    }
}

/// One request of the window.
struct Request {
    method: String,
    /// The path of the target, without query.
    path: String,
    credential: Option<Credential>,
}

/// The requests at the start of `b`.
struct Requests {
    requests: Vec<Request>,
    /// Whether the first request, head and body, is all there.
    first_complete: bool,
}

/// The path of a request target: origin form `/a/b?q` or absolute form `http://h/a/b?q`.
fn path_of(target: &str) -> &str {
    let target = target.split(['?', '#']).next().unwrap_or_default();
    let Some((_, after_scheme)) = target.split_once("://") else {
        return target;
    };
    after_scheme.find('/').map_or("/", |p| &after_scheme[p..])
}

/// The requests the client sent, in order, as far as they are complete (the last one may lack
/// some of its body). `Err` when the first one is not HTTP/1.x.
fn requests(b: &[u8]) -> Result<Requests, ()> {
    let mut found = Requests {
        requests: Vec::new(),
        first_complete: false,
    };
    let mut rest = b;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => break,
            Err(_) if found.requests.is_empty() => return Err(()),
            Err(_) => break,
        };
        let (Some(method), Some(target)) = (request.method, request.path) else {
            return Err(());
        };
        let after = &rest[head..];
        let framed = match framing(request.headers, Body::Length(0)) {
            Ok(Body::Length(n)) => Ok((
                (n <= after.len()).then_some(n),
                after[..n.min(after.len())].to_vec(),
            )),
            Ok(Body::Chunked) => dechunk(after),
            // A request without a length has none; only a broken length is an error.
            Ok(Body::UntilClose) | Err(()) => Err(()),
        };
        let (wire, body) = match framed {
            Ok(framed) => framed,
            Err(()) if found.requests.is_empty() => return Err(()),
            Err(()) => break,
        };
        let pairs: Vec<Header<'_>> = request
            .headers
            .iter()
            .map(|h| (h.name.as_bytes(), h.value))
            .collect();
        found.requests.push(Request {
            method: method.to_owned(),
            path: path_of(target).to_owned(),
            credential: credential(target.as_bytes(), &pairs, &body),
        });
        let Some(wire) = wire else {
            break;
        };
        if found.requests.len() == 1 {
            found.first_complete = true;
        }
        rest = &after[wire..];
    }
    Ok(found)
}

/// The statuses of the final (not 1xx) responses at the start of `b`, in order, as far as their
/// heads are complete. `methods` are the requests' methods, in order (a response to HEAD has no
/// body). `Err` when the first one is not HTTP/1.x.
fn responses(b: &[u8], methods: &[&str]) -> Result<Vec<u16>, ()> {
    let mut statuses = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => break,
            Err(_) if statuses.is_empty() => return Err(()),
            Err(_) => break,
        };
        let Some(status) = response.code else {
            return Err(());
        };
        rest = &rest[head..];
        if (100..200).contains(&status) && status != 101 {
            // An interim response: the final one to the same request follows.
            continue;
        }
        let method = methods.get(statuses.len()).copied();
        statuses.push(status);
        let no_body = status == 101
            || status == 204
            || status == 304
            || method == Some("HEAD")
            || (method == Some("CONNECT") && (200..300).contains(&status));
        if no_body {
            if status == 101 || method == Some("CONNECT") {
                // Another protocol follows.
                break;
            }
            continue;
        }
        let wire = match framing(response.headers, Body::UntilClose) {
            Ok(Body::Length(n)) => (n <= rest.len()).then_some(n),
            Ok(Body::Chunked) => dechunk(rest).ok().and_then(|(wire, _)| wire),
            Ok(Body::UntilClose) | Err(()) => None,
        };
        let Some(wire) = wire else {
            break;
        };
        rest = &rest[wire..];
    }
    Ok(statuses)
}

/// Whether `rule` says that `request` answered with `status` is a failed login.
fn rule_matches(rule: &LoginRule, request: &Request, status: u16) -> bool {
    rule.status == status
        && rule.path == request.path
        && rule.method.as_ref().is_none_or(|m| *m == request.method)
}

/// The credentials and failed logins of the requests and responses in `s`.
///
/// Progress is `Done` once the first request (head and body) and the head of its response are
/// there, or either side can grow no more; `More` before; `Malformed` when a side's first
/// message is not HTTP/1.x.
pub fn analyze(s: &Streams<'_>, cx: &Context<'_>) -> Analysis {
    let mut analysis = Analysis::default();
    let Ok(requests) = requests(s.client) else {
        analysis.progress = Progress::Malformed;
        return analysis;
    };
    let methods: Vec<&str> = requests
        .requests
        .iter()
        .map(|r| r.method.as_str())
        .collect();
    let Ok(statuses) = responses(s.server, &methods) else {
        analysis.progress = Progress::Malformed;
        return analysis;
    };
    analysis.credential = requests.requests.iter().find_map(|r| r.credential);
    let failures = statuses.iter().enumerate().filter(|&(i, &status)| {
        status == 401
            || requests.requests.get(i).is_some_and(|request| {
                cx.login_rules
                    .iter()
                    .any(|rule| rule_matches(rule, request, status))
            })
    });
    analysis.auth_failures = u32::try_from(failures.count()).unwrap_or(u32::MAX);
    let exchanged = requests.first_complete && !statuses.is_empty();
    analysis.progress = if exchanged || s.client_done || s.server_done {
        Progress::Done
    } else {
        Progress::More
    };
    analysis
}

/// The header lines of a segment's head, as far as the segment holds them, and what follows
/// the head.
fn segment_head(segment: &[u8]) -> (Vec<Header<'_>>, &[u8]) {
    let (head, body) = match find(segment, b"\r\n\r\n") {
        Some(end) => (&segment[..end], &segment[end + 4..]),
        None => (segment, &[][..]),
    };
    let headers = head
        .split(|&c| c == b'\n')
        .skip(1)
        .filter_map(|line| {
            let colon = line.iter().position(|&c| c == b':')?;
            Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
        })
        .collect();
    (headers, body)
}

/// What one segment of a kept-alive HTTP connection says on its own: a `401` status line at
/// its start from the server, a request at its start with a credential within the segment from
/// the client.
pub fn watch(from_server: bool, segment: &[u8], _cx: &Context<'_>) -> Watch {
    let mut watch = Watch::default();
    if from_server {
        let status_line = segment.len() >= 12
            && segment.starts_with(b"HTTP/1.")
            && matches!(segment[7], b'0' | b'1')
            && &segment[8..12] == b" 401"
            && segment
                .get(12)
                .is_none_or(|c| matches!(c, b' ' | b'\r' | b'\n'));
        watch.auth_failure = status_line;
        return watch;
    }
    if request_line(segment) != Ident::Yes {
        return watch;
    }
    let target = segment.split(|&c| c == b' ').nth(1).unwrap_or_default();
    let (headers, body) = segment_head(segment);
    watch.credential = credential(target, &headers, body);
    watch
}

#[cfg(test)]
pub(crate) mod tests;
