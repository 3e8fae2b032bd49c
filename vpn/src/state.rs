//! `state_dir/vpn-endpoints.json`: where each peer was last seen, so that a restarted agent
//! can start handshakes to its peers at once instead of waiting for them to notice.
//!
//! Keyed by public key (a renamed peer keeps its entry, a rotated key starts afresh). Replaced
//! whole through a temporary file and a rename, like every state file of the agent. Losing the
//! file costs only a slower reconnection, so a file that cannot be read is logged and ignored.
//!
//! Format (version 1):
//!
//! ```json
//! {"version": 1, "peers": {"<base64 public key>":
//!     {"endpoint": "203.0.113.7:51820", "last_handshake": 1735689600}}}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crmguard_core::keys;

/// The name of the file inside `state_dir`.
pub const FILE_NAME: &str = "vpn-endpoints.json";

const VERSION: u32 = 1;

/// What is remembered of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The outside address and port of the last authenticated packet.
    pub endpoint: SocketAddr,
    /// Unix seconds of the last completed handshake, if one was seen.
    #[serde(default)]
    pub last_handshake: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    peers: BTreeMap<String, Remembered>,
}

/// Reads the file; a missing file is an empty map. Entries whose key does not decode are
/// skipped.
pub fn load(path: &Path) -> std::io::Result<BTreeMap<[u8; 32], Remembered>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let file: File = serde_json::from_str(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if file.version != VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("version {} is not supported", file.version),
        ));
    }
    Ok(file
        .peers
        .into_iter()
        .filter_map(|(key, entry)| keys::decode(&key).map(|k| (k, entry)))
        .collect())
}

/// Replaces the file atomically with `peers`.
pub fn save(path: &Path, peers: &BTreeMap<[u8; 32], Remembered>) -> std::io::Result<()> {
    let file = File {
        version: VERSION,
        peers: peers
            .iter()
            .map(|(key, entry)| (keys::encode(key), *entry))
            .collect(),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    text.push(b'\n');
    keys::write_atomic(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        assert!(load(&path).expect("missing is empty").is_empty());
        let mut peers = BTreeMap::new();
        peers.insert(
            [7u8; 32],
            Remembered {
                endpoint: "203.0.113.7:51820".parse().expect("addr"),
                last_handshake: Some(1_735_689_600),
            },
        );
        peers.insert(
            [9u8; 32],
            Remembered {
                endpoint: "[2001:db8::7]:4000".parse().expect("addr"),
                last_handshake: None,
            },
        );
        save(&path, &peers).expect("saved");
        assert_eq!(load(&path).expect("loaded"), peers);
        std::fs::write(&path, "{").expect("write");
        assert!(load(&path).is_err());
    }
}
