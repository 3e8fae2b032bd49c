//! The control socket: how `crmguard status`, `reload`, `ban` and later
//! commands talk to the running agent.
//!
//! Protocol: one JSON request per connection, one line; one JSON response
//! line back. The socket is created mode 0600 (root only): whoever can
//! write to it can change the firewall.

pub mod caller;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::access::listing::PeerListing;
use crmguard_core::bans::Ban;
use crmguard_core::explain::{Explanation, Query};

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
    /// `crmguard reload --confirm`: applies the configuration as `Reload` does, and applies the
    /// policy in force now again unless `Confirm` arrives within `timeout_secs`.
    ReloadConfirm {
        timeout_secs: u64,
        /// `admin:<unix user>`.
        by: String,
    },
    /// `crmguard confirm`: keeps the pending policy.
    Confirm {
        /// `admin:<unix user>`.
        by: String,
    },
    /// `crmguard ban add`.
    BanAdd {
        net: IpNet,
        /// `None` bans until `ban remove`.
        ttl_secs: Option<u64>,
        reason: Option<String>,
        /// `admin:<unix user>`.
        by: String,
        #[serde(default)]
        force: bool,
    },
    /// `crmguard ban list`.
    BanList,
    /// `crmguard ban remove`.
    BanRemove {
        net: IpNet,
    },
    /// `crmguard peer add`: registers or re-keys a peer in `peers_file` and applies it. The
    /// private key, when the CLI generated one, never leaves the CLI.
    PeerAdd {
        name: String,
        role: String,
        /// Base64, as `wg` prints it.
        public_key: String,
        /// `admin:<unix user>`.
        by: String,
    },
    /// `crmguard peer remove`.
    PeerRemove {
        name: String,
        by: String,
    },
    /// `crmguard peer enable` / `peer disable`.
    PeerSetEnabled {
        name: String,
        enabled: bool,
        by: String,
    },
    /// `crmguard peer list`.
    PeerList,
    /// `crmguard mfa enroll` wrote a new secret for `name`.
    MfaEnrolled {
        name: String,
        by: String,
    },
    /// `crmguard backup create` wrote an archive while the agent runs: the agent, which
    /// writes the audit log, records it.
    BackupCreated {
        file: String,
        files: usize,
        size: usize,
        signer: String,
        by: String,
    },
    /// `crmguard explain`: what the policy in force does with one packet.
    Explain {
        query: Query,
    },
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Reloaded {
        generation: u32,
    },
    /// `reload --confirm` applied the policy; it is rolled back at `deadline` unless confirmed.
    ReloadedPending {
        generation: u32,
        /// RFC 3339 UTC.
        deadline: String,
        timeout_secs: u64,
    },
    /// `confirm` kept the pending policy; it is now the last good one.
    Confirmed {
        generation: u32,
    },
    Banned(BanAdded),
    Bans {
        bans: Vec<BanStatus>,
    },
    BanRemoved {
        ban: BanStatus,
        /// Set when the ban was lifted but not everywhere (see [`BanAdded::error`]).
        error: Option<String>,
    },
    /// The peer as it stands after `peer add`, `remove`, `enable` or `disable`.
    Peer {
        peer: PeerListing,
        /// `peer add` replaced a peer of the same name (a new key).
        #[serde(default)]
        replaced: bool,
        /// The change is saved but could not be applied (the reload failed); the CLI
        /// exits 1.
        #[serde(default)]
        error: Option<String>,
    },
    /// `peer list`.
    Peers {
        peers: Vec<PeerListing>,
    },
    /// `mfa enroll` was taken note of.
    Enrolled,
    /// `backup create` was recorded in the audit log.
    Recorded,
    /// `explain`, answered from the policy in force, its bans and MFA sessions.
    Explained {
        explanation: Explanation,
        /// The generation of the policy in force.
        generation: u32,
    },
    /// The request was invalid and changed nothing (the CLI exits 64).
    Refused {
        message: String,
    },
    Error {
        message: String,
    },
}

/// The answer to `ban add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanAdded {
    /// The ban now in force.
    pub ban: BanStatus,
    /// The ban of the same network it replaced.
    pub replaced: Option<BanStatus>,
    /// Things the administrator should know; the ban was applied anyway.
    pub warnings: Vec<String>,
    /// Set when the ban is in the agent's list but could not be saved to disk or written to
    /// the kernel; the agent keeps retrying and the CLI exits 1.
    pub error: Option<String>,
}

