//! crmguard's application-protocol inspection (contract layer 4): what the VPN endpoint learns
//! from the decrypted packets of the tunnel's TCP flows, and what it does about it.
//!
//! Pure like the core: no sockets, no clock (callers pass the time), no threads. The endpoint
//! calls it between the identity ACL and the TUN device, and on the way back before
//! encryption; it returns a verdict and reports events, never does IO.
//!
//! - [`protocol`]: the protocols, the reassembled bytes a parser sees, what it reports.
//! - [`proto`]: one parser per protocol and the identification order.
//! - [`reasm`]: the first bytes of each direction, reassembled.
//! - [`table`]: the bounded, sharded flow table.
//! - [`engine`]: the per-packet entry point and the policy's decisions.
//! - [`policy`], [`event`], [`metrics`]: `[inspection]` compiled, what is reported, the counters.

#![forbid(unsafe_code)]

pub mod engine;
pub mod event;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod protocol;
pub mod reasm;
pub mod table;

pub use engine::{Dir, Inspector, TableStatus, Tick, Verdict};
pub use event::{Event, EventSink, Response, ViolationKind, What};
pub use metrics::{Exception, InspectMetrics};
pub use policy::Policy;

pub use protocol::{
    Analysis, ClientHello, Context, Credential, Ident, LoginRule, Progress, Protocol, ServerHello,
    Streams, Watch,
};
