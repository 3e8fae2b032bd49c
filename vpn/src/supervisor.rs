//! Whether the WireGuard endpoint runs, as the daemon sees it.
//!
//! The endpoint runs whenever `[vpn]` is configured. A failure to start it (the port is taken,
//! no TUN support, an unreadable key) does not stop the agent: the firewall matters more than
//! the VPN, so the failure is logged, shown by `status` and `crmguard_vpn_up 0`, and retried on
//! the next reload. A reload that changes the endpoint's own settings (port, addresses, key
//! file) restarts it; one that changes only peers or roles keeps every surviving session.

use std::sync::Arc;

use crmguard_core::acl::{AclMetrics, PortalListening};
use crmguard_core::config::Config;
use crmguard_inspect::Inspector;

use super::status::VpnStatus;
use super::{Endpoint, Settings};

enum State {
    Off,
    Running(Box<Endpoint>),
    Failed { settings: Settings, error: String },
}

pub struct Supervisor {
    state: State,
    acl_metrics: AclMetrics,
    /// Whether the daemon's MFA portal listens, which the ACL's portal exemption follows.
    portal: Arc<PortalListening>,
    /// Inspection's flow table and counters, kept across restarts of the endpoint.
    inspector: Arc<Inspector>,
}

impl Supervisor {
    /// Starts the endpoint if `config` has `[vpn]`.
    pub fn start(
        config: &Config,
        acl_metrics: AclMetrics,
        portal: Arc<PortalListening>,
        inspector: Arc<Inspector>,
    ) -> Supervisor {
        let mut supervisor = Supervisor {
            state: State::Off,
            acl_metrics,
            portal,
            inspector,
        };
        supervisor.apply(config, true);
        supervisor
    }

    /// Brings the endpoint in line with `config`. `retry` restarts an endpoint that failed
    /// before (a reload does; the periodic refresh does not).
    pub fn apply(&mut self, config: &Config, retry: bool) {
        let wanted = Settings::of(config);
        match (&mut self.state, wanted) {
            (State::Off, None) => {}
            (State::Running(_), None) => {
                self.state = State::Off;
                tracing::info!("[vpn] was removed from the configuration; the endpoint is stopped");
            }
            (State::Failed { .. }, None) => self.state = State::Off,
            (State::Running(endpoint), Some(settings)) if *endpoint.settings() == settings => {
                endpoint.update(config);
            }
            (State::Running(_), Some(settings)) => {
                tracing::info!("the VPN endpoint's settings changed; restarting it (sessions are re-established)");
                // The old endpoint must release its port and TUN device first.
                self.state = State::Off;
                self.launch(settings, config);
            }
            (
                State::Failed {
                    settings: failed, ..
                },
                Some(settings),
            ) if !retry && *failed == settings => {}
            (_, Some(settings)) => self.launch(settings, config),
        }
    }

    fn launch(&mut self, settings: Settings, config: &Config) {
        match Endpoint::start(
            settings.clone(),
            config,
            self.acl_metrics.clone(),
            Arc::clone(&self.portal),
            Arc::clone(&self.inspector),
        ) {
            Ok(endpoint) => self.state = State::Running(Box::new(endpoint)),
            Err(e) => {
                let error = crmguard_core::error_chain(&e);
                tracing::error!(error = %error, "the VPN endpoint cannot start; the firewall runs without it (retried on reload)");
                self.state = State::Failed { settings, error };
            }
        }
    }

    /// Opens or closes a peer's MFA session for the ACL; false when no such peer is admitted.
    pub fn set_mfa_session(&self, peer: &str, open: bool) -> bool {
        match &self.state {
            State::Running(endpoint) => endpoint.set_mfa_session(peer, open),
            _ => false,
        }
    }

    /// The endpoint's status; `None` without `[vpn]`.
    pub fn status(&self) -> Option<VpnStatus> {
        match &self.state {
            State::Off => None,
            State::Running(endpoint) => Some(endpoint.status()),
            State::Failed { settings, error } => Some(VpnStatus {
                running: false,
                error: Some(error.clone()),
                interface: settings.interface.clone(),
                listen_port: settings.listen_port,
                ..VpnStatus::default()
            }),
        }
    }

    /// Stops the endpoint (its TUN device goes away; the remembered endpoints are saved).
    pub fn stop(&mut self) {
        self.state = State::Off;
    }
}