/// One ban as `ban list` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanStatus {
    pub net: IpNet,
    /// RFC 3339 UTC; `None` (JSON null) for a ban until removed.
    pub expires: Option<String>,
    pub reason: String,
    /// `admin:<unix user>` or `detector:<name>`.
    pub source: String,
    /// RFC 3339 UTC.
    pub created: String,
}

impl From<&Ban> for BanStatus {
    fn from(ban: &Ban) -> Self {
        BanStatus {
            net: ban.net,
            expires: ban.expires.map(crmguard_core::time::format_time),
            reason: ban.reason.clone(),
            source: ban.source.describe(),
            created: crmguard_core::time::format_time(ban.created),
        }
    }
}

/// What `crmguard status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// The config file in force, or "embedded default policy".
    pub config: String,
    pub mode: String,
    pub generation: u32,
    pub interfaces: Vec<InterfaceStatus>,
    /// Interfaces the agent chose (no `[[interface]]` listed) but could not attach the
    /// filter to: they are NOT filtered.
    #[serde(default)]
    pub interfaces_failed: Vec<InterfaceFailure>,
    /// Non-zero counters only.
    pub counters: Vec<CounterStatus>,
    /// The bans in force, in network order.
    #[serde(default)]
    pub bans: Vec<BanStatus>,
    /// Entries in which the kernel's policy differed from the configuration
    /// at the last comparison (repaired since); 0 in a healthy agent.
    #[serde(default)]
    pub policy_divergence_entries: u64,
    /// Drops sampled by the XDP program since the agent started.
    #[serde(default)]
    pub drop_events_total: u64,
    /// The most recent sampled drops, oldest first.
    #[serde(default)]
    pub recent_drops: Vec<DropStatus>,
    /// Audit records written since start, by type.
    #[serde(default)]
    pub audit_events: std::collections::BTreeMap<String, u64>,
    /// Audit records that could not be written since start.
    #[serde(default)]
    pub audit_write_errors: u64,
    /// The WireGuard endpoint, when `[vpn]` is configured.
    #[serde(default)]
    pub vpn: Option<crmguard_vpn::status::VpnStatus>,
    /// The CrowdSec Local API, when `[crowdsec]` has a bouncer key.
    #[serde(default)]
    pub crowdsec: Option<crate::crowdsec::CrowdsecStatus>,
    /// Inspection's flow table and its recent violations, when the VPN endpoint is configured.
    #[serde(default)]
    pub inspection: Option<crate::inspection::InspectionStatus>,
    /// MFA codes tried at the portal since start, by result.
    #[serde(default)]
    pub mfa_attempts: std::collections::BTreeMap<String, u64>,
    /// Open MFA sessions: peer name and RFC 3339 end.
    #[serde(default)]
    pub mfa_sessions: std::collections::BTreeMap<String, String>,
    /// Seconds until each peer's key reaches `vpn.key_max_age` (negative once refused).
    #[serde(default)]
    pub key_expiry: std::collections::BTreeMap<String, i64>,
    /// Where the MFA portal listens, or why it does not.
    #[serde(default)]
    pub portal: Option<PortalStatus>,
    /// Which policy is enforced: `config`, or a fallback because the configuration could not
    /// be loaded at start: `last-good` (the last policy applied) or `embedded` (the embedded
    /// default).
    #[serde(default = "config_source")]
    pub policy_source: String,
    /// Why the configuration could not be loaded, while a fallback is enforced.
    #[serde(default)]
    pub policy_error: Option<String>,
    /// A change applied by `reload --confirm` that is rolled back unless confirmed.
    #[serde(default)]
    pub pending_change: Option<PendingStatus>,
    /// When the last unconfirmed change was rolled back (RFC 3339), since the agent started.
    #[serde(default)]
    pub last_rollback: Option<String>,
    /// What the filter dropped, or would drop in monitor mode, by reason and service, tallied
    /// from the sampled drop events; kept in monitor mode and under the embedded default
    /// policy, so that an operator sees what enforcing would cost before switching.
    #[serde(default)]
    pub drop_tally: Option<crate::tally::TallyStatus>,
}

