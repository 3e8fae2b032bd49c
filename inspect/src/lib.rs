//! crmguard's application-protocol inspection (contract layer 4): what the VPN endpoint learns
//! from the decrypted packets of the tunnel's TCP flows, and what it does about it.
//!
//! Pure like the core: no sockets, no clock (callers pass the time), no threads. The endpoint
//! calls it between the identity ACL and the TUN device, and on the way back before
//! encryption; it returns a verdict and reports events, never does IO.
//!
//! - [`protocol`]: the protocols, the reassembled bytes a parser sees, what it reports.
//! - [`proto`]: one parser per protocol and the identification order.

#![forbid(unsafe_code)]

pub mod proto;
pub mod protocol;

pub use protocol::{
    Analysis, ClientHello, Context, Credential, Ident, LoginRule, Progress, Protocol, ServerHello,
    Streams, Watch,
};
