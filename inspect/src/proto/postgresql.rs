//! PostgreSQL's frontend/backend protocol (version 3.0): told apart by the client's first
//! message, then followed through the startup and authentication exchange to report passwords
//! sent in the clear (AuthenticationCleartextPassword) or as an unsalted-looking MD5 digest
//! (AuthenticationMD5Password), failed logins (ErrorResponse with SQLSTATE 28P01 or 28000), and
//! a switch to TLS or GSSAPI encryption.
//!
//! Startup-phase client messages carry no type byte (`i32` length, then `i32` code); every later
//! message in both directions is a type byte followed by an `i32` length that counts itself.

use crate::protocol::{Analysis, Context, Credential, Ident, Progress, Streams, Watch};

#[cfg(test)]
mod tests;

/// The request code of an SSLRequest.
const SSL_REQUEST: u32 = 80_877_103;
/// The request code of a GSSENCRequest.
const GSSENC_REQUEST: u32 = 80_877_104;
/// The request code of a CancelRequest.
const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol version 3.0 in a StartupMessage.
const PROTOCOL_3_0: u32 = 196_608;
/// The longest StartupMessage taken for real (the server itself refuses more than 10000 bytes).
const MAX_STARTUP_LEN: u32 = 10_000;

/// The client's first message (or the one after a refused encryption request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    Ssl,
    Gssenc,
    Cancel,
    /// A StartupMessage with a `user` parameter, this long.
    Startup(usize),
}

/// An opening message's shape: which lengths it may have, and its code.
type Shape = (fn(u32) -> bool, u32);

/// What the bytes at the start of `b` are: `Ok(Some)` a complete opening message,
/// `Ok(None)` a prefix of one, `Err(())` none.
fn opening(b: &[u8]) -> Result<Option<Opening>, ()> {
    // A prefix of the fixed 8-byte header must match one of the four shapes.
    let shapes: [Shape; 4] = [
        (|l| l == 8, SSL_REQUEST),
        (|l| l == 8, GSSENC_REQUEST),
        (|l| l == 16, CANCEL_REQUEST),
        (|l| l > 8 && l <= MAX_STARTUP_LEN, PROTOCOL_3_0),
    ];
    let head_len = b.len().min(8);
    let matches = |(len_ok, code): &Shape| {
        let mut want = [0u8; 8];
        want[4..].copy_from_slice(&code.to_be_bytes());
        if b.len() >= 4 {
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            if !len_ok(len) {
                return false;
            }
        } else if b.iter().take(2).any(|&x| x != 0) {
            // Every accepted length is below 65536: its two high bytes are zero.
            return false;
        }
        b.len() <= 4 || b[4..head_len] == want[4..head_len]
    };
    let Some(&(_, code)) = shapes.iter().find(|s| matches(s)) else {
        return Err(());
    };
    if b.len() < 8 {
        return Ok(None);
    }
    match code {
        SSL_REQUEST => Ok(Some(Opening::Ssl)),
        GSSENC_REQUEST => Ok(Some(Opening::Gssenc)),
        CANCEL_REQUEST => Ok(Some(Opening::Cancel)),
        _ => startup(b).map(|len| len.map(Opening::Startup)),
    }
}

/// Checks a StartupMessage's parameters: NUL-terminated key/value pairs, printable non-empty
/// keys, a final empty key exactly at the message's end, and a `user`. Returns its length once
/// complete.
fn startup(b: &[u8]) -> Result<Option<usize>, ()> {
    let len = usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).map_err(|_| ())?;
    let end = b.len().min(len);
    let mut at = 8;
    let mut user = false;
    loop {
        // A key, or the terminating NUL.
        let Some(key_len) = b[at..end].iter().position(|&x| x == 0) else {
            let partial = &b[at..end];
            if end == len || !partial.iter().all(u8::is_ascii_graphic) {
                return Err(());
            }
            return Ok(None);
        };
        let key = &b[at..at + key_len];
        if key.is_empty() {
            return if at + 1 == len && user {
                Ok(Some(len))
            } else {
                Err(())
            };
        }
        if !key.iter().all(u8::is_ascii_graphic) {
            return Err(());
        }
        user |= key == b"user";
        at += key_len + 1;
        let Some(value_len) = b[at..end].iter().position(|&x| x == 0) else {
            return if end == len { Err(()) } else { Ok(None) };
        };
        at += value_len + 1;
    }
}

