//! The WireGuard endpoint against real clients.
//!
//! crmguard runs in the host namespace with `[vpn]` and the XDP filter on its public interfaces
//! (which must let WireGuard through); each staff client is wireguard-go, an independent
//! WireGuard implementation, in a namespace of its own that reaches the host over a veth pair.
//! Services run in the host namespace and are reached on the gateway's tunnel address. The
//! harness gives every agent its own TUN name through `CRMGUARD_VPN_INTERFACE`, because the
//! WireGuard tools' sockets in `/var/run/wireguard` are shared by all namespaces.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.2 fd77::2 -> 10.X.Y.1:51820   [XDP] crmguard, TUN 10.77.0.1
//!   netns out2  wireguard-go 10.77.0.3 fd77::3 -> 10.X.Y+1.1:51820 [XDP]                fd77::1
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::{self, TcpOutcome, TcpServer, UdpReceiver};
use crmguard_lab::netns::{veth_pair, Iface, NetNs};
use crmguard_lab::privileged;
use crmguard_lab::process;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg::{self, genkey, Keys, WgClient};
use tempfile::TempDir;

/// The endpoint's UDP port.
pub(crate) const WG_PORT: u16 = 51820;
/// A TCP service the staff role may reach (a banner server).
pub(crate) const ALLOWED_TCP: u16 = 8080;
/// The bulk-transfer service, also allowed.
pub(crate) const BULK: u16 = 5001;
/// A UDP service the staff role may reach.
pub(crate) const ALLOWED_UDP: u16 = 9000;
/// A service only the dba role may reach.
const DBA_ONLY: u16 = 5432;
/// How long handshakes and counters may take to show.
pub(crate) const SETTLE: Duration = Duration::from_secs(10);

pub(crate) const GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

/// Fails naming the Debian package when a tool the scenarios run is missing.
pub(crate) fn require_tools() -> Result<()> {
    crmguard_lab::privileged::require_tools(&[
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("ping", "iputils-ping"),
        ("sha256sum", "coreutils"),
    ])
}

// ---- the lab ---------------------------------------------------------------------------------

/// A peer: its name, keys and tunnel addresses (10.77.0.LAST and fd77::LAST).
pub(crate) struct PeerSpec {
    pub(crate) name: &'static str,
    pub(crate) keys: Keys,
    pub(crate) last: u8,
}

impl PeerSpec {
    pub(crate) fn new(name: &'static str, last: u8) -> Result<PeerSpec> {
        Ok(PeerSpec {
            name,
            keys: genkey()?,
            last,
        })
    }

    pub(crate) fn v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, self.last)
    }

    fn v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, self.last.into())
    }

    pub(crate) fn toml(&self) -> String {
        format!(
            "[[peer]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\naddress6 = \"{}\"\nrole = \"staff\"\n",
            self.name,
            self.keys.public,
            self.v4(),
            self.v6()
        )
    }

    /// Starts wireguard-go for this peer in `ns`, talking to the gateway at `endpoint`.
    pub(crate) fn connect(
        &self,
        ns: &NetNs,
        gateway: &str,
        endpoint: SocketAddr,
    ) -> Result<WgClient> {
        let v4 = format!("{}/24", self.v4());
        let v6 = format!("{}/64", self.v6());
        let client = WgClient::start(ns, &self.keys, &[&v4, &v6])?;
        client.set_peer(gateway, endpoint, &["10.77.0.0/24", "fd77::/64"])?;
        Ok(client)
    }
}

/// What the agent of a lab is started with.
pub(crate) struct Setup {
    pub(crate) body: String,
    /// Holds the private key file and the peers file.
    _scratch: TempDir,
}

/// The agent's config: XDP on `interfaces`, default drop, `[vpn]`, a staff role reaching
/// ALLOWED_TCP, BULK and ALLOWED_UDP, a dba role reaching DBA_ONLY, and `peers` (all staff).
pub(crate) fn setup(interfaces: &[&Iface], peers: &[&PeerSpec]) -> Result<Setup> {
    setup_with(interfaces, peers, "")
}

/// [`setup`] with more `[vpn]` keys.
pub(crate) fn setup_with(
    interfaces: &[&Iface],
    peers: &[&PeerSpec],
    vpn_extra: &str,
) -> Result<Setup> {
    require_tools()?;
    let scratch = tempfile::tempdir()?;
    let mut body = String::new();
    for iface in interfaces {
        body.push_str(&format!(
            "[[interface]]\nname = \"{}\"\nxdp_mode = \"native\"\n\n",
            iface.name()
        ));
    }
    body.push_str(&format!(
        r#"[firewall]
default = "drop"

[vpn]
listen_port = {WG_PORT}
address = "10.77.0.1/24"
address6 = "fd77::1/64"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"
{vpn_extra}
[[role]]
name = "staff"
allow = ["tcp/{ALLOWED_TCP}", "tcp/{BULK}", "udp/{ALLOWED_UDP}"]

[[role]]
name = "dba"
allow = ["tcp/{DBA_ONLY}"]

"#,
        dir = scratch.path().display(),
    ));
    for peer in peers {
        body.push_str(&peer.toml());
        body.push('\n');
    }
    Ok(Setup {
        body,
        _scratch: scratch,
    })
}