/// A change applied by `reload --confirm`, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// The generation of the pending policy.
    pub generation: u32,
    /// When it is rolled back without `crmguard confirm`, RFC 3339 UTC.
    pub deadline: String,
    /// Seconds left until then.
    pub seconds_left: u64,
    /// `admin:<unix user>`.
    pub by: String,
}

fn config_source() -> String {
    "config".to_owned()
}

/// The MFA portal, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalStatus {
    /// `10.77.0.1:8443` and so on.
    pub listening: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// One sampled drop, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropStatus {
    pub interface: String,
    pub action: String,
    pub reason: String,
    pub src: String,
    pub dst: String,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mode: String,
    pub adopted: bool,
    /// How the egress flow recorder is attached ("tcx" or "netlink").
    #[serde(default)]
    pub egress: Option<String>,
    /// Why the agent chose this interface ("carries a default route", "has a global
    /// address"); `None` for a listed `[[interface]]`.
    #[serde(default)]
    pub chosen_because: Option<String>,
}

/// A chosen interface the filter could not be attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceFailure {
    pub name: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterStatus {
    pub interface: String,
    pub action: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// A request together with the way to answer it, as the daemon receives it.
pub type Command = (Request, oneshot::Sender<Response>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the agent at {path} (is `crmguard run` running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent sent an answer that is not valid JSON")]
    Decode(#[source] serde_json::Error),
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ControlError {
    /// Whether no agent runs (no socket, or nobody listening on it), as opposed to an agent
    /// that cannot be reached or answered badly: commands that can act without the agent do
    /// so only then.
    pub fn is_agent_down(&self) -> bool {
        matches!(
            self,
            ControlError::Connect { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
        )
    }
}

/// Sends one request and waits for the answer (used by the CLI).
pub fn call(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let io_err = |source| ControlError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err)?;
    let mut line = serde_json::to_string(request).map_err(ControlError::Decode)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    serde_json::from_str(&answer).map_err(ControlError::Decode)
}

/// How long a start waits for an agent that still holds the control socket to go away. An
/// agent killed a moment ago (`kill -9`, then `crmguard run` at once) keeps its listening
/// socket until the kernel has finished tearing it down; it accepts connections but never
/// answers them.
const PREDECESSOR_EXIT: Duration = Duration::from_secs(5);

/// Binds the control socket, replacing a stale one left by a dead agent. A socket whose owner
/// answers a status request belongs to a running agent and is refused at once; one that
/// accepts but does not answer belongs to an agent on its way out, which is waited for (up to
/// [`PREDECESSOR_EXIT`]).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let deadline = std::time::Instant::now() + PREDECESSOR_EXIT;
    while path.exists() {
        match owner(path) {
            Owner::Nobody => {
                std::fs::remove_file(path).map_err(err)?;
            }
            Owner::Running => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another crmguard agent is running",
                )));
            }
            Owner::Silent if std::time::Instant::now() >= deadline => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process holds the control socket and does not answer; stop it",
                )));
            }
            Owner::Silent => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Who is behind an existing control socket.
enum Owner {
    /// Nobody listens: a stale socket of a dead agent.
    Nobody,
    /// An agent answered a status request.
    Running,
    /// A connection was accepted but got no answer in time: an agent being torn down.
    Silent,
}

fn owner(path: &Path) -> Owner {
    let Ok(mut stream) = UnixStream::connect(path) else {
        return Owner::Nobody;
    };
    let Ok(mut line) = serde_json::to_string(&Request::Status) else {
        return Owner::Silent;
    };
    line.push('\n');
    let asked = stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .and_then(|()| stream.write_all(line.as_bytes()));
    if asked.is_err() {
        return Owner::Silent;
    }
    let mut answer = String::new();
    match BufReader::new(stream).read_line(&mut answer) {
        Ok(n) if n > 0 => Owner::Running,
        _ => Owner::Silent,
    }
}

/// Connections the control socket serves at once. Only root can connect, so the bound is
/// against a leaking or runaway local client rather than an attacker. One more connection
/// takes the slot of the oldest one that has not sent its request line yet; when every slot
/// serves a request, it waits in the kernel's backlog until one is free instead of being
/// closed: a `crmguard` command should be answered late rather than fail, and a queued
/// connection costs the agent no descriptor.
pub const CONNECTIONS: usize = 256;

