//! Keeps the MFA portal's listeners in line with the configuration: bound to the gateway's
//! VPN addresses at `[mfa] portal_port` while `[vpn]` is configured, rebound when those
//! change, gone without `[vpn]`. A bind failure is reported in `status` and retried on the
//! next tick.

use std::net::IpAddr;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::control::PortalStatus;
use crate::mfa::portal::{self, PortalReply, PortalRequest};

/// A portal request with the way to answer it.
pub type PortalCommand = (PortalRequest, tokio::sync::oneshot::Sender<PortalReply>);

pub struct PortalHost {
    requests: mpsc::Sender<PortalCommand>,
    /// What the listeners are bound to.
    bound: Option<(Vec<IpAddr>, u16)>,
    tasks: Vec<JoinHandle<()>>,
    error: Option<String>,
}

impl PortalHost {
    pub fn new(requests: mpsc::Sender<PortalCommand>) -> PortalHost {
        PortalHost {
            requests,
            bound: None,
            tasks: Vec::new(),
            error: None,
        }
    }

    /// Binds, rebinds or closes the listeners as `config` asks.
    pub fn apply(&mut self, config: &Config) {
        let wanted = wanted(config);
        if wanted == self.bound && self.error.is_none() {
            return;
        }
        self.close();
        let Some((addrs, port)) = wanted else {
            self.error = None;
            return;
        };
        match portal::bind(&addrs, port) {
            Ok(listeners) => {
                for listener in listeners {
                    self.tasks
                        .push(tokio::spawn(portal::serve(listener, self.requests.clone())));
                }
                tracing::info!(port, addresses = ?addrs, "MFA portal listening inside the tunnel");
                self.bound = Some((addrs, port));
                self.error = None;
            }
            Err(e) => {
                let error = crate::datapath::error_chain(&e);
                if self.error.as_ref() != Some(&error) {
                    tracing::error!(%error, "the MFA portal cannot listen; peers that need MFA cannot sign in (retried every second)");
                }
                self.error = Some(error);
            }
        }
    }

    fn close(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.bound = None;
    }

    pub fn status(&self) -> Option<PortalStatus> {
        if self.bound.is_none() && self.error.is_none() {
            return None;
        }
        Some(PortalStatus {
            listening: self
                .bound
                .iter()
                .flat_map(|(addrs, port)| {
                    addrs
                        .iter()
                        .map(move |a| std::net::SocketAddr::new(*a, *port).to_string())
                })
                .collect(),
            error: self.error.clone(),
        })
    }
}

impl Drop for PortalHost {
    fn drop(&mut self) {
        self.close();
    }
}

/// The gateway's VPN addresses and the portal port, when `[vpn]` is configured.
fn wanted(config: &Config) -> Option<(Vec<IpAddr>, u16)> {
    let vpn = config.vpn.as_ref()?;
    let mut addrs = vec![IpAddr::V4(vpn.address.addr())];
    if let Some(v6) = vpn.address6 {
        addrs.push(IpAddr::V6(v6.addr()));
    }
    Some((addrs, config.mfa.portal_port))
}