/// Starts the agent; the harness gives its TUN device a unique name (`Agent::vpn_interface`).
pub(crate) fn start_agent<'ns>(ns: &'ns NetNs, setup: &Setup) -> Result<Agent<'ns>> {
    Agent::start(ns, &setup.body)
}

/// The gateway's public key, as `status --json` reports it.
pub(crate) fn gateway_key(agent: &Agent) -> Result<String> {
    let status = agent.status()?;
    let vpn = &status["vpn"];
    ensure!(
        vpn["running"] == true,
        "the VPN endpoint does not run: {vpn}"
    );
    Ok(vpn["public_key"]
        .as_str()
        .with_context(|| format!("status has no vpn.public_key: {vpn}"))?
        .to_owned())
}

/// A second outside namespace with its own link to the host: 10.X.Y+1.2 outside, .1 on the host.
pub(crate) fn second_link(t: &Topology, x: u8, y: u8) -> Result<(NetNs, Iface, Iface, IpAddr)> {
    let ns = NetNs::new("cgt-out2")?;
    let (out_if, host_if) = veth_pair(&ns, &t.host)?;
    out_if.add_addr(&format!("10.{x}.{}.2/24", y + 1))?;
    host_if.add_addr(&format!("10.{x}.{}.1/24", y + 1))?;
    out_if.up()?;
    host_if.up()?;
    Ok((
        ns,
        out_if,
        host_if,
        IpAddr::V4(Ipv4Addr::new(10, x, y + 1, 1)),
    ))
}

pub(crate) fn gateway_endpoint(host: IpAddr) -> SocketAddr {
    SocketAddr::new(host, WG_PORT)
}

/// One ping from `ns` to `dst` that must be answered within `wait`.
pub(crate) fn ping(ns: &NetNs, dst: IpAddr, wait: Duration) -> Result<bool> {
    let mut cmd = Command::new("ping");
    cmd.args([
        "-n",
        "-c",
        "1",
        "-W",
        &format!("{:.1}", wait.as_secs_f64()),
        &dst.to_string(),
    ]);
    Ok(process::output_in(ns, cmd)?.status.success())
}

/// Waits until `dst` answers pings from `ns` (the handshake happens on the first packet).
pub(crate) fn wait_reachable(ns: &NetNs, dst: IpAddr) -> Result<()> {
    wait_for(SETTLE, &format!("{dst} to answer pings"), || {
        Ok(ping(ns, dst, Duration::from_millis(500))?.then_some(()))
    })
}

/// The value of a metric sample, 0 when absent.
pub(crate) fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    Ok(metric_value(&agent.metrics()?, name, labels).unwrap_or(0.0))
}

/// `wg show IFACE dump` of the gateway, parsed.
pub(crate) fn gateway_dump(interface: &str) -> Result<(String, u16, Vec<wg::DumpPeer>)> {
    wg::parse_dump(&wg::wg(&["show", interface, "dump"], None)?)
}

// ---- traffic -----------------------------------------------------------------------------------

/// A deterministic byte stream (xorshift64), the same on both ends of a transfer.
struct Stream {
    state: u64,
    block: Vec<u8>,
    at: usize,
}

impl Stream {
    const BLOCK: usize = 64 * 1024;

    fn new(seed: u64) -> Stream {
        let mut s = Stream {
            state: seed | 1,
            block: vec![0u8; Stream::BLOCK],
            at: 0,
        };
        s.refill();
        s
    }

    fn refill(&mut self) {
        for chunk in self.block.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.at = 0;
    }

    /// The next `n` bytes (at most one block).
    fn next(&mut self, n: usize) -> &[u8] {
        if self.at == self.block.len() {
            self.refill();
        }
        let n = n.min(self.block.len() - self.at);
        let out = &self.block[self.at..self.at + n];
        self.at += n;
        out
    }

    /// Whether `data` is what comes next.
    fn matches(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let expected = self.next(data.len());
            let n = expected.len();
            if expected != &data[..n] {
                return false;
            }
            data = &data[n..];
        }
        true
    }
}

/// The bulk service in the host namespace. A request is a mode byte, a seed and a length (both
/// u64, little-endian). `D`: the server sends `len` bytes of the seed's stream. `U`: the server
/// reads `len` bytes, compares them with the seed's stream and answers 1 (intact) or 0. `F`: the
/// server sends the file it was started with.
pub(crate) struct BulkServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BulkServer {
    pub(crate) fn start(
        ns: &NetNs,
        port: u16,
        file: Option<std::path::PathBuf>,
    ) -> Result<BulkServer> {
        let listener = ns.run_in(|| std::net::TcpListener::bind(("::", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("bulk-{port}"))
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let file = file.clone();
                            std::thread::spawn(move || {
                                if let Err(e) = serve_bulk(stream, file.as_deref()) {
                                    eprintln!("bulk server: {e:#}");
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => {
                            eprintln!("bulk server: accept: {e}");
                            return;
                        }
                    }
                }
            })?;
        Ok(BulkServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_bulk(mut stream: TcpStream, file: Option<&Path>) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = [0u8; 17];
    stream.read_exact(&mut head)?;
    let seed = u64::from_le_bytes(head[1..9].try_into()?);
    let len = u64::from_le_bytes(head[9..17].try_into()?);
    match head[0] {
        b'D' => {
            let mut s = Stream::new(seed);
            let mut left = len;
            while left > 0 {
                let chunk = s.next(usize::try_from(left.min(Stream::BLOCK as u64))?);
                stream.write_all(chunk)?;
                left -= chunk.len() as u64;
            }
        }
        b'U' => {
            let mut s = Stream::new(seed);
            let mut left = len;
            let mut intact = true;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64))?;
                let n = stream.read(&mut buf[..want])?;
                if n == 0 {
                    bail!("upload ended {left} bytes early");
                }
                intact &= s.matches(&buf[..n]);
                left -= n as u64;
            }
            stream.write_all(&[u8::from(intact)])?;
        }
        b'F' => {
            let path = file.context("no file to serve")?;
            let mut f = std::fs::File::open(path)?;
            std::io::copy(&mut f, &mut stream)?;
        }
        other => bail!("unknown mode {other}"),
    }
    stream.flush()?;
    Ok(())
}

