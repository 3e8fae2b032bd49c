//! Descriptor exhaustion: a running agent held by thousands of idle and slowly trickling
//! connections to its control socket and its `/metrics` endpoint keeps answering its
//! administrator and its monitoring, keeps writing its audit log, and gives its descriptors
//! back once the connections are gone.
//!
//! Each listener bounds what it serves at once and cuts every connection off at its deadline;
//! a newcomer takes the slot of the oldest connection that has not sent its request, so the
//! administrator's command and the scrape, which send theirs at once, do not wait for the
//! held connections to end. The MFA portal, reachable only through the tunnel, is not flooded
//! here: it shares the accept loop, and its bounds are the portal tests' business.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

/// The window over which the agent, out of descriptors and asked nothing, must stay idle.
const QUIET_WINDOW: Duration = Duration::from_secs(2);
/// Connections held to the control socket: its 256 slots and a queue behind them that fits
/// in the socket's backlog, so that the command line's connection queues rather than blocks.
const CONTROL: usize = 300;
/// Connections held to `/metrics`.
const METRICS: usize = 4700;
/// How long a command or a scrape may take while the connections are held: it takes the slot
/// of an idle connection at once, but the machine is shared.
const ANSWER: Duration = Duration::from_secs(40);
/// How long the agent may take to close the connections' descriptors once they are gone.
const RELEASE: Duration = Duration::from_secs(30);
/// Descriptors above the baseline still tolerated after the connections are gone (a
/// connection being accepted as the count is taken, a map reopened by the reconcile).
const SLACK: usize = 8;
/// Connections opened to the control socket of an agent whose descriptors are lowered.
const EXHAUST: usize = 200;
/// Pause between two trickled bytes.
const TRICKLE_EVERY: Duration = Duration::from_millis(500);

fn policy(t: &Topology) -> String {
    format!(
        "[[interface]]\nname = \"{}\"\nxdp_mode = \"native\"\n\n[firewall]\ndefault = \"drop\"\n",
        t.host_if.name()
    )
}

