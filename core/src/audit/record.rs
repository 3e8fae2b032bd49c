//! One audit record: what the daemon reports ([`Event`]) and its line in the log (the format is
//! described in the module documentation of [`crate::audit`]).

use std::time::SystemTime;

use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chain::{decode_mac, AuditKey};

macro_rules! names {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name written in the log.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The value written as `text` in the log.
            pub fn from_name(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

names! {
    /// The `type` of a record (CONTRACT.md section 5).
    pub enum EventType {
        AgentStart => "agent_start",
        AgentStop => "agent_stop",
        ConfigReload => "config_reload",
        ConfigRejected => "config_rejected",
        PeerHandshake => "peer_handshake",
        PeerSessionEnd => "peer_session_end",
        PeerAdded => "peer_added",
        PeerRemoved => "peer_removed",
        PeerDisabled => "peer_disabled",
        PeerExpired => "peer_expired",
        /// `crmguard peer enable` (an extension of CONTRACT.md section 5).
        PeerEnabled => "peer_enabled",
        MfaSuccess => "mfa_success",
        MfaFailure => "mfa_failure",
        MfaSessionEnd => "mfa_session_end",
        /// `crmguard mfa enroll` (an extension of CONTRACT.md section 5).
        MfaEnrolled => "mfa_enrolled",
        /// Per packet; recorded through the [`super::Aggregator`].
        AclDenied => "acl_denied",
        /// Per packet; recorded through the [`super::Aggregator`].
        InspectionViolation => "inspection_violation",
        AuthFailure => "auth_failure",
        BanAdded => "ban_added",
        BanExpired => "ban_expired",
        BanRemoved => "ban_removed",
        Anomaly => "anomaly",
        BackupCreated => "backup_created",
        BackupRestored => "backup_restored",
        /// `crmguard reload --confirm` applied a policy that is rolled back unless confirmed in
        /// time (an extension of CONTRACT.md section 5).
        PolicyPending => "policy_pending",
        /// `crmguard confirm` kept the pending policy (an extension of CONTRACT.md section 5).
        PolicyConfirmed => "policy_confirmed",
        /// A pending policy was not confirmed in time and the one before it was applied again
        /// (an extension of CONTRACT.md section 5).
        PolicyRolledBack => "policy_rolled_back",
        /// The writer found bytes after the log's newest record when it opened it (a line torn
        /// by a crash) and ended them: `detail.line` (their first line), `lines`, `bytes` and
        /// `sha256`, which `audit verify` checks before stepping over them (an extension of
        /// CONTRACT.md section 5).
        AuditTornLine => "audit_torn_line",
        /// The writer opened a log that holds records and found no checkpoint (removed, or a
        /// state directory emptied): `detail.seq` is the newest record the log held then, and
        /// `detail.checkpoint` the file. A tail cut off before then would not show, so
        /// `audit verify` lists these records (an extension of CONTRACT.md section 5).
        AuditCheckpointMissing => "audit_checkpoint_missing",
        /// The last record of a log the writer rotates, its seal: `detail.segment` is the file
        /// name the log is renamed to, `detail.bytes` its size before this record, and
        /// `detail.expired` the oldest segments removed with this rotation (beyond
        /// `[audit] rotate_keep`). An extension of CONTRACT.md section 5.
        AuditLogRotated => "audit_log_rotated",
        /// The first record of the log after a rotation: `detail.segment` names the segment
        /// it continues and `detail.seq` that segment's last record (its seal), whose `mac` is
        /// this record's `prev`. `audit verify` takes the chain up here when the segment is
        /// not checked with it (an extension of CONTRACT.md section 5).
        AuditLogContinued => "audit_log_continued",
    }
}

names! {
    /// The `outcome` of a record.
    pub enum Outcome {
        Success => "success",
        Failure => "failure",
        Info => "info",
    }
}

/// Something to record; the writer adds `ts`, `seq`, `prev` and `mac`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventType,
    pub outcome: Outcome,
    /// A peer name, `admin:<unix user>` or `system`.
    pub actor: String,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(kind: EventType, outcome: Outcome, actor: impl Into<String>) -> Self {
        Event {
            kind,
            outcome,
            actor: actor.into(),
            src: None,
            dst: None,
            detail: Map::new(),
        }
    }

    pub fn with_src(mut self, src: impl Into<String>) -> Self {
        self.src = Some(src.into());
        self
    }

    pub fn with_dst(mut self, dst: impl Into<String>) -> Self {
        self.dst = Some(dst.into());
        self
    }

    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }
}