fn request(mode: u8, seed: u64, len: u64) -> [u8; 17] {
    let mut head = [0u8; 17];
    head[0] = mode;
    head[1..9].copy_from_slice(&seed.to_le_bytes());
    head[9..17].copy_from_slice(&len.to_le_bytes());
    head
}

fn bulk_connect(dst: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&dst, Duration::from_secs(10))
        .with_context(|| format!("connecting to {dst}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(stream)
}

/// Downloads `len` bytes of `seed`'s stream and checks them.
pub(crate) fn download(dst: SocketAddr, seed: u64, len: u64) -> Result<()> {
    let mut stream = bulk_connect(dst)?;
    stream.write_all(&request(b'D', seed, len))?;
    let mut expected = Stream::new(seed);
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ensure!(
            expected.matches(&buf[..n]),
            "download {seed}: corrupt data at byte {got}"
        );
        got += n as u64;
    }
    ensure!(got == len, "download {seed}: {got} of {len} bytes");
    Ok(())
}

/// Uploads `len` bytes of `seed`'s stream; the server checks them.
fn upload(dst: SocketAddr, seed: u64, len: u64) -> Result<()> {
    let mut stream = bulk_connect(dst)?;
    stream.write_all(&request(b'U', seed, len))?;
    let mut s = Stream::new(seed);
    let mut left = len;
    while left > 0 {
        let chunk = s.next(usize::try_from(left.min(Stream::BLOCK as u64))?);
        stream.write_all(chunk)?;
        left -= chunk.len() as u64;
    }
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict)?;
    ensure!(
        verdict[0] == 1,
        "upload {seed}: the server saw corrupt data"
    );
    Ok(())
}

