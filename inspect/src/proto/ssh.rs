//! SSH: told apart by the identification banner (`SSH-2.0-...` or, from servers that also
//! speak version 1, `SSH-1.99-...`, RFC 4253 section 4.2). The client sends its banner first
//! thing; a server may send other lines before its own, so on the server side a few such lines
//! are skipped. Everything after the banners is encrypted: there is nothing to analyze.

use crate::protocol::{Analysis, Context, Ident, Progress, Streams, Watch};

#[cfg(test)]
pub(crate) mod tests;

/// The banner beginnings taken for SSH.
const BANNERS: [&[u8]; 2] = [b"SSH-2.0-", b"SSH-1.99-"];
/// The most bytes of other lines a server may send before its banner that are looked through.
const MAX_PRELUDE: usize = 1024;
/// The longest line RFC 4253 allows (banner or not), CR LF included.
const MAX_LINE: usize = 255;

/// Whether `b` begins with a complete banner line (`Yes`), a prefix of one (`More`) or
/// neither (`No`): `SSH-2.0-` or `SSH-1.99-`, a software version of printable characters
/// without `-` or spaces, optional comments after a space, and LF (normally CR LF) within
/// [`MAX_LINE`] bytes.
fn banner(b: &[u8]) -> Ident {
    for banner in BANNERS {
        let n = b.len().min(banner.len());
        if b[..n] != banner[..n] {
            continue;
        }
        if n < banner.len() {
            return Ident::More;
        }
        let rest = &b[n..b.len().min(MAX_LINE)];
        let line_end = rest.iter().position(|&x| x == b'\n');
        let line = &rest[..line_end.unwrap_or(rest.len())];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let version_len = line.iter().position(|&x| x == b' ').unwrap_or(line.len());
        let (version, comments) = line.split_at(version_len);
        let printable = |x: &u8| (0x21..0x7f).contains(x);
        let valid = version.iter().all(|x| printable(x) && *x != b'-')
            && comments.iter().all(|x| printable(x) || *x == b' ');
        return match line_end {
            _ if !valid => Ident::No,
            Some(_) if version.is_empty() => Ident::No,
            Some(_) => Ident::Yes,
            None if b.len() >= MAX_LINE => Ident::No,
            None => Ident::More,
        };
    }
    Ident::No
}

/// The server side: a banner, possibly after other lines that do not begin with `SSH-`.
fn server_side(b: &[u8]) -> Ident {
    let mut at = 0;
    loop {
        let rest = &b[at..];
        match banner(rest) {
            Ident::No => {}
            found => return found,
        }
        if rest.starts_with(b"SSH-") {
            // An `SSH-` line that is not a version 2 banner.
            return Ident::No;
        }
        let Some(end) = rest.iter().take(MAX_LINE).position(|&x| x == b'\n') else {
            let complete_or_binary =
                rest.len() >= MAX_LINE || rest.iter().any(|&x| x != b'\r' && !is_text(x));
            return if complete_or_binary || at + rest.len() > MAX_PRELUDE {
                Ident::No
            } else {
                Ident::More
            };
        };
        if !rest[..end].iter().all(|&x| x == b'\r' || is_text(x)) {
            return Ident::No;
        }
        at += end + 1;
        if at > MAX_PRELUDE {
            return Ident::No;
        }
    }
}

/// A byte of a line of text: printable ASCII, tab, or part of UTF-8.
fn is_text(x: u8) -> bool {
    x == b'\t' || (0x20..0x7f).contains(&x) || x >= 0x80
}

/// Whether `s` is SSH. The client's first bytes are its banner, so a client that sent anything
/// else is not SSH; a silent client leaves it to the server's banner.
pub fn identify(s: &Streams<'_>) -> Ident {
    match (banner(s.client), s.client.is_empty()) {
        (Ident::Yes, _) => Ident::Yes,
        (Ident::No, false) => Ident::No,
        (Ident::More, false) => match server_side(s.server) {
            Ident::Yes => Ident::Yes,
            _ => Ident::More,
        },
        _ => server_side(s.server),
    }
}

/// Nothing to flag: all that follows the banners is encrypted.
pub fn analyze(_s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    Analysis {
        progress: Progress::Done,
        ..Analysis::default()
    }
}

/// Nothing to watch.
pub fn watch(_from_server: bool, _segment: &[u8], _cx: &Context<'_>) -> Watch {
    Watch::default()
}
