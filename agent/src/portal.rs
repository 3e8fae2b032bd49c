//! The MFA portal (CONTRACT.md section 2a): the small HTTP/1.1 server where a staff member
//! whose role requires MFA types the code from their authenticator app.
//!
//! The agent serves it on the gateway's VPN addresses at `[mfa] portal_port`. Until a peer
//! has an open session, the identity ACL lets it reach this portal and nothing else. The
//! caller is the TCP source address: the WireGuard endpoint accepts a decrypted packet only
//! from the address of the peer that sent it, so the address names the peer.
//!
//! | request | action | answer |
//! | --- | --- | --- |
//! | `GET /` | [`PortalAction::Show`] | the HTML page |
//! | `GET /session` | [`PortalAction::Show`] | the caller's state as JSON |
//! | `POST /session` with `code=NNNNNN` or `{"code":"NNNNNN"}` | [`PortalAction::Open`] | 200, 401, 403, 423 or 503 |
//! | `DELETE /session`, or `POST /session/end` from the page's form | [`PortalAction::Close`] | 200 |
//!
//! A client whose `Accept` header names `text/html` (a browser) gets the page with a message
//! in place of JSON, under the same status code. The page and the JSON `message` are in
//! English or Russian, as the `Accept-Language` header prefers ([`crate::i18n`]). Every request is bounded: an 8 KiB head, a
//! 1 KiB body, 10 seconds to send them, one request per connection and 64 connections at
//! once, 8 of them from one tunnel address; more connections are closed as soon as they are
//! accepted.
//!
//! The portal holds no state and decides nothing: each request goes to the agent's main loop
//! as a [`PortalRequest`], which checks the code and owns sessions and lockouts
//! ([`super::sessions`]), and the portal renders the [`PortalReply`]. It never logs a code,
//! and it logs client addresses at DEBUG at most.

#![forbid(unsafe_code)]

mod answer;
mod http;
mod page;

use crmguard_core::time::unix_now;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::i18n::{Lang, Msg};
use answer::{Format, Refusal};
use http::{ReadError, Request, Response};

/// One question to the agent's main loop: who is asking, and what for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalRequest {
    /// The caller's tunnel address (IPv4-mapped IPv6 addresses are given as IPv4).
    pub from: IpAddr,
    pub action: PortalAction,
}

/// What the caller asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum PortalAction {
    /// Its state: `GET /` and `GET /session`.
    Show,
    /// Open a session with this code: `POST /session`. The code is passed as typed, minus
    /// whitespace; checking it (six digits, right, not reused) is the agent's job.
    Open { code: String },
    /// End its session: `DELETE /session` or `POST /session/end`.
    Close,
}

/// Written by hand so that a code never reaches a log line through `{:?}`.
impl fmt::Debug for PortalAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortalAction::Show => f.write_str("Show"),
            PortalAction::Open { .. } => f.write_str("Open { code: <redacted> }"),
            PortalAction::Close => f.write_str("Close"),
        }
    }
}

/// The agent's answer, rendered as JSON or as the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortalReply {
    /// The source address belongs to no configured peer (403).
    UnknownPeer,
    /// The caller's state, for [`PortalAction::Show`] (200).
    View(PeerView),
    /// The code was right: a session is open until `expires` (Unix seconds) (200).
    Opened { peer: String, expires: u64 },
    /// The code was wrong, malformed or reused; `remaining` more wrong codes lock the peer
    /// out (401).
    Wrong { peer: String, remaining: u32 },
    /// The peer is locked out until `until` (Unix seconds); the code was not looked at (423).
    LockedOut { peer: String, until: u64 },
    /// The peer's role needs no MFA (403).
    NotRequired { peer: String },
    /// The peer is disabled (403).
    Disabled { peer: String },
    /// No TOTP secret is enrolled for the peer (403); the page tells them to ask the
    /// administrator to run `crmguard mfa enroll NAME`.
    NotEnrolled { peer: String },
    /// New sessions are refused right now (503), for example because the audit log cannot
    /// be written and `[audit] on_write_failure = "fail-closed"`; `reason` is shown.
    Unavailable { peer: String, reason: String },
    /// The session is ended; `had_session` says whether one was open (200).
    Closed { peer: String, had_session: bool },
}

/// A peer's MFA state as the portal shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The configured peer name.
    pub peer: String,
    /// Whether the peer's role requires MFA.
    pub mfa_required: bool,
    pub enabled: bool,
    /// Whether a TOTP secret is enrolled for the peer.
    pub enrolled: bool,
    /// When the open session ends at the latest (Unix seconds); `None` without a session.
    pub session_expires: Option<u64>,
    /// When the current lockout ends (Unix seconds); `None` when not locked out.
    pub locked_until: Option<u64>,
}