pub(crate) fn open_descriptors(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// A connection held open, and the bytes it trickles (empty for an idle one).
struct Held<S> {
    stream: S,
    trickle: &'static [u8],
    sent: usize,
}

/// Sends the next byte of every trickling connection each [`TRICKLE_EVERY`] until told to
/// stop (or until the agent closed them all), then returns the connections.
fn trickle<S: Write + Send + 'static>(
    mut held: Vec<Held<S>>,
    stop: mpsc::Receiver<()>,
    rounds: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<Held<S>>> {
    std::thread::spawn(move || {
        // Waiting on the stop channel paces the bytes.
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(TRICKLE_EVERY) {
            rounds.fetch_add(1, Ordering::Relaxed);
            for h in held.iter_mut().filter(|h| !h.trickle.is_empty()) {
                let byte = h.trickle[h.sent % h.trickle.len()];
                if h.stream.write_all(&[byte]).is_ok() {
                    h.sent += 1;
                }
            }
        }
        held
    })
}

/// Raises this process's soft limit on open files, which the held connections exceed.
pub(crate) fn raise_own_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// Runs `what` and returns its output and how long it took.
fn timed<T>(what: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = what()?;
    Ok((value, started.elapsed()))
}

#[test]
fn thousands_of_held_connections_leave_the_agent_answering() -> Result<()> {
    if !privileged::require("limits_fds::thousands_of_held_connections_leave_the_agent_answering") {
        return Ok(());
    }
    raise_own_limit()?;
    let t = Topology::ipv4_only(191, 1)?;
    let agent = Agent::start(&t.host, &policy(&t))?;
    let pid = agent.pid().context("the agent's pid")?;
    let baseline = open_descriptors(pid)?;

    // /metrics first, in the agent's namespace: half idle, half trickling headers without end.
    // Opening them takes a while; the control socket's connections, opened next, are all held
    // when the commands run.
    let addr = agent.metrics_addr();
    let metrics = t.host.run_in(|| -> Result<Vec<Held<TcpStream>>> {
        let mut held = Vec::with_capacity(METRICS);
        for i in 0..METRICS {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .with_context(|| format!("metrics connection {i}"))?;
            let trickle: &[u8] = if i % 2 == 0 {
                b""
            } else {
                b"GET /metrics HTTP/1.1\r\nX-Slow: yes\r\n"
            };
            held.push(Held {
                stream,
                trickle,
                sent: 0,
            });
        }
        Ok(held)
    })??;
    // The control socket: half idle, half trickling a request line that never ends.
    let socket = agent.dir().join("control.sock");
    let mut control = Vec::with_capacity(CONTROL);
    for i in 0..CONTROL {
        let stream =
            UnixStream::connect(&socket).with_context(|| format!("control connection {i}"))?;
        let trickle: &[u8] = if i % 2 == 0 {
            b""
        } else {
            b"{\"cmd\":\"status\""
        };
        control.push(Held {
            stream,
            trickle,
            sent: 0,
        });
    }
    let opened = control.len() + metrics.len();
    let (stop_control, control_stop) = mpsc::channel();
    let (stop_metrics, metrics_stop) = mpsc::channel();
    let rounds = Arc::new(AtomicUsize::new(0));
    let control = trickle(control, control_stop, Arc::clone(&rounds));
    let metrics = trickle(metrics, metrics_stop, Arc::clone(&rounds));
    // Both threads have trickled twice: the slow clients are slow clients, not idle ones.
    wait_for(ANSWER, "two rounds of trickled bytes", || {
        Ok((rounds.load(Ordering::Relaxed) >= 4).then_some(()))
    })?;
    let held_descriptors = open_descriptors(pid)?;

    // While they are held: the administrator's commands, a scrape, the audit log.
    let (_, status_took) = timed(|| {
        wait_for(
            ANSWER,
            "`crmguard status` while connections are held",
            || {
                let out = agent.cli(&["status", "--json"])?;
                Ok(out.status.success().then_some(()))
            },
        )
    })?;
    let banned = t.addrs.denied4.to_string();
    let (add, add_took) =
        timed(|| agent.cli(&["ban", "add", &banned, "--ttl", "1h", "--reason", "fds test"]))?;
    ensure!(add.status.success(), "ban add: {add:?}");
    let (remove, remove_took) = timed(|| agent.cli(&["ban", "remove", &banned]))?;
    ensure!(remove.status.success(), "ban remove: {remove:?}");
    let (scrape, scrape_took) = timed(|| {
        wait_for(
            ANSWER,
            "a /metrics scrape while connections are held",
            || Ok(agent.metrics().ok()),
        )
    })?;
    ensure!(
        scrape.contains("crmguard_bans_total{reason=\"manual\"} 1"),
        "the scrape counts the ban:\n{scrape}"
    );
    let log = std::fs::read_to_string(agent.dir().join("audit.jsonl"))
        .context("reading the audit log")?;
    for kind in ["\"type\":\"ban_added\"", "\"type\":\"ban_removed\""] {
        ensure!(log.contains(kind), "no {kind} record in\n{log}");
    }
    let peak = open_descriptors(pid)?.max(held_descriptors);

    // Closed: the descriptors come back.
    stop_control.send(()).ok();
    stop_metrics.send(()).ok();
    let control = control
        .join()
        .map_err(|_| anyhow::anyhow!("the trickle thread"))?;
    let metrics = metrics
        .join()
        .map_err(|_| anyhow::anyhow!("the trickle thread"))?;
    let trickled: usize = control.iter().map(|h| h.sent).sum::<usize>()
        + metrics.iter().map(|h| h.sent).sum::<usize>();
    drop((control, metrics));
    let released = Instant::now();
    let after = wait_for(
        RELEASE,
        "the agent's descriptors back near the baseline",
        || {
            let now = open_descriptors(pid)?;
            Ok((now <= baseline + SLACK).then_some(now))
        },
    )?;
    eprintln!(
        "limits_fds: {opened} connections held ({CONTROL} control, {METRICS} metrics, \
         {trickled} bytes trickled); agent descriptors: baseline {baseline}, held {held_descriptors}, \
         peak {peak}, after {after} ({:?} after closing); status {status_took:?}, ban add \
         {add_took:?}, ban remove {remove_took:?}, scrape {scrape_took:?}",
        released.elapsed()
    );
    // The bounds hold: 256 control slots, 16 metrics slots, and a few in flight.
    ensure!(
        peak <= baseline + 256 + 16 + 32,
        "the agent held {peak} descriptors (baseline {baseline})"
    );
    Ok(())
}

/// The agent's CPU time so far (user and system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("a stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("utime and stime")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100);
    Ok(Duration::from_millis(ticks * 1000 / per_second))
}