/// A record as written. The field order here is the field order of the line, which the MAC
/// covers; do not reorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Repr {
    pub ts: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub outcome: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    pub detail: Map<String, Value>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What follows the MAC-covered bytes of a line: `,"mac":"`, 64 hex digits and `"}`.
const MAC_PREFIX: &[u8] = b",\"mac\":\"";
const MAC_SUFFIX_LEN: usize = MAC_PREFIX.len() + 64 + 2;

/// The line (with its `\n`) of record `seq` for `event` at `ts`, chained to `prev`, and its
/// MAC.
pub(crate) fn encode_line(
    key: &AuditKey,
    ts: SystemTime,
    seq: u64,
    event: &Event,
    prev: &[u8; 32],
) -> Result<(Vec<u8>, [u8; 32]), serde_json::Error> {
    let repr = Repr {
        ts: crate::time::format_time(ts),
        seq,
        kind: event.kind.as_str().to_owned(),
        outcome: event.outcome.as_str().to_owned(),
        actor: event.actor.clone(),
        src: event.src.clone(),
        dst: event.dst.clone(),
        detail: event.detail.clone(),
        prev: HEXLOWER.encode(prev),
        mac: None,
    };
    let canonical = serde_json::to_vec(&repr)?;
    let mac = key.mac(&canonical);
    let mut line = canonical;
    // `canonical` ends with the object's `}`; the MAC goes in front of it.
    line.pop();
    line.extend_from_slice(MAC_PREFIX);
    line.extend_from_slice(HEXLOWER.encode(&mac).as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, mac))
}

/// What is wrong with one line taken alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineError {
    NotUtf8,
    Json(String),
    /// The line is JSON but not spelled the way the writer spells records.
    Form(&'static str),
    Mac,
}

/// A line that passed every check that needs no other line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub seq: u64,
    pub prev: [u8; 32],
    pub mac: [u8; 32],
    /// The record's `type`, as written.
    pub kind: String,
    pub detail: Map<String, Value>,
}

/// Checks one line (without its `\n`): JSON, field spelling, MAC, canonical form.
pub(crate) fn check_line(key: &AuditKey, line: &[u8]) -> Result<Checked, LineError> {
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    let repr: Repr = serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))?;
    let Some(mac_text) = repr.mac.as_deref() else {
        return Err(LineError::Form("no `mac` field"));
    };
    let Some(mac) = decode_mac(mac_text) else {
        return Err(LineError::Form("`mac` is not 64 lowercase hex digits"));
    };
    let Some(prev) = decode_mac(&repr.prev) else {
        return Err(LineError::Form("`prev` is not 64 lowercase hex digits"));
    };
    if line.len() < MAC_SUFFIX_LEN + 1
        || !line[line.len() - MAC_SUFFIX_LEN..].starts_with(MAC_PREFIX)
        || !line.ends_with(b"\"}")
    {
        return Err(LineError::Form("`mac` is not the last field"));
    }
    let mut covered = line[..line.len() - MAC_SUFFIX_LEN].to_vec();
    covered.push(b'}');
    if !key.check(&covered, &mac) {
        return Err(LineError::Mac);
    }
    // Only a holder of the key can get here with a line the writer would not have written.
    if serde_json::to_vec(&repr).ok().as_deref() != Some(line) {
        return Err(LineError::Form("not in canonical form"));
    }
    if crate::time::parse_time(&repr.ts).is_none() {
        return Err(LineError::Form("`ts` is not an RFC 3339 UTC time"));
    }
    // An unknown `type` is accepted: a newer crmguard may record events this one does not know.
    if Outcome::from_name(&repr.outcome).is_none() {
        return Err(LineError::Form("unknown `outcome`"));
    }
    Ok(Checked {
        seq: repr.seq,
        prev,
        mac,
        kind: repr.kind,
        detail: repr.detail,
    })
}
