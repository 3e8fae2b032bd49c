//! When an administrator last enabled each peer (`state_dir/peers-enabled.json`). Enabling
//! counts as activity for `vpn.disable_inactive_after`: a peer disabled for inactivity and
//! enabled again gets the full period to connect instead of being disabled at the next check.

use std::collections::BTreeMap;
use std::path::Path;

/// The file in `state_dir`.
pub const FILE_NAME: &str = "peers-enabled.json";

/// Unix seconds of each peer's last enabling; empty when the file is missing or unreadable
/// (the peers are then judged by their handshakes and `created` alone).
pub fn load_enabled_at(state_dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read(state_dir.join(FILE_NAME))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Records that `peers` were enabled at `now` (Unix seconds) in `enabled_at` and the file.
pub fn record_enabled(
    state_dir: &Path,
    enabled_at: &mut BTreeMap<String, u64>,
    peers: &[&str],
    now: u64,
) -> std::io::Result<()> {
    for peer in peers {
        enabled_at.insert((*peer).to_owned(), now);
    }
    let bytes = serde_json::to_vec_pretty(enabled_at).map_err(std::io::Error::other)?;
    crate::atomic_file::write(&state_dir.join(FILE_NAME), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load_enabled_at(dir.path()).is_empty());
        let mut enabled = BTreeMap::new();
        record_enabled(dir.path(), &mut enabled, &["ivy", "hank"], 1_800_000_000).expect("saved");
        record_enabled(dir.path(), &mut enabled, &["ivy"], 1_800_000_100).expect("saved");
        let read = load_enabled_at(dir.path());
        assert_eq!(read.get("ivy"), Some(&1_800_000_100));
        assert_eq!(read.get("hank"), Some(&1_800_000_000));
    }
}