/// `promtool check metrics` must find nothing to say about `text` (skipped without promtool).
fn promtool_check(text: &str) -> Result<()> {
    use std::process::Stdio;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool is not installed; the exposition format is not checked");
        return Ok(());
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum {} failed", path.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

// ---- scenarios ---------------------------------------------------------------------------------

#[test]
fn a_client_handshakes_and_reaches_what_its_role_allows() -> Result<()> {
    if !privileged::require("vpn::a_client_handshakes_and_reaches_what_its_role_allows") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 1)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let _service = TcpServer::start(&t.host, ALLOWED_TCP, "crm says hello\n")?;
    let _dba = TcpServer::start(&t.host, DBA_ONLY, "database\n")?;
    let client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;

    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), ALLOWED_TCP);
    match net::tcp_connect(&t.out, None, dst, Duration::from_secs(5))? {
        TcpOutcome::Connected { banner } => ensure!(banner == "crm says hello\n", "{banner:?}"),
        other => bail!("the allowed service at {dst}: {other:?}"),
    }

    // A service of another role is refused at once (a reset from the ACL), and counted.
    let before = metric(
        &agent,
        "crmguard_acl_denied_total",
        &[("role", "staff"), ("service", "tcp/5432")],
    )?;
    let forbidden = SocketAddr::new(IpAddr::V4(GATEWAY4), DBA_ONLY);
    let outcome = net::tcp_connect(&t.out, None, forbidden, Duration::from_secs(5))?;
    ensure!(
        outcome == TcpOutcome::Refused,
        "the dba-only service at {forbidden}: {outcome:?}"
    );
    wait_for(SETTLE, "the denial in crmguard_acl_denied_total", || {
        let now = metric(
            &agent,
            "crmguard_acl_denied_total",
            &[("role", "staff"), ("service", "tcp/5432")],
        )?;
        Ok((now >= before + 1.0).then_some(()))
    })?;

    // What `wg show` says on the gateway.
    let (public, port, peers) = gateway_dump(agent.vpn_interface())?;
    ensure!(
        public == gateway,
        "wg show: public key {public}, status {gateway}"
    );
    ensure!(port == WG_PORT, "wg show: listen port {port}");
    ensure!(peers.len() == 1, "wg show lists {} peers", peers.len());
    let peer = &peers[0];
    let client_port = client.listen_port()?;
    ensure!(peer.public_key == alice.keys.public, "{peer:?}");
    ensure!(
        peer.endpoint.as_deref() == Some(&format!("{}:{client_port}", t.addrs.out4)),
        "wg show: endpoint {:?}, the client is at {}:{client_port}",
        peer.endpoint,
        t.addrs.out4
    );
    ensure!(
        peer.allowed_ips == ["10.77.0.2/32", "fd77::2/128"],
        "wg show: allowed ips {:?}",
        peer.allowed_ips
    );
    ensure!(
        peer.latest_handshake > 0 && peer.rx_bytes > 0 && peer.tx_bytes > 0,
        "wg show: {peer:?}"
    );
    let human = wg::wg(&["show", agent.vpn_interface()], None)?;
    for needle in [
        format!("public key: {gateway}"),
        format!("peer: {}", alice.keys.public),
        "latest handshake:".to_owned(),
        "transfer:".to_owned(),
        "allowed ips: 10.77.0.2/32, fd77::2/128".to_owned(),
    ] {
        ensure!(
            human.contains(&needle),
            "`wg show` lacks {needle:?}:\n{human}"
        );
    }
    // `wg set` is refused: peers come from the configuration.
    ensure!(
        wg::wg(&["set", agent.vpn_interface(), "listen-port", "1"], None).is_err(),
        "`wg set` on crmguard's interface succeeded"
    );

    // The metrics.
    let text = agent.metrics()?;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    ensure!(
        value("crmguard_vpn_peers", &[("state", "configured")]) == Some(1.0)
            && value("crmguard_vpn_peers", &[("state", "connected")]) == Some(1.0),
        "crmguard_vpn_peers:\n{text}"
    );
    ensure!(
        value("crmguard_vpn_handshakes_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0,
        "no handshake counted:\n{text}"
    );
    ensure!(
        value("crmguard_vpn_rx_bytes_total", &[("peer", "alice")]).unwrap_or(0.0) > 0.0
            && value("crmguard_vpn_tx_bytes_total", &[("peer", "alice")]).unwrap_or(0.0) > 0.0,
        "no transfer counted:\n{text}"
    );
    ensure!(
        value(
            "crmguard_vpn_last_handshake_timestamp_seconds",
            &[("peer", "alice")]
        )
        .unwrap_or(0.0)
            > 1.6e9,
        "no handshake time:\n{text}"
    );
    ensure!(
        !text.contains(&t.addrs.out4.to_string()),
        "a metric label carries the client's address:\n{text}"
    );
    promtool_check(&text)?;
    // The XDP filter let the WireGuard datagrams through.
    ensure!(
        agent.counter(t.host_if.name(), "pass", "wireguard")? > 0,
        "no WireGuard datagram counted as passed by XDP"
    );
    Ok(())
}

#[test]
fn an_inner_source_of_another_peer_is_dropped_and_counted() -> Result<()> {
    if !privileged::require("vpn::an_inner_source_of_another_peer_is_dropped_and_counted") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 3)?;
    let (out2, _out2_if, host2_if, host2) = second_link(&t, 131, 3)?;
    let alice = PeerSpec::new("alice", 2)?;
    let bob = PeerSpec::new("bob", 3)?;
    let s = setup(&[&t.host_if, &host2_if], &[&alice, &bob])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let receiver = UdpReceiver::start(&t.host, ALLOWED_UDP)?;
    let alice_wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    let _bob_wg = bob.connect(&out2, &gateway, gateway_endpoint(host2))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    wait_reachable(&out2, IpAddr::V4(GATEWAY4))?;

    // Alice takes Bob's tunnel addresses too and sends from them through her own tunnel.
    alice_wg.add_addr(&t.out, &format!("{}/32", bob.v4()))?;
    alice_wg.add_addr(&t.out, &format!("{}/128", bob.v6()))?;
    let dropped_before = metric(
        &agent,
        "crmguard_vpn_dropped_total",
        &[("reason", "source_check")],
    )?;
    let service4 = SocketAddr::new(IpAddr::V4(GATEWAY4), ALLOWED_UDP);
    let service6 = SocketAddr::new(IpAddr::V6(GATEWAY6), ALLOWED_UDP);
    net::udp_send(&t.out, IpAddr::V4(bob.v4()), service4, 20, 100)?;
    net::udp_send(&t.out, IpAddr::V6(bob.v6()), service6, 10, 100)?;
    wait_for(SETTLE, "30 spoofed datagrams counted", || {
        let now = metric(
            &agent,
            "crmguard_vpn_dropped_total",
            &[("reason", "source_check")],
        )?;
        Ok((now >= dropped_before + 30.0).then_some(now))
    })?;
    ensure!(
        receiver.received() == 0,
        "{} spoofed datagrams reached the service",
        receiver.received()
    );

    // Each peer's own addresses pass.
    net::udp_send(&t.out, IpAddr::V4(alice.v4()), service4, 10, 100)?;
    net::udp_send(&out2, IpAddr::V4(bob.v4()), service4, 5, 100)?;
    wait_for(SETTLE, "15 genuine datagrams at the service", || {
        Ok((receiver.received() == 15).then_some(()))
    })?;
    let dropped = metric(
        &agent,
        "crmguard_vpn_dropped_total",
        &[("reason", "source_check")],
    )?;
    ensure!(
        dropped == dropped_before + 30.0,
        "source_check drops: {dropped_before} before, {dropped} after (30 spoofed)"
    );
    Ok(())
}

