//! The agent's side of `crmguard peer ...`: edit `peers_file` (the list, then the file, then
//! a reload that applies it), end the sessions of peers that leave, and disable peers that
//! went quiet for `vpn.disable_inactive_after`.
//!
//! Every change is applied before the answer goes back, so a removed or disabled peer is cut
//! by the time the command returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{describe, Agent};
use crate::access::listing::{self, PeerListing};
use crate::audit::{Event, EventType, Outcome};
use crate::config::{Config, Peer};
use crate::control::Response;
use crate::provision::{self, PeersFile, ProvisionError};
use crate::vpn::keys;

impl Agent {
    /// `peer add`: registers or re-keys `name` in the peers file and applies it.
    pub(super) fn peer_add(
        &mut self,
        name: &str,
        role: &str,
        public_key: &str,
        by: &str,
    ) -> Response {
        let Some(key) = keys::decode(public_key) else {
            return refused("the public key is not 44 characters of base64 holding 32 bytes");
        };
        let Some(today) = provision::utc_date(SystemTime::now()) else {
            return refused(&ProvisionError::Clock.to_string());
        };
        let edit = |file: &mut PeersFile, config: &Config| {
            file.add(config, name, role, key, today)
                .map(|added| added.replaced)
        };
        let (replaced, error) = match self.edit_peers(edit) {
            Ok(done) => done,
            Err(e) => return refused(&crate::datapath::error_chain(&e)),
        };
        let event = if replaced {
            Event::new(EventType::PeerAdded, Outcome::Success, by)
                .with_detail("peer", name)
                .with_detail("role", role)
                .with_detail("rekeyed", true)
        } else {
            Event::new(EventType::PeerAdded, Outcome::Success, by)
                .with_detail("peer", name)
                .with_detail("role", role)
        };
        self.audit.record(&event);
        tracing::info!(peer = %name, %role, replaced, "VPN peer added");
        self.peer_answer(name, replaced, error)
    }

    /// `peer remove`.
    pub(super) fn peer_remove(&mut self, name: &str, by: &str) -> Response {
        let listing = self.peer_list().into_iter().find(|p| p.name == name);
        let (_, error) = match self.edit_peers(|file, config| file.remove(config, name)) {
            Ok(done) => done,
            Err(e) => return refused(&crate::datapath::error_chain(&e)),
        };
        self.audit.record(
            &Event::new(EventType::PeerRemoved, Outcome::Success, by).with_detail("peer", name),
        );
        tracing::info!(peer = %name, "VPN peer removed");
        match listing {
            Some(peer) => Response::Peer {
                peer,
                replaced: false,
                error,
            },
            None => Response::Error {
                message: format!("peer `{name}` vanished while being removed"),
            },
        }
    }

    /// `peer enable` / `peer disable`.
    pub(super) fn peer_set_enabled(&mut self, name: &str, enabled: bool, by: &str) -> Response {
        let (_, error) = match self.edit_peers(|file, config| {
            if enabled {
                file.enable(config, name)
            } else {
                file.disable(config, name)
            }
        }) {
            Ok(done) => done,
            Err(e) => return refused(&crate::datapath::error_chain(&e)),
        };
        if !enabled {
            self.audit.record(
                &Event::new(EventType::PeerDisabled, Outcome::Success, by)
                    .with_detail("peer", name)
                    .with_detail("reason", "administrator"),
            );
            tracing::info!(peer = %name, "VPN peer disabled");
        } else {
            self.audit.record(
                &Event::new(EventType::PeerAdded, Outcome::Success, by)
                    .with_detail("peer", name)
                    .with_detail("enabled", true),
            );
            tracing::info!(peer = %name, "VPN peer enabled");
            // Enabling counts as activity: a peer disabled for inactivity gets the full
            // period to connect again instead of being disabled at the next check.
            self.enabled_at.insert(name.to_owned(), unix_now());
            save_enabled_at(&self.config.agent.state_dir, &self.enabled_at);
        }
        self.peer_answer(name, false, error)
    }