/// What the portal sends to the agent's main loop: the request and where to put the reply.
pub type PortalQuery = (PortalRequest, oneshot::Sender<PortalReply>);

/// Why the portal could not listen.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("cannot create the MFA portal's socket for {addr}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {option} on the MFA portal's socket for {addr}")]
    SetOption {
        addr: SocketAddr,
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the MFA portal to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for the MFA portal on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot register the MFA portal's socket for {addr} with the runtime")]
    Register {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Binds one listener per address at `port` (0 picks a free port per address), accepting
/// only connections that arrive on `device` when it is given (the TUN device: the portal is
/// reachable from inside the tunnel only, whatever the XDP filter does on the other
/// interfaces, in monitor mode or with no filter at all).
///
/// The sockets are bound with `IP_FREEBIND`, so binding works before the TUN device has its
/// address. Must be called within a tokio runtime.
pub fn bind(
    addrs: &[IpAddr],
    port: u16,
    device: Option<&str>,
) -> Result<Vec<TcpListener>, PortalError> {
    addrs
        .iter()
        .map(|&ip| bind_one(SocketAddr::new(ip, port), device))
        .collect()
}

fn bind_one(addr: SocketAddr, device: Option<&str>) -> Result<TcpListener, PortalError> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd =
        socket::socket(family, SockType::Stream, flags, None).map_err(|e| PortalError::Socket {
            addr,
            source: e.into(),
        })?;
    let option = |option, e: nix::Error| PortalError::SetOption {
        addr,
        option,
        source: e.into(),
    };
    // A restarted agent binds again while the last one's connections are in TIME_WAIT.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| option("SO_REUSEADDR", e))?;
    // IP_FREEBIND applies to IPv6 sockets too (it is what IPV6_FREEBIND sets).
    socket::setsockopt(&fd, sockopt::IpFreebind, &true).map_err(|e| option("IP_FREEBIND", e))?;
    if let Some(device) = device {
        socket::setsockopt(
            &fd,
            sockopt::BindToDevice,
            &std::ffi::OsString::from(device),
        )
        .map_err(|e| option("SO_BINDTODEVICE", e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| PortalError::Bind {
        addr,
        source: e.into(),
    })?;
    socket::listen(&fd, Backlog::MAXCONN).map_err(|e| PortalError::Listen {
        addr,
        source: e.into(),
    })?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
        .map_err(|source| PortalError::Register { addr, source })
}

/// The bounds on each client.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Time to send the whole request, and then to take the answer: a client that trickles
    /// bytes (slowloris) or sends nothing is cut off.
    io_timeout: Duration,
    /// Time the agent's main loop has to answer.
    agent_timeout: Duration,
    /// Connections served at once.
    connections: usize,
    /// Connections served at once for one tunnel address, so that one peer cannot take every
    /// slot and keep the others from signing in.
    per_source: usize,
}

/// The largest request head (request line and headers) the portal reads.
const MAX_HEAD: usize = 8 * 1024;
/// The largest request body the portal reads; a code fits many times over.
const MAX_BODY: usize = 1024;

const LIMITS: Limits = Limits {
    io_timeout: Duration::from_secs(10),
    agent_timeout: Duration::from_secs(5),
    connections: 64,
    per_source: 8,
};

impl Limits {
    /// One deadline for the whole connection: the request, the agent's answer and sending it.
    /// Each step has its own bound as well; this one holds whatever the steps do.
    fn request_deadline(&self) -> Duration {
        self.io_timeout
            .saturating_add(self.agent_timeout)
            .saturating_add(self.io_timeout)
    }
}

/// Serves the portal on `listener` until the listener fails or the task is aborted; aborting
/// it also ends the connections in progress. Each request goes to the agent over `requests`.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<PortalQuery>) {
    serve_with(listener, requests, LIMITS).await;
}

async fn serve_with(listener: TcpListener, requests: mpsc::Sender<PortalQuery>, limits: Limits) {
    let mut connections = JoinSet::new();
    // The source of each connection in progress, by task, and how many each source has.
    let mut sources: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
    let mut acceptor = crate::listen::Acceptor::new("MFA portal");
    loop {
        let accepted = acceptor.next(|| listener.accept()).await;
        while let Some(done) = connections.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "an MFA portal connection failed");
                    e.id()
                }
            };
            if let Some(ip) = sources.remove(&id) {
                if let Some(n) = per_source.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        per_source.remove(&ip);
                    }
                }
            }
        }
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            // The acceptor backs off and retries every other error itself.
            Err(e) => {
                tracing::warn!(error = %e, "the MFA portal stopped: its listener failed");
                return;
            }
        };
        if connections.len() >= limits.connections {
            tracing::debug!(%from, "the MFA portal is busy; connection closed");
            continue;
        }
        let from = from.ip().to_canonical();
        let count = per_source.entry(from).or_default();
        if *count >= limits.per_source {
            tracing::debug!(%from, "this source holds its share of the MFA portal's connections; connection closed");
            continue;
        }
        *count += 1;
        let requests = requests.clone();
        let task = connections.spawn(connection(stream, from, requests, limits));
        sources.insert(task.id(), from);
    }
}

