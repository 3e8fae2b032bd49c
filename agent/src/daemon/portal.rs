//! Keeps the MFA portal's listeners in line with the configuration: bound to the gateway's
//! VPN addresses at `[mfa] portal_port` and to the TUN device while `[vpn]` is configured,
//! rebound when those change or the TUN device is made anew (an endpoint restart: a socket
//! bound to a device follows its index, not its name) or a listener died, gone without
//! `[vpn]`. A bind failure (no TUN device yet) is reported in `status` and retried on the
//! next tick.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::control::PortalStatus;
use crate::portal::{self, PortalReply, PortalRequest};
use crmguard_core::acl::PortalListening;
use crmguard_core::config::Config;

/// A portal request with the way to answer it.
pub type PortalCommand = (PortalRequest, tokio::sync::oneshot::Sender<PortalReply>);

pub struct PortalHost {
    requests: mpsc::Sender<PortalCommand>,
    /// Told whether the listeners are up: the ACL exempts the portal's port only then.
    listening: Arc<PortalListening>,
    /// What the listeners are bound to.
    bound: Option<Binding>,
    tasks: Vec<JoinHandle<()>>,
    error: Option<String>,
}

impl PortalHost {
    pub fn new(
        requests: mpsc::Sender<PortalCommand>,
        listening: Arc<PortalListening>,
    ) -> PortalHost {
        listening.set(false);
        PortalHost {
            requests,
            listening,
            bound: None,
            tasks: Vec::new(),
            error: None,
        }
    }

    /// Binds, rebinds or closes the listeners as `config` asks.
    pub fn apply(&mut self, config: &Config) {
        let wanted = wanted(config);
        let alive = self.tasks.iter().all(|task| !task.is_finished());
        if wanted == self.bound && self.error.is_none() && alive {
            return;
        }
        self.close();
        let Some(binding) = wanted else {
            self.error = None;
            return;
        };
        let Some(ifindex) = binding.ifindex else {
            self.fail(format!(
                "the VPN's TUN device {} does not exist (is the endpoint up?)",
                binding.device
            ));
            return;
        };
        let (addrs, port) = (binding.addrs.clone(), binding.port);
        match portal::bind(&addrs, port, Some(&binding.device)) {
            Ok(listeners) => {
                for listener in listeners {
                    self.tasks
                        .push(tokio::spawn(portal::serve(listener, self.requests.clone())));
                }
                tracing::info!(port, addresses = ?addrs, device = %binding.device, ifindex, "MFA portal listening inside the tunnel");
                self.bound = Some(binding);
                self.error = None;
                self.listening.set(true);
            }
            Err(e) => self.fail(crmguard_core::error_chain(&e)),
        }
    }

    /// Reports a failure to listen once, until it changes or is over.
    fn fail(&mut self, error: String) {
        if self.error.as_ref() != Some(&error) {
            tracing::error!(%error, "the MFA portal cannot listen; peers that need MFA cannot sign in (retried every second)");
        }
        self.error = Some(error);
    }

    fn close(&mut self) {
        self.listening.set(false);
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.bound = None;
    }

    /// Whether the portal listens, so that the portal's port is exempt from the ACL.
    pub fn is_listening(&self) -> bool {
        self.listening.get()
    }

    pub fn status(&self) -> Option<PortalStatus> {
        if self.bound.is_none() && self.error.is_none() {
            return None;
        }
        Some(PortalStatus {
            listening: self
                .bound
                .iter()
                .flat_map(|b| {
                    b.addrs
                        .iter()
                        .map(move |a| std::net::SocketAddr::new(*a, b.port).to_string())
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

/// Where the listeners are, or should be.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    addrs: Vec<IpAddr>,
    port: u16,
    /// The TUN device and its index now (`None` while it does not exist).
    device: String,
    ifindex: Option<u32>,
}

/// The gateway's VPN addresses, the portal port and the TUN device, when `[vpn]` is
/// configured.
fn wanted(config: &Config) -> Option<Binding> {
    let vpn = config.vpn.as_ref()?;
    let mut addrs = vec![IpAddr::V4(vpn.address.addr())];
    if let Some(v6) = vpn.address6 {
        addrs.push(IpAddr::V6(v6.addr()));
    }
    let device = crmguard_vpn::interface_name();
    let ifindex = nix::net::if_::if_nametoindex(device.as_str()).ok();
    Some(Binding {
        addrs,
        port: config.mfa.portal_port,
        device,
        ifindex,
    })
}
