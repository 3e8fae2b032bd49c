//! SMTP: the server greets with `220`, the client answers `EHLO`, `HELO` or (LMTP) `LHLO`.
//! Commands and replies are then paired in order to find an `AUTH` sent before a successful
//! `STARTTLS` (a credential in the clear, whatever the mechanism), its `535` refusal, and the
//! switch to TLS. Once the flow is encrypted the engine stops watching it, so `watch` only
//! ever sees segments sent before STARTTLS.

use crate::protocol::{Analysis, Context, Credential, Ident, Progress, Streams, Watch};

#[cfg(test)]
mod tests;

/// The longest line looked at (RFC 5321 allows 512 for commands and replies).
const MAX_LINE: usize = 1024;

/// The first line of `b` without its line ending, and the rest; `None` while incomplete.
fn line(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().take(MAX_LINE).position(|&x| x == b'\n')?;
    let text = &b[..end];
    Some((text.strip_suffix(b"\r").unwrap_or(text), &b[end + 1..]))
}

/// Whether `b` starts with `word` (ASCII case-insensitive), or is a prefix of it.
fn starts(b: &[u8], word: &[u8]) -> Ident {
    let n = b.len().min(word.len());
    if !b[..n].eq_ignore_ascii_case(&word[..n]) {
        Ident::No
    } else if n == word.len() {
        Ident::Yes
    } else {
        Ident::More
    }
}

/// The server's greeting: `220`, space or `-`, printable text, CR LF.
fn greeting(b: &[u8]) -> Ident {
    let n = b.len().min(4);
    if !b"220 "[..n].eq(&b[..n]) && !b"220-"[..n].eq(&b[..n]) {
        return Ident::No;
    }
    let body = &b[n..b.len().min(MAX_LINE)];
    let end = body.iter().position(|&x| x == b'\n');
    let text = &body[..end.unwrap_or(body.len())];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if !text
        .iter()
        .all(|&x| (0x20..0x7f).contains(&x) || x == b'\t')
    {
        return Ident::No;
    }
    match end {
        Some(_) if body[..end.unwrap_or(0)].ends_with(b"\r") => Ident::Yes,
        Some(_) => Ident::No,
        None if b.len() >= MAX_LINE => Ident::No,
        None => Ident::More,
    }
}

/// Whether `s` is SMTP: the greeting, then the client's hello.
pub fn identify(s: &Streams<'_>) -> Ident {
    let hello = [b"EHLO " as &[u8], b"HELO ", b"LHLO "]
        .iter()
        .map(|w| starts(s.client, w))
        .fold(Ident::No, |best, x| match (best, x) {
            (Ident::Yes, _) | (_, Ident::Yes) => Ident::Yes,
            (Ident::More, _) | (_, Ident::More) => Ident::More,
            _ => Ident::No,
        });
    match (greeting(s.server), hello) {
        (Ident::No, _) | (_, Ident::No) => Ident::No,
        (Ident::Yes, Ident::Yes) => Ident::Yes,
        _ => Ident::More,
    }
}

/// The next complete reply at the start of `b` (continuation lines `NNN-` up to the last
/// `NNN `): its code and the rest.
fn reply(mut b: &[u8]) -> Option<(u16, &[u8])> {
    loop {
        let (text, rest) = line(b)?;
        let code = text.get(..3)?;
        let code = std::str::from_utf8(code).ok()?.parse::<u16>().ok()?;
        b = rest;
        if text.get(3) != Some(&b'-') {
            return Some((code, b));
        }
    }
}

/// What `s` holds: `AUTH` before STARTTLS, `535` refusals, STARTTLS accepted. Done after the
/// answer to `AUTH`, or when the client quits or starts a mail transaction without it.
pub fn analyze(s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    let mut out = Analysis::default();
    let Some((_, mut server)) = reply(s.server) else {
        return waiting(s, out);
    };
    let mut client = s.client;
    loop {
        let Some((command, rest)) = line(client) else {
            return waiting(s, out);
        };
        client = rest;
        let Some((mut code, rest)) = reply(server) else {
            return waiting(s, out);
        };
        server = rest;
        let verb = command.split(|&x| x == b' ').next().unwrap_or_default();
        let is = |w: &[u8]| verb.eq_ignore_ascii_case(w);
        if is(b"AUTH") {
            out.credential = Some(Credential::SmtpAuth);
            // The client answers each 334 challenge with a line of its own.
            while code == 334 {
                let Some((_, rest)) = line(client) else {
                    return waiting(s, out);
                };
                client = rest;
                let Some((next, rest)) = reply(server) else {
                    return waiting(s, out);
                };
                (code, server) = (next, rest);
            }
            out.auth_failures += u32::from(code == 535);
            out.progress = Progress::Done;
            return out;
        }
        if is(b"STARTTLS") && code == 220 {
            out.progress = Progress::Encrypted;
            return out;
        }
        if is(b"QUIT") || is(b"MAIL") {
            out.progress = Progress::Done;
            return out;
        }
    }
}

/// `out` as it stands: done if neither side will send more, otherwise waiting.
fn waiting(s: &Streams<'_>, mut out: Analysis) -> Analysis {
    if s.client_done || s.server_done {
        out.progress = Progress::Done;
    }
    out
}

/// A later segment: the client starting an `AUTH` or the server refusing one with `535`.
pub fn watch(from_server: bool, segment: &[u8], _cx: &Context<'_>) -> Watch {
    if from_server {
        Watch {
            auth_failure: segment.starts_with(b"535"),
            ..Watch::default()
        }
    } else {
        Watch {
            credential: (starts(segment, b"AUTH ") == Ident::Yes).then_some(Credential::SmtpAuth),
            ..Watch::default()
        }
    }
}
