//! Redis: the client's commands are RESP arrays of bulk strings (`*2\r\n$4\r\nAUTH\r\n...`) or
//! inline lines (`AUTH secret\r\n`). The first command and the server's first reply tell
//! whether a password went in the clear (`AUTH`, or `HELLO <version> AUTH <user> <password>`)
//! and whether it was refused (`-WRONGPASS`, or `-NOAUTH` for a client without one); later
//! commands on the kept-alive connection are left to `watch`.

use crate::protocol::{Analysis, Context, Credential, Ident, Progress, Streams, Watch};

#[cfg(test)]
mod tests;

/// Common commands, for inline commands (RESP arrays may carry any word).
const COMMANDS: &[&str] = &[
    "ACL",
    "APPEND",
    "AUTH",
    "BGSAVE",
    "BLPOP",
    "BRPOP",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DECR",
    "DEL",
    "ECHO",
    "EVAL",
    "EXISTS",
    "EXPIRE",
    "FLUSHALL",
    "FLUSHDB",
    "GET",
    "HDEL",
    "HELLO",
    "HGET",
    "HGETALL",
    "HSET",
    "INCR",
    "INFO",
    "KEYS",
    "LPOP",
    "LPUSH",
    "LRANGE",
    "MGET",
    "MONITOR",
    "MSET",
    "PING",
    "PSUBSCRIBE",
    "PUBLISH",
    "QUIT",
    "RPOP",
    "RPUSH",
    "SADD",
    "SAVE",
    "SCAN",
    "SELECT",
    "SET",
    "SLAVEOF",
    "SMEMBERS",
    "SUBSCRIBE",
    "TTL",
    "TYPE",
    "REPLICAOF",
    "ZADD",
    "ZRANGE",
];
/// The first bytes of RESP2 and RESP3 replies.
const REPLY_TYPES: &[u8] = b"+-:$*_,#!=(%~>|";
/// Bounds on what is taken for a command.
const MAX_ARGS: usize = 1024;
const MAX_LINE: usize = 4096;

/// A number line (`123\r\n`) at the start of `b`: `Ok(Some)` complete, `Ok(None)` a prefix.
fn number(b: &[u8]) -> Result<Option<(i64, &[u8])>, ()> {
    let digits = b
        .iter()
        .take(12)
        .take_while(|x| x.is_ascii_digit() || **x == b'-')
        .count();
    match (b.get(digits), b.get(digits + 1)) {
        (None, _) if digits < 12 => Ok(None),
        (Some(b'\r'), None) => Ok(None),
        (Some(b'\r'), Some(b'\n')) => {
            let text = std::str::from_utf8(&b[..digits]).map_err(|_| ())?;
            Ok(Some((text.parse().map_err(|_| ())?, &b[digits + 2..])))
        }
        _ => Err(()),
    }
}

/// The first command of `b` as its arguments: `Ok(Some)` complete, `Ok(None)` a prefix that
/// may become one, `Err(())` not a command.
fn command(b: &[u8]) -> Result<Option<Vec<&[u8]>>, ()> {
    let Some((&first, rest)) = b.split_first() else {
        return Ok(None);
    };
    if first != b'*' {
        return inline(b);
    }
    let Some((n, mut rest)) = number(rest)? else {
        return Ok(None);
    };
    let n = usize::try_from(n).map_err(|_| ())?;
    if !(1..=MAX_ARGS).contains(&n) {
        return Err(());
    }
    let mut args = Vec::new();
    for i in 0..n {
        match rest.first() {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err(()),
        }
        let Some((len, tail)) = number(&rest[1..])? else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| ())?;
        let word_ok = |w: &[u8]| w.iter().all(|x| x.is_ascii_alphabetic() || *x == b'|');
        if i == 0 && (!(1..=32).contains(&len) || !word_ok(&tail[..tail.len().min(len)])) {
            return Err(());
        }
        match (tail.get(..len), tail.get(len..len + 2)) {
            (Some(arg), Some(b"\r\n")) => args.push(arg),
            (_, Some(_)) => return Err(()),
            (_, None) if tail.len() > len && tail[len] != b'\r' => return Err(()),
            _ => return Ok(None),
        }
        rest = &tail[len + 2..];
    }
    Ok(Some(args))
}

