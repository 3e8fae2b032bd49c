//! The agent's side of `crmguard peer ...`: edit `peers_file` (the list, then the file, then
//! a reload that applies it), end the sessions of peers that leave, and disable peers that
//! went quiet for `vpn.disable_inactive_after`.
//!
//! Every change is applied before the answer goes back, so a removed or disabled peer is cut
//! by the time the command returns.

use crmguard_core::time::unix_now;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use super::{describe, Agent};
use crate::access::listing::{self, PeerListing};
use crate::control::Response;
use crmguard_core::audit::{Event, EventType, Outcome};
use crmguard_core::config::{Config, Peer};
use crmguard_core::keys;
use crmguard_core::provision::{self, PeersFile, ProvisionError};

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
        let Some(today) = crmguard_core::time::utc_date(SystemTime::now()) else {
            return refused(&ProvisionError::Clock.to_string());
        };
        let edit = |file: &mut PeersFile, config: &Config| {
            file.add(config, name, role, key, today)
                .map(|added| added.replaced)
        };
        let (replaced, error) = match self.edit_peers(edit, None) {
            Ok(done) => done,
            Err(e) => return refused(&crmguard_core::error_chain(&e)),
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
        let forget = |config: &mut Config| config.peers.retain(|p| p.name != name);
        let edit = |file: &mut PeersFile, config: &Config| file.remove(config, name);
        let (_, error) = match self.edit_peers(edit, Some(&forget)) {
            Ok(done) => done,
            Err(e) => return refused(&crmguard_core::error_chain(&e)),
        };
        // A detector's timed re-enable must not outlive the peer (a new device may take its
        // name).
        self.detection.disabled_until.remove(name);
        self.audit.record(
            &Event::new(EventType::PeerRemoved, Outcome::Success, by).with_detail("peer", name),
        );
        tracing::info!(peer = %name, "VPN peer removed");
        // A device given the name later enrolls anew.
        if let Err(e) = crmguard_core::mfa::secrets::remove(&self.config.agent.state_dir, name) {
            tracing::error!(peer = %name, error = %crmguard_core::error_chain(&e), "cannot delete the removed peer's MFA secret");
        }
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
        let disable = |config: &mut Config| {
            for peer in config.peers.iter_mut().filter(|p| p.name == name) {
                peer.enabled = false;
            }
        };
        let edit = |file: &mut PeersFile, config: &Config| {
            if enabled {
                file.enable(config, name)
            } else {
                file.disable(config, name)
            }
        };
        let fallback: Option<&dyn Fn(&mut Config)> = if enabled { None } else { Some(&disable) };
        let (_, error) = match self.edit_peers(edit, fallback) {
            Ok(done) => done,
            Err(e) => return refused(&crmguard_core::error_chain(&e)),
        };
        // An administrator's word ends a detector's timed disabling: a device the admin
        // disables after a detector's suspension stays disabled when that suspension ends.
        if !by.starts_with("detector:") {
            self.detection.disabled_until.remove(name);
        }
        if !enabled {
            self.audit.record(
                &Event::new(EventType::PeerDisabled, Outcome::Success, by)
                    .with_detail("peer", name)
                    .with_detail("reason", "administrator"),
            );
            tracing::info!(peer = %name, "VPN peer disabled");
        } else {
            self.audit.record(
                &Event::new(EventType::PeerEnabled, Outcome::Success, by).with_detail("peer", name),
            );
            tracing::info!(peer = %name, "VPN peer enabled");
        }
        self.peer_answer(name, false, error)
    }

    /// Loads the peers file, edits it, saves it and reloads. `Err` when the edit is refused
    /// (nothing changed); `Ok((value, Some(error)))` when the file was saved but the reload
    /// failed (the configuration has an unrelated error). Then `cut`, when given, takes the
    /// peer out of the running configuration anyway: a removed or disabled device is cut now,
    /// not when the configuration is fixed.
    fn edit_peers<T>(
        &mut self,
        edit: impl FnOnce(&mut PeersFile, &Config) -> Result<T, ProvisionError>,
        cut: Option<&dyn Fn(&mut Config)>,
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
                self.audit.record(
                    &Event::new(EventType::ConfigRejected, Outcome::Failure, "system")
                        .with_detail("config", self.source.describe())
                        .with_detail("error", message.clone()),
                );
                if let Some(cut) = cut {
                    let mut running = self.config.clone();
                    cut(&mut running);
                    self.apply_peers(running);
                    // Nor may the rollback of a `reload --confirm` change bring the device
                    // back: the configuration it restores is cut the same way.
                    if let Some(pending) = self.pending.as_mut() {
                        pending.cut_previous(cut);
                    }
                }
                Some(message)
            }
        };
        Ok((value, error))
    }

    /// Applies a configuration that differs from the running one only in its peers.
    fn apply_peers(&mut self, config: Config) {
        let connected = self.connected_peers();
        let previous = std::mem::replace(&mut self.config, config);
        self.vpn.apply(&self.config, false);
        self.access.reload(&self.config);
        self.cut_departed(&previous, &connected);
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
            .join(crmguard_vpn::state::FILE_NAME);
        let remembered = crmguard_vpn::state::load(&path).unwrap_or_default();
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
        // Enabled by any means (peer enable, an edited file and a reload): counts as activity.
        let enabled: Vec<&str> = self
            .config
            .peers
            .iter()
            .filter(|p| p.enabled)
            .filter(|p| {
                !previous
                    .peers
                    .iter()
                    .any(|old| old.name == p.name && old.enabled)
            })
            .map(|p| p.name.as_str())
            .collect();
        if !enabled.is_empty() {
            let state_dir = self.config.agent.state_dir.clone();
            if let Err(e) =
                provision::record_enabled(&state_dir, &mut self.enabled_at, &enabled, unix_now())
            {
                tracing::error!(error = %e, "cannot save when peers were enabled; a peer enabled again may be disabled for inactivity after a restart");
            }
        }
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
        let now = SystemTime::now();
        let inactive = match self.peers_file.load(&vpn.peers_file) {
            Ok(file) => provision::inactive_peers(&self.config, file, &handshakes, now),
            Err(_) => return,
        };
        if inactive.is_empty() {
            return;
        }
        // A peer refused for its key's age stays as it is: re-keying is its remedy, and
        // `peer add` with the new key enables it anyway.
        let (_, refused) = crmguard_core::peers::admitted(&self.config, now);
        let too_old: HashSet<&str> = refused
            .iter()
            .filter(|(_, why)| *why == crmguard_core::peers::Excluded::KeyTooOld)
            .map(|(name, _)| name.as_str())
            .collect();
        let inactive: Vec<String> = inactive
            .into_iter()
            .filter(|name| !too_old.contains(name.as_str()))
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
        let cut = |config: &mut Config| {
            for peer in config.peers.iter_mut() {
                if inactive.contains(&peer.name) {
                    peer.enabled = false;
                }
            }
        };
        match self.edit_peers(disable, Some(&cut)) {
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
                tracing::error!(error = %crmguard_core::error_chain(&e), "cannot disable inactive peers")
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
        for event in self
            .inspection_events
            .take_records(SystemTime::now(), false)
        {
            self.audit.record(&event);
        }
        self.portal.apply(&self.config);
    }

    /// Open MFA sessions for `status`.
    pub(super) fn mfa_sessions(&self) -> BTreeMap<String, String> {
        let now = unix_now();
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

fn refused(message: &str) -> Response {
    Response::Refused {
        message: message.to_owned(),
    }
}