/// Serves one connection within [`Limits::request_deadline`].
async fn connection(
    stream: TcpStream,
    from: IpAddr,
    requests: mpsc::Sender<PortalQuery>,
    limits: Limits,
) {
    let served = connection_steps(stream, from, requests, limits);
    if tokio::time::timeout(limits.request_deadline(), served)
        .await
        .is_err()
    {
        tracing::debug!(%from, "an MFA portal connection took longer than its deadline; closed");
    }
}

/// Serves one connection: one request, one answer, then close.
async fn connection_steps(
    mut stream: TcpStream,
    from: IpAddr,
    requests: mpsc::Sender<PortalQuery>,
    limits: Limits,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let Some(response) = answer_request(&mut stream, from, local, &requests, limits).await else {
        return;
    };
    let sent = tokio::time::timeout(limits.io_timeout, send(&mut stream, &response)).await;
    if let Ok(Err(e)) = sent {
        tracing::debug!(%from, error = %e, "cannot send the MFA portal's answer");
    }
}

/// The answer to the one request `reader` holds, sent from `from` to the portal at `local`:
/// the request read within the portal's bounds, then [`respond`]. `None` when the portal
/// closes the connection without an answer: nothing arrived, it arrived too slowly, or the
/// read failed.
async fn answer_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    from: IpAddr,
    local: SocketAddr,
    requests: &mpsc::Sender<PortalQuery>,
    limits: Limits,
) -> Option<Response> {
    let request_limits = crate::http::Limits {
        max_head: MAX_HEAD,
        max_body: MAX_BODY,
        deadline: limits.io_timeout,
    };
    match crate::http::read_request(reader, &request_limits).await {
        Err(ReadError::TimedOut(_)) => {
            tracing::debug!(%from, "MFA portal client too slow; connection closed");
            None
        }
        Err(ReadError::Closed | ReadError::Io(_)) => None,
        // The head may not have been read, so there is no `Accept` to go by.
        Err(e) => Some(answer::refusal(read_refusal(&e), Format::Json, Lang::En)),
        Ok(request) => Some(respond(&request, from, local, requests, limits).await),
    }
}

/// What the portal sends back for the request `reader` holds, from `from` to the portal at
/// `local`, with the portal's bounds and timeouts: the bytes of the answer, or `None` when the
/// connection is closed without one. The request goes to `requests` as it does from a
/// connection. This is how the portal is fuzzed (`cargo xtask fuzz --target portal_http`)
/// without a socket in between.
pub async fn answer_bytes<R: AsyncRead + Unpin>(
    reader: &mut R,
    from: IpAddr,
    local: SocketAddr,
    requests: &mpsc::Sender<PortalQuery>,
) -> Option<Vec<u8>> {
    answer_request(reader, from, local, requests, LIMITS)
        .await
        .map(|response| response.to_bytes())
}

/// Writes `response`, then reads and discards whatever the client still sends until it
/// closes: closing a socket with unread bytes resets the connection, and a reset can destroy
/// the answer before the client reads it (a 413 to a client still sending its body).
async fn send(stream: &mut TcpStream, response: &Response) -> io::Result<()> {
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

fn read_refusal(e: &ReadError) -> Refusal {
    match e {
        ReadError::HeadTooLarge(_) => Refusal::HeadTooLarge,
        ReadError::BodyTooLarge(_) => Refusal::BodyTooLarge,
        ReadError::Malformed(why) => Refusal::Malformed(why),
        ReadError::Closed | ReadError::Io(_) | ReadError::TimedOut(_) => {
            Refusal::Malformed("the request is incomplete")
        }
    }
}

/// Answers one well-formed request, asking the agent when the request is one the portal
/// serves.
async fn respond(
    request: &Request,
    from: IpAddr,
    local: SocketAddr,
    requests: &mpsc::Sender<PortalQuery>,
    limits: Limits,
) -> Response {
    let lang = Lang::from_accept_language(request.accept_language.as_deref());
    if !host_is_own(request.host.as_deref(), local) {
        return answer::refusal(Refusal::WrongHost, negotiate(request), lang);
    }
    let (action, format) = match route(request) {
        Ok(routed) => routed,
        Err(refusal) => return answer::refusal(refusal, negotiate(request), lang),
    };
    let question = PortalRequest { from, action };
    match ask(requests, question, limits.agent_timeout).await {
        Some(reply) => answer::reply(&reply, format, lang, unix_now()),
        None => answer::refusal(Refusal::AgentUnavailable, format, lang),
    }
}

/// Whether `host` (the `Host` header) is the address the connection came to, as an IP
/// literal with or without a port; a name is refused. A request without `Host` (HTTP/1.0
/// scripts) is let through.
fn host_is_own(host: Option<&str>, local: SocketAddr) -> bool {
    let Some(host) = host else {
        return true;
    };
    let host = host.trim();
    let literal = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    literal
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical() == local.ip().to_canonical())
}