/// Sets the agent's limit on open files with `prlimit`.
fn set_nofile(pid: u32, soft: u64, hard: u64) -> Result<()> {
    let out = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .output()
        .context("running prlimit")?;
    ensure!(out.status.success(), "prlimit: {out:?}");
    Ok(())
}

/// An agent out of descriptors neither spins nor stops: it closes what it cannot serve (the
/// reserve descriptor), answers again as descriptors come back, and its audit chain stays
/// whole although a checkpoint may not have been written meanwhile.
#[test]
fn an_agent_out_of_descriptors_sheds_connections_and_recovers() -> Result<()> {
    if !privileged::require(
        "limits_fds::an_agent_out_of_descriptors_sheds_connections_and_recovers",
    ) {
        return Ok(());
    }
    privileged::require_tools(&[("prlimit", "util-linux")])?;
    raise_own_limit()?;
    let t = Topology::ipv4_only(192, 1)?;
    let mut agent = Agent::start(&t.host, &policy(&t))?;
    let pid = agent.pid().context("the agent's pid")?;
    let baseline = open_descriptors(pid)?;
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    // Room for a dozen connections, then none.
    let lowered = u64::try_from(baseline + 12)?;
    set_nofile(pid, lowered, hard)?;

    let socket = agent.dir().join("control.sock");
    let cpu_before = cpu_time(pid)?;
    let flooded = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..EXHAUST {
        match UnixStream::connect(&socket) {
            Ok(stream) => held.push(stream),
            Err(_) => refused += 1,
        }
    }
    // The descriptors are exhausted while the first connections are held: the agent answers
    // once their deadline frees them, though its accept keeps failing for the rest.
    let (_, status_took) = timed(|| {
        wait_for(
            ANSWER,
            "`crmguard status` with descriptors exhausted",
            || {
                let out = agent.cli(&["status", "--json"])?;
                Ok(out.status.success().then_some(()))
            },
        )
    })?;
    let banned = t.addrs.denied4.to_string();
    let (_, add_took) = timed(|| {
        wait_for(ANSWER, "`crmguard ban add` with descriptors short", || {
            let out = agent.cli(&["ban", "add", &banned, "--reason", "fds test"])?;
            Ok(out.status.success().then_some(()))
        })
    })?;
    // A spinning accept loop would take a whole core while the descriptors stay exhausted: the
    // agent's CPU over a window with the connections still held and nothing asked of it. (The
    // commands above cost real work, tens of milliseconds, which a short window would count.)
    let quiet_cpu_before = cpu_time(pid)?;
    let quiet_began = Instant::now();
    std::thread::sleep(QUIET_WINDOW);
    let quiet_cpu = cpu_time(pid)?.saturating_sub(quiet_cpu_before);
    let quiet = quiet_began.elapsed();
    let elapsed = flooded.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    drop(held);
    set_nofile(pid, hard, hard)?;
    let after = wait_for(
        RELEASE,
        "the agent's descriptors back near the baseline",
        || {
            let now = open_descriptors(pid)?;
            Ok((now <= baseline + SLACK).then_some(now))
        },
    )?;
    let out = agent.cli(&["ban", "remove", &banned])?;
    ensure!(out.status.success(), "ban remove: {out:?}");
    agent.stop()?;

    let stderr = std::fs::read_to_string(agent.dir().join("crmguard-run-1.stderr"))?;
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("out of file descriptors") || l.contains("cannot accept"))
        .count();
    eprintln!(
        "limits_fds: limit {lowered} (baseline {baseline}); {} connections held, {refused} \
         refused at connect; status {status_took:?}, ban add {add_took:?}; agent CPU {cpu:?} \
         in {elapsed:?}, {quiet_cpu:?} in the quiet {quiet:?}; {warnings} accept warnings; \
         descriptors after {after}",
        EXHAUST - refused
    );
    ensure!(
        warnings > 0,
        "the agent said nothing about its failing accepts"
    );
    // At most one line a second per listener, and a few more for the second boundaries.
    let seconds = usize::try_from(elapsed.as_secs())?;
    ensure!(
        warnings <= seconds + 2,
        "{warnings} accept warnings in {elapsed:?}"
    );
    ensure!(
        quiet_cpu < quiet / 4,
        "the agent used {quiet_cpu:?} of CPU in {quiet:?} with nothing to do but failing accepts"
    );
    let path = agent.dir().join("audit.jsonl");
    let verify = agent.cli(&["audit", "verify", &path.to_string_lossy()])?;
    ensure!(verify.status.success(), "audit verify: {verify:?}");
    Ok(())
}
