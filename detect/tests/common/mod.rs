//! Shared helpers: a `[detection]` from TOML text and timestamps from a fixed start.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crmguard_core::config::{self, Detection};
use crmguard_detect::{Action, Detectors, History, Input, Observation};

/// 2026-11-01 00:00:00 UTC.
pub const START: u64 = 1_793_491_200;

pub fn detection(toml: &str) -> Detection {
    match config::parse(toml, Path::new("/etc/crmguard/crmguard.toml")) {
        Ok(config) => config.detection,
        Err(errors) => panic!("bad test configuration:\n{errors}"),
    }
}

pub fn detectors(toml: &str) -> Detectors {
    Detectors::new(&detection(toml), History::new())
}

/// `START` plus `ms` milliseconds.
pub fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(START) + Duration::from_millis(ms)
}

pub fn at(secs: u64) -> SystemTime {
    at_ms(secs * 1000)
}

pub fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text} is not an address: {e}"))
}

pub fn sock(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text} is not a socket address: {e}"))
}

/// A failed SSH login of `source` found in the log source `sshd`.
pub fn log_failure(secs: u64, source: &str) -> Observation {
    Observation {
        at: at(secs),
        input: Input::LoginFailure {
            source: ip(source),
            peer: None,
            protocol: "sshd".into(),
            service: None,
            user: Some("root".into()),
        },
    }
}

/// A failed HTTP login of `peer` (tunnel address `source`) seen by inspection.
pub fn peer_failure(secs: u64, peer: &str, source: &str) -> Observation {
    Observation {
        at: at(secs),
        input: Input::LoginFailure {
            source: ip(source),
            peer: Some(peer.into()),
            protocol: "http".into(),
            service: Some("crm-web".into()),
            user: Some("alice@example.com".into()),
        },
    }
}

pub fn dropped(ms: u64, source: &str, port: u16) -> Observation {
    Observation {
        at: at_ms(ms),
        input: Input::Dropped {
            source: ip(source),
            dst_port: port,
            proto: 6,
        },
    }
}

pub fn bans(actions: &[Action]) -> Vec<(String, Duration, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ban {
                net,
                duration,
                offence,
                ..
            } => Some((net.to_string(), *duration, *offence)),
            _ => None,
        })
        .collect()
}

pub fn min(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}
