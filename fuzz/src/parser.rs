//! One protocol parser, called the way the engine calls it: `identify` on the bytes of both
//! directions as they grow, `analyze` once identified, and `watch` on every segment.
//!
//! Input: `[flags][client length: u16 BE][client bytes][server bytes]`.
//!
//! - `flags & 1`, `flags & 2`: whether the client, the server is done at the last step.
//! - `(flags >> 2) & 7`: the step is `1 << that` bytes (raised so there are at most
//!   [`MAX_STEPS`] steps: every prefix would cost quadratic time on 12 KiB inputs).
//! - `flags & 0x20`: the server speaks first in each step.
//!
//! The client's bytes are cut at the engine's client window (8 KiB), the server's at 4 KiB:
//! the parsers never see more.

use crmguard_inspect::engine::{CLIENT_WINDOW, SERVER_WINDOW};
use crmguard_inspect::proto;
use crmguard_inspect::{Context, Ident, LoginRule, Progress, Protocol, Streams};

/// Most steps per input.
pub const MAX_STEPS: usize = 64;

/// The web login rules every run analyzes with: one with a method, one for any method.
pub fn login_rules() -> Vec<LoginRule> {
    vec![
        LoginRule {
            method: Some("POST".to_owned()),
            path: "/login".to_owned(),
            status: 200,
        },
        LoginRule {
            method: None,
            path: "/auth/signin".to_owned(),
            status: 302,
        },
    ]
}

/// Splits `data` into flags, client bytes and server bytes.
pub fn split(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(3..).unwrap_or(&[]);
    let client_len = usize::from(crate::be16(data, 1)).min(rest.len());
    let (client, server) = rest.split_at(client_len);
    (
        flags,
        &client[..client.len().min(CLIENT_WINDOW)],
        &server[..server.len().min(SERVER_WINDOW)],
    )
}

/// Feeds `data` to `protocol`'s parser.
pub fn run(protocol: Protocol, data: &[u8]) {
    let (flags, client, server) = split(data);
    let rules = login_rules();
    let cx = Context {
        login_rules: &rules,
    };
    let total = client.len() + server.len();
    let step = (1usize << ((flags >> 2) & 7)).max(total.div_ceil(MAX_STEPS));
    let server_first = flags & 0x20 != 0;

    let (mut c, mut s) = (0, 0);
    let mut identified = false;
    let mut analyzing = true;
    loop {
        let last = c == client.len() && s == server.len();
        let streams = Streams {
            client: &client[..c],
            server: &server[..s],
            client_done: last && flags & 1 != 0,
            server_done: last && flags & 2 != 0,
        };
        if !identified && proto::identify_as(protocol, &streams) == Ident::Yes {
            identified = true;
        }
        if identified && analyzing {
            let analysis = proto::analyze(protocol, &streams, &cx);
            analyzing = analysis.progress == Progress::More;
        }
        if last {
            break;
        }
        // The next segment of each side, in the order the flags say.
        let next_c = (c + step).min(client.len());
        let next_s = (s + step).min(server.len());
        let segments = [(false, &client[c..next_c]), (true, &server[s..next_s])];
        let order = if server_first { [1, 0] } else { [0, 1] };
        for i in order {
            let (from_server, segment) = segments[i];
            if !segment.is_empty() {
                proto::watch(protocol, from_server, segment, &cx);
            }
        }
        (c, s) = (next_c, next_s);
    }
    // The whole streams once more, with every combination of done flags, and each whole side
    // as one segment.
    for (client_done, server_done) in [(false, false), (true, false), (false, true), (true, true)] {
        let streams = Streams {
            client,
            server,
            client_done,
            server_done,
        };
        if proto::identify_as(protocol, &streams) == Ident::Yes {
            proto::analyze(protocol, &streams, &cx);
        }
    }
    proto::watch(protocol, false, client, &cx);
    proto::watch(protocol, true, server, &cx);
}
