//! What inspection reports: violations of the policy and failed logins, each naming the peer,
//! the protocol and the tunnel service. The endpoint hands them to an [`EventSink`]; the daemon
//! turns them into audit records, and the detection layer subscribes to the same stream (failed
//! logins are what its brute-force detector counts).

use std::fmt;
use std::net::SocketAddr;

use crate::protocol::{Credential, Protocol};

/// What kind of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// The flow is not the protocol its service carries (`protocol_mismatch`).
    ProtocolMismatch,
    /// A TLS version below `tls_min_version`: offered by the client (nothing acceptable) or
    /// chosen by the server.
    TlsVersion,
    /// A server name outside `sni_allow`.
    Sni,
    /// A ClientHello without a server name, under `no_sni = "drop"`.
    NoSni,
    /// A credential in the clear (`plaintext_credentials`).
    PlaintextCredentials,
    /// Bytes that claimed a protocol and broke its rules, under `parser_error = "drop"`.
    ParserError,
    /// A segment that rewrote bytes already seen with other bytes: an evasion, since no TCP
    /// stack does it.
    Overlap,
}

impl ViolationKind {
    /// Every kind, in label order.
    pub const ALL: [ViolationKind; 7] = [
        ViolationKind::ProtocolMismatch,
        ViolationKind::TlsVersion,
        ViolationKind::Sni,
        ViolationKind::NoSni,
        ViolationKind::PlaintextCredentials,
        ViolationKind::ParserError,
        ViolationKind::Overlap,
    ];

    /// The metric label and audit detail.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::ProtocolMismatch => "protocol_mismatch",
            ViolationKind::TlsVersion => "tls_version",
            ViolationKind::Sni => "sni",
            ViolationKind::NoSni => "no_sni",
            ViolationKind::PlaintextCredentials => "plaintext_credentials",
            ViolationKind::ParserError => "parser_error",
            ViolationKind::Overlap => "overlap",
        }
    }

    /// The index of this kind in [`ViolationKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gateway did about a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// The flow went on; the violation was recorded.
    Alert,
    /// The flow was ended with a reset to both sides.
    Reset,
}

impl Response {
    pub fn as_str(self) -> &'static str {
        match self {
            Response::Alert => "alert",
            Response::Reset => "reset",
        }
    }
}

/// One thing inspection saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The peer whose flow it is.
    pub peer: String,
    /// The peer's end of the flow (its tunnel address and port).
    pub client: SocketAddr,
    /// The gateway's end: the tunnel service.
    pub server: SocketAddr,
    /// The flow's protocol as identified (`unknown` when it was not).
    pub protocol: Protocol,
    pub what: What,
}

impl Event {
    /// The tunnel service, `tcp/5432`.
    pub fn service(&self) -> String {
        format!("tcp/{}", self.server.port())
    }
}

/// The event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The server answered a login attempt with a failure.
    AuthFailure,
    /// The flow broke the policy.
    Violation {
        kind: ViolationKind,
        response: Response,
        /// What was seen: the server name, the version, the credential's kind, the protocol
        /// found instead of the expected one.
        detail: String,
    },
}

impl What {
    /// A plaintext-credential violation's detail.
    pub fn credential_detail(credential: Credential) -> String {
        credential.as_str().to_owned()
    }
}

/// Where the endpoint's threads hand events. It must not block: an implementation that cannot
/// take an event counts it as lost and returns.
pub trait EventSink: Send + Sync {
    fn event(&self, event: Event);
}

/// A sink that drops everything (tests, and an endpoint without a daemon).
#[derive(Debug, Default)]
pub struct Discard;

impl EventSink for Discard {
    fn event(&self, _event: Event) {}
}

impl<T: EventSink + ?Sized> EventSink for std::sync::Arc<T> {
    fn event(&self, event: Event) {
        (**self).event(event);
    }
}