#[test]
fn a_roaming_client_keeps_its_session() -> Result<()> {
    if !privileged::require("vpn::a_roaming_client_keeps_its_session") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 5)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let (_, _, peers) = gateway_dump(agent.vpn_interface())?;
    let first = peers[0].clone();
    let old_port = client.listen_port()?;
    ensure!(
        first.endpoint.as_deref() == Some(&format!("{}:{old_port}", t.addrs.out4)),
        "{first:?}"
    );

    // The client moves: a new outside address (the old one is removed, so the kernel picks the
    // new one) and a new port.
    let new_addr = IpAddr::V4(Ipv4Addr::new(10, 131, 5, 3));
    t.out.sysctl(
        &format!("net/ipv4/conf/{}/promote_secondaries", t.out_if.name()),
        "1",
    )?;
    t.out_if.add_addr(&format!("{new_addr}/24"))?;
    t.out.ip(&[
        "addr",
        "del",
        &format!("{}/24", t.addrs.out4),
        "dev",
        t.out_if.name(),
    ])?;
    // The denied address of the topology would be promoted first; remove it too.
    t.out.ip(&[
        "addr",
        "del",
        &format!("{}/24", t.addrs.denied4),
        "dev",
        t.out_if.name(),
    ])?;
    let new_port = old_port.wrapping_add(1).max(1024);
    client.set_listen_port(new_port)?;

    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let moved = wait_for(SETTLE, "the gateway to follow the client", || {
        let (_, _, peers) = gateway_dump(agent.vpn_interface())?;
        let peer = peers[0].clone();
        Ok((peer.endpoint.as_deref() == Some(&format!("{new_addr}:{new_port}"))).then_some(peer))
    })?;
    // The same session: no new handshake was needed to follow the client.
    ensure!(
        moved.latest_handshake == first.latest_handshake,
        "the session was renewed instead of followed: {first:?} then {moved:?}"
    );
    let status = agent.status()?;
    ensure!(
        status["vpn"]["peers"][0]["endpoint"] == format!("{new_addr}:{new_port}"),
        "status: {}",
        status["vpn"]
    );
    Ok(())
}

#[test]
fn bulk_and_parallel_transfers_arrive_intact() -> Result<()> {
    if !privileged::require("vpn::bulk_and_parallel_transfers_arrive_intact") {
        return Ok(());
    }
    const BULK_BYTES: u64 = 100 << 20;
    const FLOWS: u64 = 50;
    const FLOW_BYTES: u64 = 1 << 20;
    let t = Topology::dual_stack(131, 7)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let _client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    // 100 MB from the gateway to the client, checked by SHA-256.
    let files = tempfile::tempdir()?;
    let source = files.path().join("source.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&source)?);
        let mut s = Stream::new(0x5eed);
        let mut left = BULK_BYTES;
        while left > 0 {
            let chunk = s.next(usize::try_from(left.min(Stream::BLOCK as u64))?);
            f.write_all(chunk)?;
            left -= chunk.len() as u64;
        }
    }
    let _server = BulkServer::start(&t.host, BULK, Some(source.clone()))?;
    let received = files.path().join("received.bin");
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), BULK);
    let started = Instant::now();
    t.out.run_in(|| -> Result<()> {
        let mut stream = bulk_connect(dst)?;
        stream.write_all(&request(b'F', 0, 0))?;
        let mut out = std::fs::File::create(&received)?;
        std::io::copy(&mut stream, &mut out)?;
        Ok(())
    })??;
    let elapsed = started.elapsed();
    ensure!(
        std::fs::metadata(&received)?.len() == BULK_BYTES,
        "received {} of {BULK_BYTES} bytes",
        std::fs::metadata(&received)?.len()
    );
    ensure!(
        sha256(&received)? == sha256(&source)?,
        "the 100 MB transfer arrived corrupted"
    );
    eprintln!(
        "100 MB through the tunnel in {elapsed:?} ({:.0} Mbit/s)",
        BULK_BYTES as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );

    // 50 flows at once, half uploads and half downloads, each checked byte for byte.
    let results: Vec<Result<()>> = t.out.run_in(|| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..FLOWS)
                .map(|i| {
                    scope.spawn(move || {
                        if i % 2 == 0 {
                            upload(dst, 1000 + i, FLOW_BYTES)
                        } else {
                            download(dst, 1000 + i, FLOW_BYTES)
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("flow panicked")))
                })
                .collect()
        })
    })?;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {FLOWS} flows failed: {failed:?}",
        failed.len()
    );
    Ok(())
}