    /// Loads the peers file, edits it, saves it and reloads. `Err` when the edit is refused
    /// (nothing changed); `Ok((value, Some(error)))` when the file was saved but the reload
    /// failed (the running configuration stays until it is fixed).
    fn edit_peers<T>(
        &mut self,
        edit: impl FnOnce(&mut PeersFile, &Config) -> Result<T, ProvisionError>,
    ) -> Result<(T, Option<String>), ProvisionError> {
        let vpn = self.config.vpn.as_ref().ok_or(ProvisionError::NoVpn)?;
        let path = vpn.peers_file.clone();
        let mut file = PeersFile::load(&path)?;
        let value = edit(&mut file, &self.config)?;
        file.save(&path)?;
        let error = match self.reload() {
            Ok(generation) => {
                self.audit.record(
                    &Event::new(EventType::ConfigReload, Outcome::Success, "system")
                        .with_detail("config", self.source.describe())
                        .with_detail("generation", generation)
                        .with_detail("cause", "peers file changed"),
                );
                None
            }
            Err(e) => {
                let message = describe(&e);
                tracing::error!(error = %message, "the peers file was changed but the configuration does not load; the running configuration stays");
                Some(message)
            }
        };
        Ok((value, error))
    }

    fn peer_answer(&self, name: &str, replaced: bool, error: Option<String>) -> Response {
        match self.peer_list().into_iter().find(|p| p.name == name) {
            Some(peer) => Response::Peer {
                peer,
                replaced,
                error,
            },
            None => Response::Error {
                message: error.unwrap_or_else(|| {
                    format!("peer `{name}` is not in the configuration after the change")
                }),
            },
        }
    }

    /// `peer list`.
    pub(super) fn peer_list(&self) -> Vec<PeerListing> {
        let status = self.vpn.status();
        listing::list(
            &self.config,
            status.as_ref(),
            self.access.sessions(),
            &self.remembered_handshakes(),
            SystemTime::now(),
        )
    }

    /// The last handshakes the endpoint remembers on disk, for peers it does not admit now.
    fn remembered_handshakes(&self) -> HashMap<String, u64> {
        let path = self
            .config
            .agent
            .state_dir
            .join(crate::vpn::state::FILE_NAME);
        let remembered = crate::vpn::state::load(&path).unwrap_or_default();
        self.config
            .peers
            .iter()
            .filter_map(|peer| {
                let handshake = remembered.get(&peer.public_key)?.last_handshake?;
                Some((peer.name.clone(), handshake))
            })
            .collect()
    }

