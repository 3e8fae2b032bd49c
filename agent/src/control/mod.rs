//! The control socket: how `crmguard status`, `reload` and later commands
//! talk to the running agent.
//!
//! Protocol: one JSON request per connection, one line; one JSON response
//! line back. The socket is created mode 0600 (root only): whoever can
//! write to it can change the firewall.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Reloaded { generation: u32 },
    Error { message: String },
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
    /// Non-zero counters only.
    pub counters: Vec<CounterStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mode: String,
    pub adopted: bool,
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

/// Binds the control socket, replacing a stale one left by a dead agent.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another crmguard agent is running",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves the control socket until the daemon goes away.
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = AsyncBufReader::new(read);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(request) => ask(&commands, request).await,
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            };
            let Ok(mut out) = serde_json::to_string(&response) else {
                return;
            };
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
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