#[test]
fn ipv6_inside_and_outside_the_tunnel() -> Result<()> {
    if !privileged::require("vpn::ipv6_inside_and_outside_the_tunnel") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 9)?;
    t.pin_neighbours()?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let _service = TcpServer::start(&t.host, ALLOWED_TCP, "six\n")?;
    // The outside is IPv6 only for this client.
    let _client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host6))?;

    for inner in [IpAddr::V6(GATEWAY6), IpAddr::V4(GATEWAY4)] {
        wait_reachable(&t.out, inner)?;
        let dst = SocketAddr::new(inner, ALLOWED_TCP);
        match net::tcp_connect(&t.out, None, dst, Duration::from_secs(5))? {
            TcpOutcome::Connected { banner } => ensure!(banner == "six\n", "{banner:?}"),
            other => bail!("{dst} over an IPv6 outside: {other:?}"),
        }
    }
    let forbidden = SocketAddr::new(IpAddr::V6(GATEWAY6), DBA_ONLY);
    let outcome = net::tcp_connect(&t.out, None, forbidden, Duration::from_secs(5))?;
    ensure!(outcome == TcpOutcome::Refused, "{forbidden}: {outcome:?}");
    let (_, _, peers) = gateway_dump(agent.vpn_interface())?;
    let endpoint: SocketAddr = peers[0]
        .endpoint
        .as_deref()
        .context("the gateway knows no endpoint")?
        .parse()?;
    // The kernel picks either of the outside interface's IPv6 addresses as the source.
    ensure!(
        [t.addrs.out6, t.addrs.denied6].contains(&endpoint.ip()),
        "the gateway sees the client at {endpoint}, not at one of its IPv6 addresses"
    );
    Ok(())
}

#[test]
fn traffic_resumes_within_2s_after_kill_9() -> Result<()> {
    if !privileged::require("vpn::traffic_resumes_within_2s_after_kill_9") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 11)?;
    let alice = PeerSpec::new("alice", 2)?;
    let s = setup(&[&t.host_if], &[&alice])?;
    let mut agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let _service = TcpServer::start(&t.host, ALLOWED_TCP, "back\n")?;
    let _client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    // The endpoint is remembered on disk within a second of the handshake.
    let state = agent.dir().join("state").join("vpn-endpoints.json");
    wait_for(SETTLE, "the remembered endpoint", || {
        Ok(std::fs::read_to_string(&state)
            .map(|text| text.contains(&alice.keys.public))
            .unwrap_or(false)
            .then_some(()))
    })?;

    agent.kill9()?;
    ensure!(
        !ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_millis(500))?,
        "the gateway answered with no agent running"
    );
    agent.spawn()?;
    agent.wait_ready()?;
    let ready = Instant::now();
    // The new agent starts the handshake itself; the client does nothing special.
    wait_for(
        Duration::from_secs(2),
        "traffic through the tunnel again",
        || Ok(ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_millis(300))?.then_some(())),
    )?;
    eprintln!(
        "traffic resumed {:?} after the agent was ready",
        ready.elapsed()
    );
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), ALLOWED_TCP);
    match net::tcp_connect(&t.out, None, dst, Duration::from_secs(5))? {
        TcpOutcome::Connected { banner } => ensure!(banner == "back\n", "{banner:?}"),
        other => bail!("{dst} after the restart: {other:?}"),
    }
    Ok(())
}

#[test]
fn a_removed_peer_is_cut_within_1s() -> Result<()> {
    if !privileged::require("vpn::a_removed_peer_is_cut_within_1s") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 13)?;
    let (out2, _out2_if, host2_if, host2) = second_link(&t, 131, 13)?;
    let alice = PeerSpec::new("alice", 2)?;
    let bob = PeerSpec::new("bob", 3)?;
    let s = setup(&[&t.host_if, &host2_if], &[&alice, &bob])?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let _alice_wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    let _bob_wg = bob.connect(&out2, &gateway, gateway_endpoint(host2))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    wait_reachable(&out2, IpAddr::V4(GATEWAY4))?;
    // Bob keeps pinging, so his session is in use when he is removed.
    let mut pinger = Command::new("ping");
    pinger.args(["-n", "-i", "0.05", &GATEWAY4.to_string()]);
    let log_dir = tempfile::tempdir()?;
    let _bob_ping = process::Process::spawn(&out2, pinger, log_dir.path(), "bob-ping")?;

    let config = std::fs::read_to_string(agent.config_path())?;
    let without_bob = config.replace(&bob.toml(), "");
    ensure!(
        without_bob != config,
        "bob's peer entry not found in the config"
    );
    std::fs::write(agent.config_path(), without_bob)?;
    let out = agent.cli(&["reload"])?;
    ensure!(
        out.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloaded = Instant::now();
    // Within a second Bob gets nothing through; three probes in a row must fail.
    let cut = wait_for(Duration::from_secs(1), "bob to be cut", || {
        Ok((!ping(&out2, IpAddr::V4(GATEWAY4), Duration::from_millis(200))?).then_some(()))
    });
    cut?;
    for _ in 0..3 {
        ensure!(
            !ping(&out2, IpAddr::V4(GATEWAY4), Duration::from_millis(300))?,
            "bob still reaches the gateway {:?} after the reload",
            reloaded.elapsed()
        );
    }
    // Alice's session was not disturbed.
    ensure!(
        ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_secs(1))?,
        "alice lost the gateway when bob was removed"
    );
    let (_, _, peers) = gateway_dump(agent.vpn_interface())?;
    ensure!(
        peers.len() == 1 && peers[0].public_key == alice.keys.public,
        "wg show after the removal: {peers:?}"
    );
    Ok(())
}

