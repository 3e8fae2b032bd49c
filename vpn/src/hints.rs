//! Which peer last authenticated from each address: a hint for the next handshake initiation
//! from there.
//!
//! An initiation names its sender only inside its encrypted static key. Reading that key costs
//! a Diffie-Hellman exchange, and boringtun's `Tunn` then computes the same exchange again when
//! it takes the initiation, since it does not accept one already decrypted. Most initiations
//! are a connected device renewing its session every two minutes, from the address its last
//! datagram came from: handed straight to that peer's `Tunn`, they cost one exchange fewer
//! (three instead of four, and the key generation). The `Tunn` checks the sender's key itself,
//! so a wrong hint costs the exchange it tried and nothing else: the caller then reads the key
//! as before.
//!
//! The hints hold public keys, not table positions, so that a reload that moves or removes
//! peers cannot point a hint at another device. Each peer has at most one hint (its current
//! address); a removed peer's hint is dropped when it next fails to find its peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

/// At most this many hints; past it they are all forgotten and rebuilt from the datagrams that
/// follow (each peer holds at most one, so only a table of more peers than this reaches it).
const MAX_HINTS: usize = 1 << 20;

/// Addresses and the public key of the peer that last authenticated from each.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    by_address: Mutex<HashMap<SocketAddr, [u8; 32]>>,
}

impl Hints {
    fn map(&self) -> MutexGuard<'_, HashMap<SocketAddr, [u8; 32]>> {
        // A panic while holding the lock leaves a map of hints, each of them checked anyway.
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The public key of the peer that last authenticated from `address`.
    pub(crate) fn get(&self, address: SocketAddr) -> Option<[u8; 32]> {
        self.map().get(&address).copied()
    }

    /// The peer with `key` authenticated from `to`, after `from`.
    pub(crate) fn moved(&self, key: [u8; 32], from: Option<SocketAddr>, to: SocketAddr) {
        let mut map = self.map();
        if let Some(from) = from {
            if map.get(&from) == Some(&key) {
                map.remove(&from);
            }
        }
        if map.len() >= MAX_HINTS {
            map.clear();
        }
        map.insert(to, key);
    }

    /// Drops the hint at `address` if it still names `key` (a peer no longer in the table).
    pub(crate) fn forget(&self, address: SocketAddr, key: [u8; 32]) {
        let mut map = self.map();
        if map.get(&address) == Some(&key) {
            map.remove(&address);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_peer_has_one_hint_at_its_latest_address() {
        let hints = Hints::default();
        hints.moved([1; 32], None, at(1));
        hints.moved([1; 32], Some(at(1)), at(2));
        assert_eq!((hints.get(at(1)), hints.get(at(2))), (None, Some([1; 32])));
        assert_eq!(hints.len(), 1);
    }

    #[test]
    fn another_peer_at_the_same_address_takes_the_hint_over() {
        let hints = Hints::default();
        hints.moved([1; 32], None, at(1));
        hints.moved([2; 32], None, at(1));
        assert_eq!(hints.get(at(1)), Some([2; 32]));
        // The first peer moving on leaves the second one's hint alone.
        hints.moved([1; 32], Some(at(1)), at(3));
        assert_eq!(
            (hints.get(at(1)), hints.get(at(3))),
            (Some([2; 32]), Some([1; 32]))
        );
        hints.forget(at(1), [1; 32]);
        assert_eq!(hints.get(at(1)), Some([2; 32]));
        hints.forget(at(1), [2; 32]);
        assert_eq!((hints.get(at(1)), hints.len()), (None, 1));
    }
}