/// Time a client has to send its request line: the CLI sends it at once.
pub const REQUEST_LINE_DEADLINE: Duration = Duration::from_secs(5);

impl Request {
    /// Puts `actor` in every field that names who asked, over what the client sent.
    pub fn attribute(&mut self, actor: &str) {
        match self {
            Request::BanAdd { by, .. }
            | Request::ReloadConfirm { by, .. }
            | Request::Confirm { by }
            | Request::PeerAdd { by, .. }
            | Request::PeerRemove { by, .. }
            | Request::PeerSetEnabled { by, .. }
            | Request::MfaEnrolled { by, .. }
            | Request::BackupCreated { by, .. } => actor.clone_into(by),
            Request::Status
            | Request::Reload
            | Request::BanList
            | Request::BanRemove { .. }
            | Request::PeerList
            | Request::Explain { .. } => {}
        }
    }
}

/// The longest request line: the largest request (`peer add`, `explain`) is well under 2 KiB.
const MAX_REQUEST_LINE: u64 = 64 * 1024;

/// One deadline for the whole request: reading it, the daemon's handling (a reload loads and
/// swaps the policy) and writing the answer. The CLI gives up after 30 seconds as well.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Serves the control socket until the daemon goes away or the listener breaks.
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>) {
    let limiter = crate::listen::Limiter::new(CONNECTIONS);
    let mut acceptor = crate::listen::Acceptor::new("control socket");
    loop {
        // Accepted only when there is a slot for it: see CONNECTIONS.
        limiter.admittable().await;
        let stream = match acceptor.next(|| listener.accept()).await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::error!(error = %e, "the control socket stopped: its listener failed; `crmguard` commands cannot reach the agent");
                return;
            }
        };
        // The connection that made a slot takeable may have sent its request meanwhile.
        let (slot, evicted) = match limiter.try_admit() {
            Some(admitted) => admitted,
            None => limiter.admit().await,
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            let served =
                tokio::time::timeout(REQUEST_DEADLINE, connection(stream, &commands, &slot));
            tokio::select! {
                outcome = served => if outcome.is_err() {
                    tracing::debug!("a control socket request took longer than its deadline; connection closed");
                },
                () = evicted.wait() => {
                    tracing::debug!("a control connection that sent no request gave its slot to a newer one; closed");
                }
            }
            drop(slot);
        });
    }
}