/// An inline command: a known command word, then its arguments, on one line that is not an
/// HTTP request line.
fn inline(b: &[u8]) -> Result<Option<Vec<&[u8]>>, ()> {
    let word_len = b
        .iter()
        .position(|&x| x == b' ' || x == b'\r' || x == b'\n');
    let word = &b[..word_len.unwrap_or(b.len())];
    let known = |exact: bool| {
        COMMANDS.iter().any(|c| {
            let c = c.as_bytes();
            if exact {
                c.eq_ignore_ascii_case(word)
            } else {
                c.len() >= word.len() && c[..word.len()].eq_ignore_ascii_case(word)
            }
        })
    };
    if word_len.is_none() {
        return if known(false) { Ok(None) } else { Err(()) };
    }
    if !known(true) {
        return Err(());
    }
    let Some(end) = b.iter().take(MAX_LINE).position(|&x| x == b'\n') else {
        return if b.len() >= MAX_LINE {
            Err(())
        } else {
            Ok(None)
        };
    };
    let line = &b[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line
        .iter()
        .all(|&x| (0x20..0x7f).contains(&x) || x == b'\t')
    {
        return Err(());
    }
    let args: Vec<&[u8]> = line
        .split(|&x| x == b' ')
        .filter(|a| !a.is_empty())
        .collect();
    if args.last().is_some_and(|a| a.starts_with(b"HTTP/")) {
        return Err(());
    }
    Ok(Some(args))
}

/// Whether `s` is Redis: decided by the client's first command, with a server (if it said
/// anything) answering in RESP.
pub fn identify(s: &Streams<'_>) -> Ident {
    if s.server.first().is_some_and(|x| !REPLY_TYPES.contains(x)) {
        return Ident::No;
    }
    match command(s.client) {
        Ok(Some(_)) => Ident::Yes,
        Ok(None) => Ident::More,
        Err(()) => Ident::No,
    }
}

/// Whether a command sends a password: `AUTH ...`, or `HELLO <version> AUTH <user> <pass>`.
fn sends_password(args: &[&[u8]]) -> bool {
    match args.first() {
        Some(name) if name.eq_ignore_ascii_case(b"AUTH") => true,
        Some(name) if name.eq_ignore_ascii_case(b"HELLO") => {
            args.iter().skip(2).any(|a| a.eq_ignore_ascii_case(b"AUTH"))
        }
        _ => false,
    }
}

/// The end of the complete RESP value at the start of `b`, `None` while incomplete.
fn reply_end(b: &[u8], depth: u8) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")? + 2;
    let count = || {
        std::str::from_utf8(&b[1..line_end - 2])
            .ok()?
            .parse::<i64>()
            .ok()
    };
    match b.first()? {
        b'$' | b'=' | b'!' => {
            let len = count()?;
            if len < 0 {
                return Some(line_end);
            }
            let end = line_end + usize::try_from(len).ok()? + 2;
            (b.len() >= end).then_some(end)
        }
        kind @ (b'*' | b'%' | b'~' | b'>' | b'|') if depth < 8 => {
            let n = usize::try_from(count()?.max(0)).ok()?;
            let n = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut at = line_end;
            for _ in 0..n {
                at += reply_end(&b[at..], depth + 1)?;
            }
            Some(at)
        }
        _ => Some(line_end),
    }
}

/// What `s` holds: a password in the first command, its refusal in the first reply. Done once
/// both are complete.
pub fn analyze(s: &Streams<'_>, _cx: &Context<'_>) -> Analysis {
    let mut out = Analysis::default();
    match command(s.client) {
        Ok(Some(args)) => {
            if sends_password(&args) {
                out.credential = Some(Credential::RedisAuth);
            }
        }
        Ok(None) => return waiting(s, out),
        Err(()) => {
            out.progress = Progress::Malformed;
            return out;
        }
    }
    if reply_end(s.server, 0).is_none() {
        return waiting(s, out);
    }
    out.auth_failures = u32::from(refusal(s.server));
    out.progress = Progress::Done;
    out
}

/// `out` as it stands: done if neither side will send more, otherwise waiting.
fn waiting(s: &Streams<'_>, mut out: Analysis) -> Analysis {
    if s.client_done || s.server_done {
        out.progress = Progress::Done;
    }
    out
}

/// Whether a reply refuses a login.
fn refusal(b: &[u8]) -> bool {
    b.starts_with(b"-WRONGPASS") || b.starts_with(b"-NOAUTH")
}

/// A later segment: a client `AUTH` (or `HELLO ... AUTH`) at its start, or a refusal.
pub fn watch(from_server: bool, segment: &[u8], _cx: &Context<'_>) -> Watch {
    if from_server {
        return Watch {
            auth_failure: refusal(segment),
            ..Watch::default()
        };
    }
    let credential = match command(segment) {
        Ok(Some(args)) => sends_password(&args),
        // A command cut by the segment's end: its name is enough for AUTH.
        Ok(None) => {
            let head: Vec<u8> = segment
                .iter()
                .take(24)
                .map(u8::to_ascii_uppercase)
                .collect();
            head.starts_with(b"AUTH ")
                || head.starts_with(b"*2\r\n$4\r\nAUTH\r\n")
                || head.windows(6).any(|w| w == b"\nAUTH\r")
        }
        Err(()) => false,
    };
    Watch {
        credential: credential.then_some(Credential::RedisAuth),
        ..Watch::default()
    }
}
