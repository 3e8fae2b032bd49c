//! The lockout guard over a real SSH session: an administrator logged in with OpenSSH (key
//! authentication) runs `crmguard check` and `crmguard reload --confirm`; both warn when the
//! policy would drop the very connection they run in (sshd's `SSH_CONNECTION`), and stay quiet
//! for a policy that keeps it. The change that locks the administrator out really does (a new
//! SSH connection times out), and its rollback lets them in again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::{self, Agent};
use crmguard_lab::privileged;
use crmguard_lab::process;
use crmguard_lab::servers::Sshd;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

use crate::traffic;

const SSH: u16 = 22;
/// A network the administrator is not in.
const ELSEWHERE: &str = "192.0.2.0/24";
/// How long the locking change waits for a confirmation that never comes.
const CONFIRM: &str = "10s";
/// The text of the warning (core/src/explain/lockout.rs).
const WARNING: &str = "this policy drops the SSH connection this command runs in";

fn policy(t: &Topology, ssh_from: &str) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [{SSH}]
from = ["{ssh_from}"]
"#,
        iface = t.host_if.name(),
    )
}

/// The administrator's side: a key pair and the client.
struct Admin<'t> {
    t: &'t Topology,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl<'t> Admin<'t> {
    fn new(t: &'t Topology) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "ed25519", "-f"])
            .arg(&key)
            .output()
            .context("ssh-keygen (apt-get install openssh-client)")?;
        ensure!(out.status.success(), "ssh-keygen: {out:?}");
        Ok(Admin { t, key, _dir: dir })
    }

    fn authorized_keys(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    /// Runs `remote` over a new SSH connection from the outside to the host.
    fn ssh(&self, remote: &str) -> Result<Output> {
        let mut cmd = Command::new("timeout");
        cmd.arg("60")
            .arg("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-b", &self.t.addrs.out4.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=3",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &SSH.to_string(),
            ])
            .arg(format!("root@{}", self.t.addrs.host4))
            .arg(remote);
        process::output_in(&self.t.out, cmd)
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn crmguard(config: &Path, args: &str) -> Result<String> {
    Ok(format!(
        "{} --config {} {args}",
        agent::binary()?.display(),
        config.display()
    ))
}

#[test]
fn check_and_reload_warn_in_an_ssh_session_the_policy_would_drop() -> Result<()> {
    if !privileged::require(
        "lockout::check_and_reload_warn_in_an_ssh_session_the_policy_would_drop",
    ) {
        return Ok(());
    }
    privileged::require_tools(&[("ssh", "openssh-client"), ("sshd", "openssh-server")])?;
    let t = Topology::ipv4_only(211, 1)?;
    let admin = Admin::new(&t)?;
    let _sshd = Sshd::start_for_admin(&t.host, t.addrs.host4, SSH, &admin.authorized_keys())?;
    let keeps = policy(&t, &format!("{}/32", t.addrs.out4));
    let drops = policy(&t, ELSEWHERE);
    let agent = Agent::start(&t.host, &keeps)?;
    let keeps_file = agent.config_path().to_path_buf();
    let drops_file = agent.dir().join("drops.toml");
    std::fs::write(&drops_file, traffic::config_with_body(&agent, &drops)?)?;

    // `check` in the session: the policy that drops it is flagged, naming the client.
    let out = admin.ssh(&crmguard(&drops_file, "check")?)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success()
            && stderr.contains(WARNING)
            && stderr.contains(&format!("({} to tcp/{SSH})", t.addrs.out4)),
        "check of a policy that drops the session: {}",
        text(&out)
    );
    let out = admin.ssh(&crmguard(&keeps_file, "check")?)?;
    ensure!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "check of a policy that keeps the session: {}",
        text(&out)
    );

    // `reload --confirm` of the dropping policy warns the same way, and locks the door.
    traffic::replace_config(&agent, &traffic::config_with_body(&agent, &drops)?)?;
    let out = admin.ssh(&crmguard(
        &keeps_file,
        &format!("reload --confirm {CONFIRM}"),
    )?)?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(WARNING),
        "reload --confirm of a policy that drops the session: {}",
        text(&out)
    );
    ensure!(
        agent.status()?["pending_change"].is_object(),
        "the change is not pending"
    );
    let locked_out = admin.ssh("true")?;
    let still_pending = agent.status()?["pending_change"].is_object();
    ensure!(
        still_pending,
        "the change was rolled back before the lockout could be tried; raise CONFIRM"
    );
    ensure!(
        !locked_out.status.success(),
        "a new SSH connection got in under a policy that drops it: {}",
        text(&locked_out)
    );

    // Nobody confirms: the rollback lets the administrator in again.
    wait_for(Duration::from_secs(30), "the rollback", || {
        Ok(agent.status()?["pending_change"].is_null().then_some(()))
    })?;
    let back = admin.ssh("true")?;
    ensure!(
        back.status.success(),
        "no SSH after the rollback: {}",
        text(&back)
    );

    // A reload of the policy that keeps the session says nothing.
    traffic::replace_config(&agent, &traffic::config_with_body(&agent, &keeps)?)?;
    let out = admin.ssh(&crmguard(&keeps_file, "reload")?)?;
    ensure!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "reload of a policy that keeps the session: {}",
        text(&out)
    );
    Ok(())
}