    /// The peers with a live WireGuard session (a handshake within the last few minutes).
    pub(super) fn connected_peers(&self) -> BTreeSet<String> {
        self.vpn
            .status()
            .map(|status| {
                status
                    .peers
                    .into_iter()
                    .filter(|p| p.connected)
                    .map(|p| p.name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// After a reload: the MFA sessions of peers that were admitted and are now removed,
    /// disabled or re-keyed end, the peers' MFA state forgets the removed ones, and the
    /// tunnels that were live (in `connected` before the reload) are recorded as ended.
    pub(super) fn cut_departed(&mut self, previous: &Config, connected: &BTreeSet<String>) {
        for old in previous.peers.iter().filter(|p| p.enabled) {
            let reason = match self.config.peers.iter().find(|p| p.name == old.name) {
                None => "removed",
                Some(new) if !new.enabled => "disabled",
                Some(new) if new.public_key != old.public_key => "rekeyed",
                Some(_) => continue,
            };
            self.access
                .peer_cut(old, reason, &self.vpn, &mut self.audit);
            if connected.contains(&old.name) {
                self.audit.record(
                    &Event::new(EventType::PeerSessionEnd, Outcome::Info, old.name.as_str())
                        .with_detail("reason", reason),
                );
            }
        }
    }

    /// Disables the peers-file peers with no handshake for `vpn.disable_inactive_after`.
    pub(super) fn disable_inactive(&mut self) {
        let Some(vpn) = &self.config.vpn else {
            return;
        };
        let mut handshakes = self.remembered_handshakes();
        for (name, at) in &self.enabled_at {
            let latest = handshakes.entry(name.clone()).or_insert(*at);
            *latest = (*latest).max(*at);
        }
        if let Some(status) = self.vpn.status() {
            for peer in status.peers {
                if let Some(at) = peer.latest_handshake {
                    handshakes.insert(peer.name, at);
                }
            }
        }
        let file = match PeersFile::load(&vpn.peers_file) {
            Ok(file) => file,
            Err(_) => return,
        };
        let now = SystemTime::now();
        // A peer refused for its key's age stays as it is: re-keying is its remedy, and
        // `peer add` with the new key enables it anyway.
        let (_, refused) = crate::vpn::peers::admitted(&self.config, now);
        let inactive: Vec<String> =
            provision::inactive_peers(&self.config, &file, &handshakes, now)
                .into_iter()
                .filter(|name| {
                    !refused
                        .iter()
                        .any(|(n, why)| n == name && *why == crate::vpn::peers::Excluded::KeyTooOld)
                })
                .collect();
        if inactive.is_empty() {
            return;
        }
        let after = vpn.disable_inactive_after.as_secs();
        let disable = |file: &mut PeersFile, config: &Config| {
            for name in &inactive {
                file.disable(config, name)?;
            }
            Ok(())
        };
        match self.edit_peers(disable) {
            Ok((_, error)) => {
                for name in &inactive {
                    tracing::warn!(peer = %name, inactive_after_secs = after, "VPN peer disabled: no handshake for vpn.disable_inactive_after");
                    self.audit.record(
                        &Event::new(EventType::PeerDisabled, Outcome::Info, "system")
                            .with_detail("peer", name.as_str())
                            .with_detail("reason", "inactive")
                            .with_detail("inactive_after_secs", after),
                    );
                }
                if let Some(error) = error {
                    tracing::error!(%error, "inactive peers are disabled in the peers file but the reload failed");
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::datapath::error_chain(&e), "cannot disable inactive peers")
            }
        }
    }

    /// The once-a-second access work and the closed minutes of ACL denials.
    pub(super) fn access_tick(&mut self) {
        let status = self.vpn.status();
        self.access
            .tick(&self.config, status.as_ref(), &self.vpn, &mut self.audit);
        for event in self.metrics.acl().take_denials(SystemTime::now(), false) {
            self.audit.record(&event);
        }
        self.portal.apply(&self.config);
    }

    /// Open MFA sessions for `status`.
    pub(super) fn mfa_sessions(&self) -> BTreeMap<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let sessions = self.access.sessions();
        sessions
            .open_peers(now)
            .into_iter()
            .filter_map(|peer| {
                let session = sessions.session(peer, now)?;
                Some((peer.to_owned(), crate::access::format_unix(session.expires)))
            })
            .collect()
    }

    /// Seconds until each peer's key expires, for `status` and the metric.
    pub(super) fn key_expiry(&self) -> BTreeMap<String, i64> {
        let now = SystemTime::now();
        self.config
            .peers
            .iter()
            .filter_map(|peer: &Peer| {
                Some((
                    peer.name.clone(),
                    listing::key_expires_in(&self.config, peer, now)?,
                ))
            })
            .collect()
    }
}

/// The file in `state_dir` that remembers when an administrator last enabled each peer.
const ENABLED_AT_FILE: &str = "peers-enabled.json";

/// When each peer was last enabled with `peer enable` (Unix seconds); empty when the file is
/// missing or unreadable (the peer is then judged by its handshakes and `created` alone).
pub(super) fn load_enabled_at(state_dir: &std::path::Path) -> BTreeMap<String, u64> {
    std::fs::read(state_dir.join(ENABLED_AT_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_enabled_at(state_dir: &std::path::Path, enabled_at: &BTreeMap<String, u64>) {
    let path = state_dir.join(ENABLED_AT_FILE);
    let written = serde_json::to_vec_pretty(enabled_at)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::atomic_file::write(&path, &bytes));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot save when peers were enabled; an inactive peer enabled again may be disabled after a restart");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn refused(message: &str) -> Response {
    Response::Refused {
        message: message.to_owned(),
    }
}