#[test]
fn a_handshake_flood_gets_cookie_replies_at_its_real_source() -> Result<()> {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    if !privileged::require("vpn::a_handshake_flood_gets_cookie_replies_at_its_real_source") {
        return Ok(());
    }
    // At most this many initiations, sent in rounds until the first cookie reply arrives.
    const FLOOD: u64 = 20_000;
    const ROUND: u64 = 64;
    let t = Topology::dual_stack(131, 15)?;
    let alice = PeerSpec::new("alice", 2)?;
    // XDP's per-source handshake limit is lifted so that the flood reaches the endpoint, and
    // the endpoint goes to cookies after 20 handshakes a second, which a debug build on a busy
    // machine reaches as surely as a release build does 500.
    let s = setup_with(
        &[&t.host_if],
        &[&alice],
        "handshake_per_source_pps = 1000000\nhandshake_burst = 1000000\n\
         handshakes_before_cookies = 20\n",
    )?;
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let gateway_bytes =
        crmguard_core::keys::decode(&gateway).context("the gateway's key is not base64")?;
    let dst = gateway_endpoint(t.addrs.host4);

    // Someone who knows the gateway's public key (no secret) but is no peer: initiations with
    // a valid MAC, sent as fast as possible, from one real address.
    let (sent, cookies) = t.out.run_in(|| -> Result<(u64, u64)> {
        let sock = std::net::UdpSocket::bind((t.addrs.out4, 0))?;
        let secret = StaticSecret::from(genkey_bytes()?);
        let mut tunn = Tunn::new(secret, PublicKey::from(gateway_bytes), None, None, 1, None);
        let mut buf = [0u8; 256];
        let init = match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            other => bail!("no initiation: {other:?}"),
        };
        // The burst is sent in rounds, each followed by a short read, so that the kernel's
        // receive queues (a veth ring holds 256 frames) do not drop most of it before the
        // endpoint counts it: the endpoint must see more than its handshake budget a second.
        let deadline = Instant::now() + Duration::from_secs(10);
        sock.set_read_timeout(Some(Duration::from_millis(2)))?;
        let mut sent = 0;
        let mut cookies = 0;
        let mut reply = [0u8; 256];
        while sent < FLOOD && Instant::now() < deadline {
            for _ in 0..ROUND {
                sock.send_to(&init, dst)?;
            }
            sent += ROUND;
            while let Ok((n, from)) = sock.recv_from(&mut reply) {
                if from == dst && n == 64 && reply[0] == 3 {
                    cookies += 1;
                }
            }
            if cookies > 0 {
                break;
            }
        }
        // Replies still in flight.
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        while let Ok((n, from)) = sock.recv_from(&mut reply) {
            if from == dst && n == 64 && reply[0] == 3 {
                cookies += 1;
            }
        }
        Ok((sent, cookies))
    })??;
    eprintln!("{sent} initiations, {cookies} cookie replies");
    ensure!(
        cookies > 0,
        "{sent} initiations in a burst got no cookie reply"
    );
    let text = agent.metrics()?;
    let counted = metric_value(
        &text,
        "crmguard_vpn_handshakes_total",
        &[("result", "cookie")],
    )
    .unwrap_or(0.0);
    let rejected = metric_value(
        &text,
        "crmguard_vpn_handshakes_total",
        &[("result", "rejected")],
    )
    .unwrap_or(0.0);
    ensure!(
        counted >= cookies as f64 && rejected > 0.0 && counted + rejected <= sent as f64,
        "{cookies} cookies received; the agent counts {counted} cookies, {rejected} rejected"
    );

    // A genuine client still gets in, once the endpoint has worked through what the flood
    // left in its socket (its handshake counters stand still for a second).
    let handled = |text: &str| {
        ["cookie", "rejected"]
            .iter()
            .map(|r| {
                metric_value(text, "crmguard_vpn_handshakes_total", &[("result", r)]).unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let mut last = handled(&agent.metrics()?);
    let mut still_since = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the flood's backlog to be handled",
        || {
            let now = handled(&agent.metrics()?);
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            Ok((still_since.elapsed() >= Duration::from_secs(1)).then_some(()))
        },
    )?;
    let _client = alice.connect(&t.out, &gateway, dst)?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    Ok(())
}

/// 32 random bytes for a private key.
pub(crate) fn genkey_bytes() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

/// The three-letter name of a weekday (0 = Monday), as `hours` spells it.
fn day_name(weekday: u8) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][usize::from(weekday % 7)]
}

