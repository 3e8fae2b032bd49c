//! The WireGuard configuration socket, `/var/run/wireguard/<interface>.sock`, so that
//! `wg show crmguard0` and `wg showconf crmguard0` work on the gateway.
//!
//! `get` is answered with the endpoint's state. `set` is refused with `EPERM`: crmguard's
//! peers come from its configuration (`crmguard peer add`, the peers file, `reload`), and a
//! change made behind its back would be lost at the next reload. The socket is mode 0600; its
//! directory is shared with wireguard-go and other WireGuard tools, so a socket that another
//! live process serves is left alone (and `wg` then cannot reach crmguard by that name).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::PollFlags;

use super::uapi::{self, DeviceInfo};

/// Where WireGuard tools look for userspace devices.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// `EPERM`.
const EPERM: i32 = 1;

/// Produces the device's state for a `get`.
pub type InfoFn = Box<dyn Fn() -> DeviceInfo + Send>;

/// The running socket; dropping it stops the thread and removes the socket file.
pub struct UapiServer {
    path: PathBuf,
    /// (device, inode) of the socket file this server created.
    identity: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UapiServer {
    /// Serves `/var/run/wireguard/<interface>.sock`. Failing to is not fatal: the VPN works
    /// without it, so the problem is logged and `None` returned.
    pub fn start(interface: &str, info: InfoFn) -> Option<UapiServer> {
        let path = Path::new(SOCKET_DIR).join(format!("{interface}.sock"));
        match UapiServer::bind(&path) {
            Ok((listener, identity)) => {
                let stop = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&stop);
                let thread = std::thread::Builder::new()
                    .name("vpn-uapi".to_owned())
                    .spawn(move || serve(&listener, &flag, &info));
                match thread {
                    Ok(thread) => Some(UapiServer {
                        path,
                        identity,
                        stop,
                        thread: Some(thread),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the WireGuard configuration socket's thread");
                        let _ = std::fs::remove_file(&path);
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no WireGuard configuration socket; `wg show` cannot see this endpoint");
                None
            }
        }
    }

    fn bind(path: &Path) -> std::io::Result<(UnixListener, (u64, u64))> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another live process serves this socket",
                ));
            }
            // Left behind by a process that died.
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::metadata(path)?;
        Ok((listener, (meta.dev(), meta.ino())))
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Remove the socket only if it is still the one this server created.
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn serve(listener: &UnixListener, stop: &AtomicBool, info: &InfoFn) {
    while !stop.load(Ordering::Relaxed) {
        match super::udp::wait(listener, PollFlags::POLLIN, Duration::from_millis(200)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "waiting on the WireGuard configuration socket");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "accepting on the WireGuard configuration socket");
                continue;
            }
        };
        if let Err(e) = handle(stream, info) {
            tracing::debug!(error = %e, "a WireGuard configuration request failed");
        }
    }
}

fn handle(stream: UnixStream, info: &InfoFn) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(());
        }
        match first.trim_end_matches('\n') {
            "get=1" => {
                // The blank line that ends the request.
                let mut blank = String::new();
                reader.read_line(&mut blank)?;
                writer.write_all(uapi::format_get(&info()).as_bytes())?;
            }
            "set=1" => {
                // The body is read to its blank line and not parsed: whatever it asks, crmguard
                // changes nothing. An empty `set` changes nothing either, so it succeeds.
                let mut empty = true;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line == "\n" {
                        break;
                    }
                    empty = false;
                }
                let errno = if empty {
                    0
                } else {
                    tracing::warn!("refused a `wg set` on the VPN interface: crmguard's peers come from its configuration");
                    EPERM
                };
                writer.write_all(uapi::format_errno(errno).as_bytes())?;
            }
            "" => continue,
            _ => {
                writer.write_all(uapi::format_errno(libc::EPROTO).as_bytes())?;
                return Ok(());
            }
        }
    }
}
