//! Prometheus metrics at `[metrics] listen`, path `/metrics`.
//!
//! This module only serves a registry; it defines no metric. Each part of the agent owns
//! and registers its own when the daemon starts: the datapath (`crmguard_xdp_*`, whose
//! counters a collector reads from the kernel's pinned per-CPU map at each scrape), the
//! VPN endpoint's status (`crmguard_vpn_*`), the ACL (`crmguard_acl_denied_total`) and the
//! daemon (policy, bans, audit, MFA, key expiry). Before it reads the registry, a scrape asks
//! the daemon's main loop to refresh the metrics it keeps from its state, over a channel of
//! its own: scrapes never queue behind or in front of admin commands. No label carries an
//! address.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::http::{self, ReadError};
use crate::listen::{Acceptor, Limiter, Slot};

/// A scrape's request to the daemon to refresh its metrics; answered when they are.
pub type Refresh = oneshot::Sender<()>;

/// What a scrape may send: a `GET` has no body, and its head is small.
const LIMITS: http::Limits = http::Limits {
    max_head: 8 * 1024,
    max_body: 0,
    deadline: Duration::from_secs(10),
};

/// How long a scrape waits for the daemon's refresh before it serves the values of the last
/// one: a busy main loop delays a scrape by this much at most.
const REFRESH_WAIT: Duration = Duration::from_secs(2);

/// Connections served at once. One more takes the slot of the oldest connection that has not
/// sent its request yet, so that idle connections cannot keep a scrape out; when every slot
/// serves a scrape it is closed as soon as it is accepted rather than left in the kernel's
/// backlog: Prometheus scrapes one at a time and retries at the next interval, so a scrape that
/// waited behind a flood would only report stale values late, and closing keeps a flood of
/// connections from costing more than a few buffers.
pub const CONNECTIONS: usize = 16;

/// One deadline for the whole request: reading it ([`LIMITS`]), the daemon's refresh
/// ([`REFRESH_WAIT`]) and writing the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric")]
    Register(#[from] prometheus::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })
}

/// Serves `/metrics` from `registry`, asking for a refresh over `refresh` before each scrape.
pub async fn serve(listener: TcpListener, registry: Registry, refresh: mpsc::Sender<Refresh>) {
    let limiter = Limiter::new(CONNECTIONS);
    let mut acceptor = Acceptor::new("metrics");
    loop {
        let stream = match acceptor.next(|| listener.accept()).await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::error!(error = %e, "the metrics endpoint stopped: its listener failed");
                return;
            }
        };
        let Some((slot, evicted)) = limiter.try_admit() else {
            tracing::debug!("the metrics endpoint is busy; connection closed");
            continue;
        };
        let registry = registry.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let served =
                tokio::time::timeout(REQUEST_DEADLINE, handle(stream, &registry, &refresh, &slot));
            tokio::select! {
                outcome = served => match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "cannot answer a metrics request"),
                    Err(_) => tracing::debug!("a metrics request took longer than its deadline; connection closed"),
                },
                () = evicted.wait() => {
                    tracing::debug!("a metrics connection that sent no request gave its slot to a newer one; closed");
                }
            }
            drop(slot);
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    refresh: &mpsc::Sender<Refresh>,
    slot: &Slot,
) -> std::io::Result<()> {
    let read = http::read_request(&mut stream, &LIMITS).await;
    slot.request_read();
    let (code, content_type, body) = match read {
        Ok(request) if request.method == "GET" && request.path == "/metrics" => {
            ask_refresh(refresh).await;
            ("200 OK", "text/plain; version=0.0.4", render(registry))
        }
        Ok(request) if request.method == "GET" => (
            "404 Not Found",
            "text/plain",
            "crmguard serves /metrics\n".to_owned(),
        ),
        // A client that sent nothing, or too slowly, gets no answer.
        Err(ReadError::Closed | ReadError::Io(_) | ReadError::TimedOut(_)) => return Ok(()),
        Ok(_) | Err(_) => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Asks the daemon to refresh its metrics and waits for it, at most [`REFRESH_WAIT`].
async fn ask_refresh(refresh: &mpsc::Sender<Refresh>) {
    let (done, refreshed) = oneshot::channel();
    let asked = tokio::time::timeout(REFRESH_WAIT, async {
        refresh.send(done).await.ok()?;
        refreshed.await.ok()
    })
    .await;
    if !matches!(asked, Ok(Some(()))) {
        tracing::debug!("the daemon did not refresh its metrics in time; serving the last values");
    }
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only for a family without samples, which gather leaves out.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}