/// Whether `s` is PostgreSQL: decided by the client's first message alone.
pub fn identify(s: &Streams<'_>) -> Ident {
    match opening(s.client) {
        Ok(Some(_)) => Ident::Yes,
        Ok(None) => Ident::More,
        Err(()) => Ident::No,
    }
}

/// One backend (or typed frontend) message: its type and body, or why not.
enum Message<'a> {
    Complete(u8, &'a [u8]),
    Partial,
    Broken,
}

/// The message at the start of `b`.
fn message(b: &[u8]) -> Message<'_> {
    if b.len() < 5 {
        return Message::Partial;
    }
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
    let Ok(len) = usize::try_from(len) else {
        return Message::Broken;
    };
    if !(4..=(1 << 30)).contains(&len) {
        return Message::Broken;
    }
    match b.get(5..1 + len) {
        Some(body) => Message::Complete(b[0], body),
        None => Message::Partial,
    }
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let end = tail.iter().position(|&x| x == 0)?;
        if kind == b'C' {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// What `s` holds: a TLS or GSSAPI switch, the password the client sends when the server asks
/// for it in the clear or as MD5, and failed logins. Done once the server accepts the login or
/// refuses it (and, when it asked for a password, the client's answer is in).
pub fn analyze(s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    let mut out = Analysis::default();
    let more = |out: Analysis| Analysis {
        progress: if s.client_done || s.server_done {
            Progress::Done
        } else {
            Progress::More
        },
        ..out
    };
    // Encryption requests the server refused with 'N' are followed by the next message.
    let (mut c, mut sv) = (0usize, 0usize);
    let startup_len = loop {
        match opening(&s.client[c..]) {
            Err(()) => {
                out.progress = Progress::Malformed;
                return out;
            }
            Ok(None) => return more(out),
            Ok(Some(Opening::Cancel)) => {
                out.progress = Progress::Done;
                return out;
            }
            Ok(Some(Opening::Startup(len))) => break len,
            Ok(Some(request @ (Opening::Ssl | Opening::Gssenc))) => {
                let accept = if request == Opening::Ssl { b'S' } else { b'G' };
                match s.server.get(sv) {
                    None => return more(out),
                    Some(&b'N') => {
                        c += 8;
                        sv += 1;
                    }
                    Some(&answer) if answer == accept => {
                        out.progress = Progress::Encrypted;
                        return out;
                    }
                    Some(_) => {
                        out.progress = Progress::Malformed;
                        return out;
                    }
                }
            }
        }
    };
    c += startup_len;
    let mut password_asked: Option<Credential> = None;
    let mut finished = false;
    let mut server = &s.server[sv..];
    while !finished {
        match message(server) {
            Message::Partial => break,
            Message::Broken => {
                out.progress = Progress::Malformed;
                return out;
            }
            Message::Complete(kind, body) => {
                server = &server[1 + 4 + body.len()..];
                match (kind, body) {
                    (b'R', [a, b, c, d, ..]) => match u32::from_be_bytes([*a, *b, *c, *d]) {
                        0 => finished = true,
                        3 => password_asked = Some(Credential::PostgresqlCleartext),
                        5 => password_asked = Some(Credential::PostgresqlMd5),
                        _ => {}
                    },
                    (b'E', _) => {
                        if matches!(sqlstate(body), Some(b"28P01" | b"28000")) {
                            out.auth_failures += 1;
                        }
                        finished = true;
                    }
                    _ => {}
                }
            }
        }
    }
    let mut answered = password_asked.is_none();
    if let Some(credential) = password_asked {
        match message(&s.client[c..]) {
            Message::Complete(b'p', _) => {
                out.credential = Some(credential);
                answered = true;
            }
            Message::Complete(..) | Message::Broken => answered = true,
            Message::Partial => {}
        }
    }
    if finished && answered {
        out.progress = Progress::Done;
        out
    } else {
        more(out)
    }
}

/// Nothing to watch once the login is over: later messages carry no credentials.
pub fn watch(_from_server: bool, _segment: &[u8], _cx: &Context<'_>) -> Watch {
    Watch::default()
}
