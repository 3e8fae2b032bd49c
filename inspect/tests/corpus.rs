//! Identification against the labelled corpus of real flows (`inspect/corpus`, made by
//! `cargo xtask corpus` from real clients and servers): every protocol at least 99.5% right,
//! truncated flows never taken for another protocol, random streams never taken for any.

use std::path::{Path, PathBuf};

use crmguard_inspect::proto::{identify, Identified};
use crmguard_inspect::{Protocol, Streams};

/// The share of each protocol's flows that must be identified as it.
const REQUIRED: f64 = 0.995;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The flows of one protocol's folder: (name, client bytes, server bytes).
fn flows(protocol: Protocol) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = corpus().join(protocol.as_str());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".client").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let read = |side: &str| {
                let path = dir.join(format!("{name}.{side}"));
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            };
            let (client, server) = (read("client"), read("server"));
            (name, client, server)
        })
        .collect()
}

fn ended(client: &[u8], server: &[u8]) -> Identified {
    identify(&Streams {
        client,
        server,
        client_done: true,
        server_done: true,
    })
}

const LABELLED: [Protocol; 8] = [
    Protocol::Tls,
    Protocol::Http,
    Protocol::Http2,
    Protocol::Postgresql,
    Protocol::Mysql,
    Protocol::Redis,
    Protocol::Ssh,
    Protocol::Smtp,
];

#[test]
fn every_protocol_of_the_corpus_is_identified() {
    let mut report = String::new();
    let mut failures = Vec::new();
    for protocol in LABELLED {
        let flows = flows(protocol);
        assert!(flows.len() >= 200, "{protocol}: only {} flows", flows.len());
        let mut right = 0usize;
        for (name, client, server) in &flows {
            match ended(client, server) {
                Identified::Known(found) if found == protocol => right += 1,
                other => failures.push(format!("{protocol}/{name}: {other:?}")),
            }
        }
        let share = right as f64 / flows.len() as f64;
        report.push_str(&format!(
            "{protocol:<11} {right:>4}/{:<4} {:.2}%\n",
            flows.len(),
            share * 100.0
        ));
        assert!(
            share >= REQUIRED,
            "{protocol}: {right} of {} identified\n{report}{}",
            flows.len(),
            failures.join("\n")
        );
    }
    println!("{report}");
}

/// A small, seeded generator, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn a_truncated_flow_is_its_own_protocol_or_unknown_never_another() {
    let mut rng = Rng(0x5eed_c0de_1234_5678);
    let mut checked = 0;
    for protocol in LABELLED {
        for (name, client, server) in flows(protocol) {
            for _ in 0..4 {
                let c = rng.below(client.len() + 1);
                let s = rng.below(server.len() + 1);
                match ended(&client[..c], &server[..s]) {
                    Identified::Known(found) if found != protocol => panic!(
                        "{protocol}/{name} cut at client {c}, server {s}: identified as {found}"
                    ),
                    _ => checked += 1,
                }
            }
        }
    }
    assert!(checked >= 6400);
}

#[test]
fn random_streams_are_never_identified() {
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    for i in 0..20_000 {
        let client_len = rng.below(2048);
        let client = rng.bytes(client_len);
        let server_len = if i % 2 == 0 { 0 } else { rng.below(2048) };
        let server = rng.bytes(server_len);
        let answer = ended(&client, &server);
        assert!(
            !matches!(answer, Identified::Known(_)),
            "random stream {i} ({} and {} bytes) identified: {answer:?}",
            client.len(),
            server.len()
        );
    }
}
