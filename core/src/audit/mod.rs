//! The audit log (CONTRACT.md section 5): a hash-chained, keyed record of what happened to the
//! host's firewall, its VPN peers and their sessions, written one JSON object per line.
//!
//! This module owns the record format, the audit key, the writer and the verifier. It decides
//! nothing about *when* something is recorded; the daemon and the client commands do that.
//!
//! # The line format
//!
//! Every record is one line of UTF-8 ending in `\n`, a compact JSON object (no whitespace
//! outside strings) whose fields appear in exactly this order:
//!
//! ```text
//! {"ts":"2025-03-01T12:00:00.000000Z","seq":1,"type":"agent_start","outcome":"info",
//!  "actor":"system","src":"203.0.113.7","dst":"10.0.0.5:443","detail":{...},
//!  "prev":"000...000","mac":"<64 lowercase hex digits>"}
//! ```
//!
//! `src` and `dst` are left out when they do not apply; `detail` is always an object, with its
//! keys in the order serde_json writes them. `prev` is the `mac` of the record before (64 zeros
//! for `seq` 1), so that deleting, inserting or reordering records breaks the chain.
//!
//! The canonical serialization that the MAC covers is the line without its `mac` field: the
//! bytes of the line up to (not including) the final `,"mac":"`, followed by `}`. That is
//! exactly what serde_json writes for the record without `mac`. The MAC is HMAC-SHA-256 keyed
//! by the 32 bytes of `[audit] key_file`. The verifier computes it over the bytes as found in
//! the file, never over a re-serialization, and then also requires that re-serializing the
//! parsed record gives the line back byte for byte, so there is one valid spelling of each
//! record.
//!
//! # Crashes and truncation
//!
//! The writer fsyncs every record before it returns, then replaces
//! `state_dir/audit.checkpoint` (the last `seq` and `mac`) atomically. A verifier given the
//! checkpoint detects a log whose tail was cut off. A line torn by a crash stays in the file:
//! the writer ends it with `\n` and continues the chain from the last good record with an
//! `audit_torn_line` record that names the torn bytes (first line, line count, length,
//! SHA-256). `crmguard audit verify` steps over torn lines so acknowledged and lists them; a
//! bad line that no record acknowledges, or one whose acknowledgement does not continue the
//! chain where it began (a record lost, not a write cut short), is the first broken record.

mod aggregate;
mod chain;
mod record;
mod rotation;
mod segments;
mod sink;
mod verify;
mod writer;

#[cfg(test)]
mod rotation_tests;
#[cfg(test)]
mod tests;

pub use aggregate::{AggregateKey, Aggregator};
pub use chain::{
    load_key, load_or_create_key, read_checkpoint, AuditKey, Checkpoint, CheckpointError, KeyError,
    KEY_LEN,
};
pub use record::{Event, EventType, Outcome};
pub use segments::{segment_path, segments};
pub use sink::Sink;
pub use verify::{
    verify, verify_bytes, verify_files, Acknowledged, Broken, CheckpointMissing, Continues,
    Problem, Tail, VerifyError, VerifyReport,
};
pub use writer::{Damage, Rotated, WriteError, Writer};

/// The name of the checkpoint file inside `state_dir`.
pub const CHECKPOINT_FILE: &str = "audit.checkpoint";
