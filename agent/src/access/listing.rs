//! `crmguard peer list`: every configured peer with what an administrator reviews (role,
//! address, key age and expiry, last handshake, MFA state, whether it is admitted), and the
//! seconds until each key expires for `crmguard_vpn_key_expiry_seconds`.
//!
//! Pure: the caller passes the configuration, the endpoint's status, the MFA state and the
//! time.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{format_unix, role_needs_mfa};
use crmguard_core::config::{Config, Peer};
use crmguard_core::mfa::sessions::Sessions;
use crmguard_core::peers::{admitted, key_expires_at};
use crmguard_vpn::status::VpnStatus;

/// One line of `peer list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerListing {
    pub name: String,
    pub role: String,
    pub address: String,
    #[serde(default)]
    pub address6: Option<String>,
    /// `YYYY-MM-DD`, when the key was registered.
    #[serde(default)]
    pub created: Option<String>,
    /// Whole days since `created`.
    #[serde(default)]
    pub key_age_days: Option<u64>,
    /// Seconds until `vpn.key_max_age` is reached; zero or less once the key is refused.
    #[serde(default)]
    pub key_expires_in: Option<i64>,
    /// Unix seconds of the last completed handshake.
    #[serde(default)]
    pub last_handshake: Option<u64>,
    /// `not required`, `not enrolled`, `no session`, `session until T`, `locked out until T`.
    pub mfa: String,
    /// `enabled = true` in the configuration.
    pub enabled: bool,
    /// `admitted`, `disabled` or `key expired`.
    pub state: String,
}

/// The listing of every configured peer at `now`. `handshakes` fills in the last handshake of
/// peers the endpoint does not report (it reports only the admitted ones).
pub fn list(
    config: &Config,
    status: Option<&VpnStatus>,
    sessions: &Sessions,
    handshakes: &HashMap<String, u64>,
    now: SystemTime,
) -> Vec<PeerListing> {
    let (_, excluded) = admitted(config, now);
    let unix_now = crmguard_core::time::unix_seconds(now);
    config
        .peers
        .iter()
        .map(|peer| {
            let state = match excluded.iter().find(|(name, _)| *name == peer.name) {
                None => "admitted",
                Some((_, crmguard_core::peers::Excluded::Disabled)) => "disabled",
                Some((_, crmguard_core::peers::Excluded::KeyTooOld)) => "key expired",
            };
            let last_handshake = status
                .and_then(|s| s.peers.iter().find(|p| p.name == peer.name))
                .and_then(|p| p.latest_handshake)
                .or_else(|| handshakes.get(&peer.name).copied());
            PeerListing {
                name: peer.name.clone(),
                role: peer.role.clone(),
                address: peer.address.to_string(),
                address6: peer.address6.map(|a| a.to_string()),
                created: peer.created.map(|d| d.to_string()),
                key_age_days: peer.created.map(|created| {
                    let days = u64::try_from(created.days_since_unix_epoch()).unwrap_or(0);
                    (unix_now / 86_400).saturating_sub(days)
                }),
                key_expires_in: key_expires_in(config, peer, now),
                last_handshake,
                mfa: mfa_state(config, peer, sessions, unix_now),
                enabled: peer.enabled,
                state: state.to_owned(),
            }
        })
        .collect()
}

/// Seconds from `now` until `peer`'s key is refused; `None` without `[vpn]` or `created`.
pub fn key_expires_in(config: &Config, peer: &Peer, now: SystemTime) -> Option<i64> {
    let vpn = config.vpn.as_ref()?;
    let expires = key_expires_at(peer.created?, vpn.key_max_age);
    Some(crmguard_core::provision::seconds_until(expires, now))
}

fn mfa_state(config: &Config, peer: &Peer, sessions: &Sessions, now: u64) -> String {
    if !role_needs_mfa(config, peer) {
        return "not required".to_owned();
    }
    if let Some(until) = sessions.locked_until(&peer.name, now) {
        return format!("locked out until {}", format_unix(until));
    }
    if !sessions.is_enrolled(&peer.name) {
        return "not enrolled".to_owned();
    }
    match sessions.session(&peer.name, now) {
        Some(session) => format!("session until {}", format_unix(session.expires)),
        None => "no session".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmguard_core::mfa::Secret;
    use std::time::{Duration, UNIX_EPOCH};

    fn config() -> Config {
        let text = r#"
[vpn]
address = "10.77.0.1/24"
key_max_age = "10d"

[[role]]
name = "sales"
allow = ["tcp/443"]
mfa = true

[[role]]
name = "ops"
allow = ["tcp/22"]

[[peer]]
name = "alice"
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
address = "10.77.0.10"
role = "sales"
created = "2026-11-01"

[[peer]]
name = "bob"
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
address = "10.77.0.11"
role = "ops"
created = "2026-11-20"
enabled = false
"#;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("crmguard.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        crmguard_core::config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(date_secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(date_secs)
    }

    // 2026-11-05T00:00:00Z
    const NOV5: u64 = 1_793_836_800;

    #[test]
    fn lists_state_key_age_expiry_and_mfa() {
        let config = config();
        let mut sessions = Sessions::new((&config.mfa).into());
        sessions.set_secret("alice", Secret::from_bytes([7; 20]));
        let handshakes = HashMap::from([("bob".to_owned(), 1_793_000_000)]);
        let rows = list(&config, None, &sessions, &handshakes, at(NOV5));
        let alice = &rows[0];
        assert_eq!(alice.state, "admitted");
        assert_eq!(alice.key_age_days, Some(4));
        assert_eq!(alice.key_expires_in, Some(6 * 86_400));
        assert_eq!(alice.mfa, "no session");
        assert_eq!(alice.created.as_deref(), Some("2026-11-01"));
        let bob = &rows[1];
        assert_eq!(bob.state, "disabled");
        assert!(!bob.enabled);
        assert_eq!(bob.mfa, "not required");
        assert_eq!(bob.last_handshake, Some(1_793_000_000));
        // Past the key's age, alice is refused and the expiry is negative.
        let later = list(&config, None, &sessions, &handshakes, at(NOV5 + 7 * 86_400));
        assert_eq!(later[0].state, "key expired");
        assert_eq!(later[0].key_expires_in, Some(-86_400));
    }
}