#[test]
fn a_role_outside_its_hours_is_refused() -> Result<()> {
    if !privileged::require("vpn::a_role_outside_its_hours_is_refused") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 9)?;
    let (out2, _out2_if, host2_if, host2) = second_link(&t, 131, 9)?;
    let day = PeerSpec::new("dayshift-laptop", 2)?;
    let night = PeerSpec::new("nightshift-laptop", 3)?;
    // Today, all day, for one role; three days away, all day, for the other: the agent reads
    // the same local time as this test, and no run is near enough to midnight for either
    // window to change while the test runs.
    let today = crmguard_core::acl::LocalTime::now()?.weekday;
    let roles = format!(
        r#"
[[role]]
name = "dayshift"
allow = ["tcp/{ALLOWED_TCP}"]
hours = "{today} 00:00-24:00"

[[role]]
name = "nightshift"
allow = ["tcp/{ALLOWED_TCP}"]
hours = "{other} 00:00-24:00"
"#,
        today = day_name(today),
        other = day_name(today + 3),
    );
    let mut s = setup_with(&[&t.host_if, &host2_if], &[&day, &night], &roles)?;
    s.body = s
        .body
        .replace(
            &format!("name = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\naddress6 = \"{}\"\nrole = \"staff\"", day.name, day.keys.public, day.v4(), day.v6()),
            &format!("name = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\naddress6 = \"{}\"\nrole = \"dayshift\"", day.name, day.keys.public, day.v4(), day.v6()),
        )
        .replace(
            &format!("name = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\naddress6 = \"{}\"\nrole = \"staff\"", night.name, night.keys.public, night.v4(), night.v6()),
            &format!("name = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\naddress6 = \"{}\"\nrole = \"nightshift\"", night.name, night.keys.public, night.v4(), night.v6()),
        );
    ensure!(
        s.body.contains("role = \"dayshift\"") && s.body.contains("role = \"nightshift\""),
        "both peers were given their roles"
    );
    let agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let _service = TcpServer::start(&t.host, ALLOWED_TCP, "crm says hello\n")?;
    let _day_wg = day.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    let _night_wg = night.connect(&out2, &gateway, gateway_endpoint(host2))?;
    // Echo to the gateway is allowed at any hour, so both tunnels can be seen to be up.
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    wait_reachable(&out2, IpAddr::V4(GATEWAY4))?;

    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), ALLOWED_TCP);
    match net::tcp_connect(&t.out, None, dst, Duration::from_secs(5))? {
        TcpOutcome::Connected { banner } => ensure!(banner == "crm says hello\n", "{banner:?}"),
        other => bail!("inside its hours, the dayshift peer got {other:?}"),
    }
    let labels = [("role", "nightshift"), ("service", "tcp/8080")];
    let before = metric(&agent, "crmguard_acl_denied_total", &labels)?;
    let outcome = net::tcp_connect(&out2, None, dst, Duration::from_secs(5))?;
    ensure!(
        outcome == TcpOutcome::Refused,
        "outside its hours, the nightshift peer got {outcome:?}"
    );
    wait_for(SETTLE, "the denial in crmguard_acl_denied_total", || {
        let now = metric(&agent, "crmguard_acl_denied_total", &labels)?;
        Ok((now >= before + 1.0).then_some(()))
    })?;
    Ok(())
}

/// How many times the sysadmin's restart scenario is run.
const RESTART_ROUNDS: usize = 20;

#[test]
fn sessions_come_back_within_2s_after_every_kill_9() -> Result<()> {
    if !privileged::require("vpn::sessions_come_back_within_2s_after_every_kill_9") {
        return Ok(());
    }
    let t = Topology::dual_stack(131, 16)?;
    let (carol_ns, _carol_if, _carol_host_if, carol_gateway) = second_link(&t, 131, 16)?;
    let alice = PeerSpec::new("alice", 2)?;
    let carol = PeerSpec::new("carol", 3)?;
    let s = setup(&[&t.host_if], &[&alice, &carol])?;
    let mut agent = start_agent(&t.host, &s)?;
    let gateway = gateway_key(&agent)?;
    let endpoint = gateway_endpoint(t.addrs.host4);
    let state = agent.dir().join("state").join("vpn-endpoints.json");
    let mut took = Vec::new();
    for round in 0..RESTART_ROUNDS {
        // Alice connects with a keepalive; her client is deleted and made again, so it
        // comes back from a new source port.
        let first = alice.connect(&t.out, &gateway, endpoint)?;
        first.set_keepalive(&gateway, 5)?;
        wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
        drop(first);
        let client = alice.connect(&t.out, &gateway, endpoint)?;
        client.set_keepalive(&gateway, 5)?;
        wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
        let port = client.listen_port()?;
        // Carol connects from elsewhere and goes away.
        let carols = carol.connect(&carol_ns, &gateway, gateway_endpoint(carol_gateway))?;
        wait_reachable(&carol_ns, IpAddr::V4(GATEWAY4))?;
        drop(carols);
        // Alice's new port is remembered.
        wait_for(SETTLE, "alice's new endpoint on disk", || {
            Ok(std::fs::read_to_string(&state)
                .map(|text| text.contains(&format!(":{port}\"")))
                .unwrap_or(false)
                .then_some(()))
        })?;
        agent.kill9()?;
        agent.spawn()?;
        agent.wait_ready()?;
        let ready = Instant::now();
        wait_for(Duration::from_secs(20), "alice's traffic again", || {
            Ok(ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_millis(200))?.then_some(()))
        })?;
        took.push(ready.elapsed());
        eprintln!(
            "round {round}: alice's traffic back {:?} after the agent was ready",
            ready.elapsed()
        );
        drop(client);
    }
    let slow: Vec<_> = took
        .iter()
        .filter(|d| **d > Duration::from_secs(2))
        .collect();
    ensure!(slow.is_empty(), "recovery took longer than 2 s: {took:?}");
    Ok(())
}
