//! boringtun's `noise` answering handshake initiations in this process, on the CPU the gateways
//! are pinned to, with no socket, no thread hand-off and no logging: the most handshakes a
//! second that any gateway built on it can complete on this CPU, measured in the same rounds
//! as the gateways ([`crate::handshakes`]).
//!
//! Two ways, each with the same 1,000 peers:
//! - **peer known**: the responder `Tunn` of each initiation is picked by its index. This is
//!   the Diffie-Hellman work of a response: the initiation's ephemeral and static keys, a new
//!   ephemeral key pair, and the two exchanges of the response;
//! - **peer found**: the initiator is found as a gateway must find it from the initiation
//!   alone: `parse_handshake_anon` decrypts its static key (one more exchange), then that
//!   key's `Tunn` answers. boringtun's `Tunn` does not take the decrypted state, so the
//!   exchange is done twice. This is what crmguard's endpoint does for an initiation from an
//!   address no peer last authenticated from (a device's first, or one that moved); one from
//!   the address its peer last authenticated from goes straight to that peer's `Tunn`, as in
//!   **peer known**.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use crmguard_core::keys::{self, KeyPair};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::handshakes::{pin_thread, prepare, Window, GATEWAY_CPU};
use crate::profile::thread_cpu_seconds;

/// Initiations answered per second of a window: about half the window at the rate measured
/// here, so that the window is ended by the pool and the rate is the pool over its time.
const POOL_PER_SECOND: usize = 4_000;

/// The first byte of a handshake response.
const HANDSHAKE_RESPONSE: u8 = 2;

/// The responder: a key, and one `Tunn` per peer.
pub(crate) struct Noise {
    secret: StaticSecret,
    public: PublicKey,
    tunnels: Vec<Tunn>,
    by_key: HashMap<[u8; 32], usize>,
}

impl Noise {
    pub(crate) fn new(clients: &[KeyPair]) -> Result<Noise> {
        let secret = StaticSecret::from(keys::fresh_private_key()?);
        let public = PublicKey::from(&secret);
        // No handshake limit: the cost of a handshake is measured, not a limit in front of it.
        let unlimited = Arc::new(RateLimiter::new(&public, u64::MAX));
        let tunnels = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                Ok(Tunn::new(
                    secret.clone(),
                    client.public,
                    None,
                    None,
                    u32::try_from(i)?,
                    Some(Arc::clone(&unlimited)),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let by_key = clients
            .iter()
            .enumerate()
            .map(|(i, client)| (client.public.to_bytes(), i))
            .collect();
        Ok(Noise {
            secret,
            public,
            tunnels,
            by_key,
        })
    }

    /// Answers `seconds x POOL_PER_SECOND` fresh initiations on the gateway's CPU; `find`: each
    /// initiation's peer is found from it, else known.
    pub(crate) fn window(
        &mut self,
        clients: &[KeyPair],
        seconds: u32,
        find: bool,
    ) -> Result<Window> {
        let count = usize::try_from(seconds)?.max(1) * POOL_PER_SECOND;
        let prepared = prepare(clients, &self.public, count)?;
        let peers = self.tunnels.len();
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Window> {
                    pin_thread(GATEWAY_CPU)?;
                    let mut buf = [0u8; 256];
                    let mut completed = 0u64;
                    let cpu = thread_cpu_seconds()?;
                    let started = Instant::now();
                    for (j, initiation) in prepared.initiations.iter().enumerate() {
                        let at = if find {
                            match self.find(initiation) {
                                Some(at) => at,
                                None => continue,
                            }
                        } else {
                            j % peers
                        };
                        if let TunnResult::WriteToNetwork(response) =
                            self.tunnels[at].decapsulate(None, initiation, &mut buf)
                        {
                            if response.first() == Some(&HANDSHAKE_RESPONSE) {
                                completed += 1;
                            }
                        }
                    }
                    let elapsed = started.elapsed().as_secs_f64();
                    Ok(Window {
                        sent: u64::try_from(count)?,
                        responses: completed,
                        completed,
                        cookies: 0,
                        seconds: elapsed,
                        gateway_cpu_s: thread_cpu_seconds()? - cpu,
                    })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the responder thread panicked"))?
        })
        .context("boringtun's responder")
    }

    /// The peer of `initiation`, found from its encrypted static key.
    fn find(&self, initiation: &[u8]) -> Option<usize> {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(initiation) else {
            return None;
        };
        let half = parse_handshake_anon(&self.secret, &self.public, &init).ok()?;
        self.by_key.get(&half.peer_static_public).copied()
    }
}