/// Serves one connection: one request line, one answer line.
async fn connection(
    stream: tokio::net::UnixStream,
    commands: &mpsc::Sender<Command>,
    slot: &crate::listen::Slot,
) {
    use tokio::io::AsyncReadExt;
    // Who asks, from the kernel: see [`caller`].
    let actor = stream
        .peer_cred()
        .map(|cred| caller::actor(cred.uid(), cred.pid()));
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = AsyncBufReader::new(read.take(MAX_REQUEST_LINE));
    match tokio::time::timeout(REQUEST_LINE_DEADLINE, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        // Nothing, too slowly, or a failed read: no answer.
        _ => return,
    }
    slot.request_read();
    let response = match (serde_json::from_str::<Request>(&line), actor) {
        (Ok(mut request), Ok(actor)) => {
            request.attribute(&actor);
            ask(commands, request).await
        }
        (Ok(_), Err(e)) => Response::Error {
            message: format!("cannot tell who is asking (SO_PEERCRED): {e}"),
        },
        (Err(e), _) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let Ok(mut out) = serde_json::to_string(&response) else {
        return;
    };
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

/// Passes a request to the daemon loop and waits for its answer.
pub async fn ask(commands: &mpsc::Sender<Command>, request: Request) -> Response {
    let (tx, rx) = oneshot::channel();
    if commands.send((request, tx)).await.is_err() {
        return Response::Error {
            message: "the agent is shutting down".into(),
        };
    }
    rx.await.unwrap_or(Response::Error {
        message: "the agent is shutting down".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmguard_core::error_chain;

    /// The wire format of the ban requests: what `crmguard ban ...` of one version sends to the
    /// agent of another.
    #[test]
    fn ban_requests_on_the_wire() {
        let check = |request: Request, json: &str| {
            assert_eq!(serde_json::to_string(&request).expect("encodes"), json);
            assert_eq!(
                serde_json::from_str::<Request>(json).expect("decodes"),
                request
            );
        };
        check(
            Request::BanAdd {
                net: "203.0.113.0/24".parse().expect("net"),
                ttl_secs: Some(3600),
                reason: Some("scanner".into()),
                by: "admin:alice".into(),
                force: false,
            },
            r#"{"cmd":"ban_add","net":"203.0.113.0/24","ttl_secs":3600,"reason":"scanner","by":"admin:alice","force":false}"#,
        );
        check(Request::BanList, r#"{"cmd":"ban_list"}"#);
        check(
            Request::BanRemove {
                net: "2001:db8::1/128".parse().expect("net"),
            },
            r#"{"cmd":"ban_remove","net":"2001:db8::1/128"}"#,
        );
        // `force` may be left out.
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"cmd":"ban_add","net":"203.0.113.7/32","ttl_secs":null,"reason":null,"by":"admin:root"}"#
            )
            .expect("decodes"),
            Request::BanAdd {
                net: "203.0.113.7/32".parse().expect("net"),
                ttl_secs: None,
                reason: None,
                by: "admin:root".into(),
                force: false,
            }
        );
    }

    /// The wire format of `reload --confirm` and `confirm`; `reload` stays as it was.
    #[test]
    fn confirm_requests_on_the_wire() {
        let check = |request: Request, json: &str| {
            assert_eq!(serde_json::to_string(&request).expect("encodes"), json);
            assert_eq!(
                serde_json::from_str::<Request>(json).expect("decodes"),
                request
            );
        };
        check(Request::Reload, r#"{"cmd":"reload"}"#);
        check(
            Request::ReloadConfirm {
                timeout_secs: 120,
                by: "admin:alice".into(),
            },
            r#"{"cmd":"reload_confirm","timeout_secs":120,"by":"admin:alice"}"#,
        );
        check(
            Request::Confirm {
                by: "admin:alice".into(),
            },
            r#"{"cmd":"confirm","by":"admin:alice"}"#,
        );
    }

    #[test]
    fn a_status_without_bans_still_decodes() {
        let json = r#"{"result":"status","version":"0","config":"c","mode":"enforce","generation":1,"interfaces":[],"counters":[]}"#;
        let Ok(Response::Status(status)) = serde_json::from_str::<Response>(json) else {
            panic!("{json} does not decode");
        };
        assert_eq!(status.bans, Vec::new());
    }

    /// Binds `path` in a thread that serves it as `serve`: `answer` says whether a request gets
    /// an answer; the listener goes away after `lifetime`.
    fn squatter(path: &Path, answer: bool, lifetime: Duration) -> std::thread::JoinHandle<()> {
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the squatter");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + lifetime;
            let mut held = Vec::new();
            while std::time::Instant::now() < end {
                match listener.accept() {
                    Ok((mut stream, _)) if answer => {
                        let _ = stream.write_all(b"{\"status\":\"ok\"}\n");
                    }
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    #[tokio::test]
    async fn a_start_waits_for_a_dying_agent_and_refuses_a_running_one() {
        let dir = tempfile::tempdir().expect("tempdir");

        // A stale socket: nobody listens.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
        assert!(bind(&stale).is_ok(), "a stale socket is replaced");

        // An agent on its way out: accepts, never answers, gone after 300 ms.
        let dying = dir.path().join("dying.sock");
        let owner = squatter(&dying, false, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let bound = bind(&dying);
        owner.join().expect("squatter");
        assert!(
            bound.is_ok(),
            "waited for the dying agent: {:?}",
            bound.err()
        );
        assert!(started.elapsed() >= Duration::from_millis(250));

        // A running agent answers: refused at once.
        let running = dir.path().join("running.sock");
        let owner = squatter(&running, true, Duration::from_secs(2));
        let started = std::time::Instant::now();
        let refused = bind(&running);
        let message = refused.err().map(|e| error_chain(&e)).unwrap_or_default();
        assert!(
            message.contains("another crmguard agent is running"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        owner.join().expect("squatter");
    }
}