/// The action a request asks for and the form its answer takes.
fn route(request: &Request) -> Result<(PortalAction, Format), Refusal> {
    match (request.path.as_str(), request.method.as_str()) {
        ("/", "GET") => Ok((PortalAction::Show, Format::Html)),
        ("/", _) => Err(Refusal::MethodNotAllowed { allow: "GET" }),
        ("/session", "GET") => Ok((PortalAction::Show, Format::Json)),
        ("/session", "POST") => {
            check_same_origin(request)?;
            let code = code(request)?;
            Ok((PortalAction::Open { code }, negotiate(request)))
        }
        ("/session", "DELETE") => Ok((PortalAction::Close, negotiate(request))),
        ("/session", _) => Err(Refusal::MethodNotAllowed {
            allow: "GET, POST, DELETE",
        }),
        ("/session/end", "POST") => {
            check_same_origin(request)?;
            Ok((PortalAction::Close, negotiate(request)))
        }
        ("/session/end", _) => Err(Refusal::MethodNotAllowed { allow: "POST" }),
        _ => Err(Refusal::NotFound),
    }
}

fn negotiate(request: &Request) -> Format {
    if request.wants_html() {
        Format::Html
    } else {
        Format::Json
    }
}

/// Refuses a form posted by a page of another site, which a browser would send with the
/// staff member's tunnel address: it could log them out, or spend their attempts until they
/// are locked out. Browsers mark such requests with `Sec-Fetch-Site`, and with an `Origin`
/// that is not the portal's. `Origin: null` is refused too: it is what a sandboxed frame, a
/// `data:` page or a cross-site redirect sends, so it proves nothing about who posted. The
/// portal's own pages send its exact origin (`Referrer-Policy: same-origin`). Scripts send
/// neither header and are let through: they cannot be made to post by a web page.
fn check_same_origin(request: &Request) -> Result<(), Refusal> {
    if let Some(site) = &request.sec_fetch_site {
        if !matches!(site.as_str(), "same-origin" | "none") {
            return Err(Refusal::CrossOrigin);
        }
    }
    let Some(origin) = request.origin.as_deref() else {
        return Ok(());
    };
    let own = request.host.as_deref().map(|host| format!("http://{host}"));
    if own.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(Refusal::CrossOrigin)
    }
}

/// The JSON body of `POST /session`.
#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

/// The code in a `POST /session` body, without whitespace: people type and paste
/// `123 456` and ` 123456 `.
fn code(request: &Request) -> Result<String, Refusal> {
    let typed = match request.media_type().as_deref() {
        Some("application/x-www-form-urlencoded") => http::form_field(&request.body, "code")
            .map_err(|_| Refusal::BadRequest(Msg::BadForm))?
            .ok_or(Refusal::BadRequest(Msg::NoCodeField))?,
        Some("application/json") => {
            serde_json::from_slice::<CodeBody>(&request.body)
                .map_err(|_| Refusal::BadRequest(Msg::BadJson))?
                .code
        }
        _ => return Err(Refusal::UnsupportedMediaType),
    };
    Ok(typed.chars().filter(|c| !c.is_whitespace()).collect())
}

/// Sends `question` to the agent and waits for its reply; `None` when the agent's main loop
/// is gone, dropped the question or took longer than `timeout`.
async fn ask(
    requests: &mpsc::Sender<PortalQuery>,
    question: PortalRequest,
    timeout: Duration,
) -> Option<PortalReply> {
    let exchange = async {
        let (reply_to, reply) = oneshot::channel();
        requests.send((question, reply_to)).await.ok()?;
        reply.await.ok()
    };
    let reply = tokio::time::timeout(timeout, exchange).await.ok().flatten();
    if reply.is_none() {
        tracing::warn!("the agent did not answer the MFA portal");
    }
    reply
}

#[cfg(test)]
mod tests;
