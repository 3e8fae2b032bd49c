//! Backups of the gateway's own state, with the real binary: an archive taken from a working
//! gateway and restored onto an emptied host brings the gateway back (old peers connect with
//! their old keys, an enrolled authenticator still opens sessions, bans are back in the
//! kernel); edited, truncated, foreign and wrongly keyed archives are refused by name; and the
//! agent's schedule writes, prunes, drills, audits and measures its archives.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.N -> 10.X.Y.1:51820   [XDP] crmguard, TUN 10.77.0.1
//!               curl -> http://10.77.0.1:8443/session         portal + CRM (tcp/8080)
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use age::secrecy::ExposeSecret as _;
use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap, MapData};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::TcpServer;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use serde_json::Value;
use tempfile::TempDir;

use crate::access::{
    audit_records, audit_verifies, crm_answers, enroll, fresh_code, portal, PORTAL,
};
use crate::vpn::{
    gateway_endpoint, gateway_key, metric, wait_reachable, PeerSpec, ALLOWED_TCP, GATEWAY4, SETTLE,
    WG_PORT,
};

/// The uid and gid of `nobody`, standing for the agent's own user.
const NOBODY: u32 = 65_534;

/// The operator's age identity, kept off the host: written to a file of its own.
struct Operator {
    identity: age::x25519::Identity,
    dir: TempDir,
}

impl Operator {
    fn new() -> Result<Operator> {
        let identity = age::x25519::Identity::generate();
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("operator.key"),
            format!(
                "# public key: {}\n{}\n",
                identity.to_public(),
                identity.to_string().expose_secret()
            ),
        )?;
        Ok(Operator { identity, dir })
    }

    fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("operator.key")
    }
}

/// Runs `crmguard ARGS` with `--config config`.
fn crmguard(config: &Path, args: &[&str]) -> Result<Output> {
    let bin = crmguard_lab::agent::binary()?;
    Command::new(&bin)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .with_context(|| format!("running {} {args:?}", bin.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `crmguard ARGS` must exit `code` and say `needle`.
fn expect(config: &Path, args: &[&str], code: i32, needle: &str) -> Result<String> {
    let out = crmguard(config, args)?;
    let said = text(&out);
    ensure!(
        out.status.code() == Some(code) && said.contains(needle),
        "crmguard {args:?}: expected exit {code} saying {needle:?}, got {:?}:\n{said}",
        out.status.code()
    );
    Ok(said)
}

/// The signer `backup create` printed.
fn signer_of(said: &str) -> Result<String> {
    said.lines()
        .find_map(|l| l.strip_prefix("signer: "))
        .map(str::to_owned)
        .with_context(|| format!("no signer in:\n{said}"))
}

/// Whether the pinned IPv4 ban map of `agent` holds `addr`.
fn kernel_bans(agent: &Agent, addr: IpAddr) -> Result<bool> {
    let IpAddr::V4(v4) = addr else {
        bail!("{addr} is not IPv4");
    };
    let path = agent.bpffs_dir().join("maps").join("cg_ban4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: HashMap<MapData, [u8; 4], [u8; 16]> =
        HashMap::try_from(aya::maps::Map::from_map_data(data)?)?;
    Ok(map.get(&v4.octets(), 0).is_ok())
}

fn ban_listed(agent: &Agent, addr: IpAddr) -> Result<bool> {
    let out = agent.cli(&["ban", "list", "--json"])?;
    ensure!(out.status.success(), "ban list: {}", text(&out));
    let bans: Value = serde_json::from_slice(&out.stdout)?;
    let needle = addr.to_string();
    Ok(bans
        .as_array()
        .context("ban list --json is not a list")?
        .iter()
        .any(|b| b["net"].as_str().is_some_and(|n| n.starts_with(&needle))))
}

/// Removes everything in `dir` but the directory.
fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[test]
fn a_restored_backup_brings_the_gateway_back_on_an_emptied_host() -> Result<()> {
    if !privileged::require("backup::a_restored_backup_brings_the_gateway_back_on_an_emptied_host")
    {
        return Ok(());
    }
    crate::vpn::require_tools()?;
    privileged::require_tools(&[("curl", "curl")])?;
    let t = Topology::dual_stack(162, 1)?;
    let operator = Operator::new()?;
    let scratch = tempfile::tempdir()?;
    let alice = PeerSpec::new("alice", 2)?;
    std::fs::write(
        scratch.path().join("peers.toml"),
        format!(
            "[[peer]]\nname = \"alice\"\npublic_key = \"{}\"\naddress = \"{}\"\nrole = \"sales\"\n",
            alice.keys.public,
            alice.v4()
        ),
    )?;
    let body = format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[vpn]
listen_port = {WG_PORT}
address = "10.77.0.1/24"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"

[mfa]
issuer = "ACME CRM"
portal_port = {PORTAL}

[[role]]
name = "sales"
allow = ["tcp/{ALLOWED_TCP}"]
mfa = true

[backup]
dir = "{dir}/backups"
recipient = "{recipient}"
"#,
        iface = t.host_if.name(),
        dir = scratch.path().display(),
        recipient = operator.recipient(),
    );
    let mut agent = Agent::start(&t.host, &body)?;
    let config = agent.config_path().to_owned();
    let secret = enroll(&agent, "alice")?;
    let gateway = gateway_key(&agent)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let _wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let banned = t.addrs.denied4;
    let out = agent.cli(&["ban", "add", &banned.to_string(), "--ttl", "1d"])?;
    ensure!(out.status.success(), "ban add: {}", text(&out));
    ensure!(kernel_bans(&agent, banned)?, "the ban is not in the kernel");

    // The gateway remembers where its peers are (saved within a second), so that after a
    // restart or a restore it starts the handshake itself.
    wait_for(SETTLE, "the peer's endpoint in vpn-endpoints.json", || {
        let remembered = std::fs::read_to_string(agent.dir().join("state/vpn-endpoints.json"))
            .unwrap_or_default();
        Ok(remembered.contains(&alice.keys.public).then_some(()))
    })?;

    let archive = scratch.path().join("gateway.age");
    let archive_arg = archive.to_string_lossy().into_owned();
    let said = expect(&config, &["backup", "create", &archive_arg], 0, "wrote ")?;
    let signer = signer_of(&said)?;
    // The running agent, which writes the audit log, recorded the archive, in the name of
    // whoever ran the command.
    let log = std::fs::read_to_string(agent.audit_path())?;
    ensure!(
        log.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|r| r["type"] == "backup_created"
                && r["actor"].as_str().is_some_and(|a| a.starts_with("admin:"))
                && r["detail"]["signer"] == signer.as_str()
                && r["detail"]["file"] == archive_arg.as_str()),
        "no backup_created record by an administrator:\n{log}"
    );
    // Restoring under a running agent would change its files behind its back.
    expect(
        &config,
        &["backup", "restore", &archive_arg],
        1,
        "an agent is running",
    )?;

    // A new host: no agent, no pinned filter, no state, no keys, no configuration. The audit
    // log is not part of a backup (it goes off the host its own way); it is kept here to check
    // that the restored chain continues it.
    agent.stop()?;
    let old_log = std::fs::read_to_string(agent.dir().join("audit.jsonl"))?;
    let out = agent.cli(&["uninstall"])?;
    ensure!(out.status.success(), "uninstall: {}", text(&out));
    ensure!(!crm_answers(&t.out)?, "the CRM answers without a gateway");
    let state = agent.dir().join("state");
    empty_dir(&state)?;
    for file in [
        agent.dir().join("audit.key"),
        agent.dir().join("audit.jsonl"),
        scratch.path().join("wg.key"),
        scratch.path().join("peers.toml"),
        config.clone(),
    ] {
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    }
    // The package made a fresh key for the agent's user (here nobody) before the restore:
    // the restored key replaces it and stays that user's, or the agent could not read it.
    let fresh_key = scratch.path().join("wg.key");
    std::fs::write(
        &fresh_key,
        format!("{}\n", crmguard_core::keys::encode(&[9; 32])),
    )?;
    std::os::unix::fs::chown(&fresh_key, Some(NOBODY), Some(NOBODY))?;

    // Without --signer a fresh host cannot know whose archive this is.
    let key_arg = operator.key_file().to_string_lossy().into_owned();
    expect(
        &config,
        &["backup", "restore", &archive_arg, "--identity", &key_arg],
        64,
        "--signer",
    )?;
    let restore = [
        "backup",
        "restore",
        &archive_arg,
        "--identity",
        &key_arg,
        "--signer",
        &signer,
    ];
    let dry_run = [
        "backup",
        "restore",
        &archive_arg,
        "--identity",
        &key_arg,
        "--signer",
        &signer,
        "--dry-run",
    ];
    let said = expect(&config, &dry_run, 0, "nothing written (--dry-run)")?;
    ensure!(
        said.contains(&format!("{} (config", config.display()))
            && said.contains("mfa/alice.secret"),
        "the dry run does not list the files:\n{said}"
    );
    ensure!(
        std::fs::read_dir(&state)?.next().is_none() && !config.exists(),
        "the dry run wrote something"
    );
    expect(&config, &restore, 0, "restored ")?;
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&fresh_key)?);
    ensure!(
        owner == NOBODY,
        "the restored key belongs to uid {owner}, not to the user of the key it replaced"
    );

    agent.spawn()?;
    agent.wait_ready()?;
    ensure!(gateway_key(&agent)? == gateway, "the gateway's key changed");
    // The client was never touched: it reconnects with its old key to the restored gateway.
    // The gateway's first handshake to it can cross the client's own stale session, which
    // the client replaces after its rekey timeout (5 s) at the latest.
    wait_for(
        Duration::from_secs(30),
        "the old peer to reach the restored gateway",
        || {
            Ok(
                crate::vpn::ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_millis(500))?
                    .then_some(()),
            )
        },
    )?;
    ensure!(!crm_answers(&t.out)?, "the CRM answers before MFA");
    let mut used = Vec::new();
    let body = format!("{{\"code\":\"{}\"}}", fresh_code(&secret, &mut used)?);
    let (status, answer) = portal(&t.out, "POST", "/session", Some(&body))?;
    ensure!(
        status == 200,
        "a code of the enrolled secret: {status} {answer}"
    );
    wait_for(SETTLE, "the CRM with a session", || {
        Ok(crm_answers(&t.out)?.then_some(()))
    })?;
    ensure!(
        ban_listed(&agent, banned)?,
        "the ban is not listed after the restore"
    );
    wait_for(SETTLE, "the restored ban in the kernel", || {
        Ok(kernel_bans(&agent, banned)?.then_some(()))
    })?;
    // The audit chain goes on from the restored checkpoint, and says who restored what.
    let records = audit_records(&agent)?;
    ensure!(
        records.iter().any(|r| r["type"] == "backup_restored"
            && r["detail"]["drill"] == false
            && r["detail"]["signer"] == signer.as_str()),
        "no backup_restored record: {records:?}"
    );
    let first = records
        .first()
        .and_then(|r| r["seq"].as_u64())
        .context("no audit record after the restore")?;
    ensure!(
        first > 1,
        "the audit chain started over: {:?}",
        records.first()
    );
    // The old log up to the restored checkpoint, then the new one: one unbroken chain.
    let mut joined: String = old_log
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|r| r["seq"].as_u64())
                .is_some_and(|seq| seq < first)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    joined.push_str(&std::fs::read_to_string(agent.dir().join("audit.jsonl"))?);
    let joined_path = scratch.path().join("joined.jsonl");
    std::fs::write(&joined_path, joined)?;
    let out = agent.cli(&["audit", "verify", &joined_path.to_string_lossy()])?;
    ensure!(
        out.status.success(),
        "the old and the restored log do not chain: {}",
        text(&out)
    );
    Ok(())
}

/// A host of its own for archive checks that need no network: a configuration with a state
/// directory, an audit key and a recipient.
struct Host {
    dir: TempDir,
}

impl Host {
    fn new(recipient: &str) -> Result<Host> {
        Host::encrypted(&format!("recipient = \"{recipient}\""))
    }

    /// A host whose `[backup]` section has `encryption` (`recipient` or `passphrase_file`).
    fn encrypted(encryption: &str) -> Result<Host> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("state/mfa"))?;
        std::fs::write(
            dir.path().join("state/bans.json"),
            "{\"version\":1,\"bans\":[]}",
        )?;
        std::fs::write(dir.path().join("state/mfa/alice.secret"), "MZXW6YTBOI\n")?;
        std::fs::write(
            dir.path().join("crmguard.toml"),
            format!(
                "[agent]\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\n\
                 [audit]\npath = \"{d}/audit.jsonl\"\nkey_file = \"{d}/audit.key\"\n\
                 [backup]\ndir = \"{d}/backups\"\n{encryption}\n"
            ),
        )?;
        Ok(Host { dir })
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("crmguard.toml")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `backup create NAME`; returns the signer.
    fn create(&self, name: &str) -> Result<String> {
        let said = expect(
            &self.config(),
            &["backup", "create", &self.path(name)],
            0,
            "wrote ",
        )?;
        signer_of(&said)
    }
}

#[test]
fn edited_truncated_foreign_and_wrongly_keyed_archives_are_refused() -> Result<()> {
    if !privileged::require(
        "backup::edited_truncated_foreign_and_wrongly_keyed_archives_are_refused",
    ) {
        return Ok(());
    }
    let operator = Operator::new()?;
    let host = Host::new(&operator.recipient())?;
    let other = Host::new(&operator.recipient())?;
    let signer = host.create("good.age")?;
    let config = host.config();
    let good = host.path("good.age");
    let key = operator.key_file().to_string_lossy().into_owned();
    expect(
        &config,
        &["backup", "verify", &good],
        0,
        "the restore drill passed",
    )?;
    expect(
        &config,
        &["backup", "verify", &good, "--identity", &key],
        0,
        "ok: ",
    )?;

    // A changed byte in the encrypted payload.
    let bytes = std::fs::read(&good)?;
    let mut edited = bytes.clone();
    let middle = edited.len() - 64;
    edited[middle] ^= 0x20;
    std::fs::write(host.path("edited.age"), &edited)?;
    expect(
        &config,
        &["backup", "verify", &host.path("edited.age")],
        1,
        "the archive is truncated or damaged at byte",
    )?;
    // Cut off.
    std::fs::write(host.path("cut.age"), &bytes[..bytes.len() - 100])?;
    expect(
        &config,
        &["backup", "restore", &host.path("cut.age"), "--dry-run"],
        1,
        "the archive is truncated or damaged at byte",
    )?;
    // Re-encrypted by someone who can decrypt it, with one file changed and the original
    // manifest and signature kept: the file is named.
    let identity = crmguard::backup::archive::Unsealing::Identities(vec![operator
        .identity
        .to_string()
        .expose_secret()
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?]);
    let opened = crmguard::backup::archive::open(&bytes, &identity)?;
    let mut files = std::collections::BTreeMap::new();
    for (name, data) in &opened.files {
        let mut data = data.clone();
        if name == "state/mfa/alice.secret" {
            data = b"ATTACKERSECRET\n".to_vec();
        }
        files.insert(
            name.clone(),
            crmguard::backup::manifest::FileData {
                original: String::new(),
                mode: 0o600,
                bytes: data,
            },
        );
    }
    let resealed = crmguard::backup::archive::seal(
        &opened.manifest,
        &opened.signature,
        &files,
        &crmguard::backup::archive::Sealing::Recipients(vec![operator.identity.to_public()]),
    )?;
    std::fs::write(host.path("resealed.age"), resealed)?;
    expect(
        &config,
        &[
            "backup",
            "restore",
            &host.path("resealed.age"),
            "--identity",
            &key,
        ],
        1,
        "file `state/mfa/alice.secret` differs from the manifest",
    )?;

    // Signed by another host's key.
    let other_signer = other.create("other.age")?;
    expect(
        &config,
        &["backup", "verify", &other.path("other.age"), "--identity", &key],
        1,
        &format!("the archive was signed by another key: its signer is {other_signer}, expected {signer}"),
    )?;
    // A wrong identity.
    let stranger = Operator::new()?;
    expect(
        &config,
        &[
            "backup",
            "verify",
            &good,
            "--identity",
            &stranger.key_file().to_string_lossy(),
        ],
        1,
        "wrong identity",
    )?;
    // A passphrase instead of a recipient: scrypt, and the wrong passphrase is named.
    let scratch = tempfile::tempdir()?;
    let pass = scratch.path().join("backup.pass");
    std::fs::write(&pass, "correct horse battery staple\n")?;
    let wrong = scratch.path().join("wrong.pass");
    std::fs::write(&wrong, "correct horse battery\n")?;
    let host2 = Host::encrypted(&format!("passphrase_file = \"{}\"", pass.display()))?;
    host2.create("pass.age")?;
    let archive = host2.path("pass.age");
    expect(
        &host2.config(),
        &["backup", "verify", &archive],
        0,
        "the restore drill passed",
    )?;
    expect(
        &host2.config(),
        &[
            "backup",
            "verify",
            &archive,
            "--passphrase-file",
            &wrong.to_string_lossy(),
        ],
        1,
        "wrong passphrase",
    )?;
    expect(
        &host2.config(),
        &["backup", "verify", &archive, "--identity", &key],
        1,
        "the archive is encrypted to a passphrase; give --passphrase-file",
    )?;
    // Nothing was restored by any of them.
    ensure!(
        std::fs::read_to_string(host.dir.path().join("state/mfa/alice.secret"))? == "MZXW6YTBOI\n",
        "a refused archive changed the state"
    );
    Ok(())
}

#[test]
fn scheduled_backups_are_written_pruned_drilled_audited_and_measured() -> Result<()> {
    if !privileged::require(
        "backup::scheduled_backups_are_written_pruned_drilled_audited_and_measured",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(162, 3)?;
    let operator = Operator::new()?;
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().join("backups");
    let body = format!(
        "[[interface]]\nname = \"{iface}\"\nxdp_mode = \"native\"\n\n\
         [backup]\ndir = \"{dir}\"\nevery = \"2s\"\nkeep = 2\nrecipient = \"{recipient}\"\n",
        iface = t.host_if.name(),
        dir = dir.display(),
        recipient = operator.recipient(),
    );
    let started = SystemTime::now();
    let agent = Agent::start(&t.host, &body)?;
    let archives = || -> Result<Vec<String>> {
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("crmguard-") && n.ends_with(".age"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        Ok(names)
    };
    // Three drilled backups, of which the newest two are kept.
    let records = wait_for(Duration::from_secs(30), "three drilled backups", || {
        let records = audit_records(&agent)?;
        let drilled = records
            .iter()
            .filter(|r| r["type"] == "backup_restored" && r["outcome"] == "success")
            .count();
        Ok((drilled >= 3).then_some(records))
    })?;
    let created: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "backup_created")
        .collect();
    let restored: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "backup_restored")
        .collect();
    ensure!(
        created.iter().all(|r| r["outcome"] == "success"
            && r["actor"] == "system"
            && r["detail"]["files"].as_u64() >= Some(2)
            && r["detail"]["file"]
                .as_str()
                .is_some_and(|f| f.starts_with(&dir.display().to_string()))),
        "backup_created records: {created:?}"
    );
    ensure!(
        restored.iter().all(|r| r["detail"]["drill"] == true
            && r["detail"]["result"] == "ok"
            && r["detail"]["config_checked"] == true),
        "backup_restored records: {restored:?}"
    );
    wait_for(SETTLE, "two archives kept", || {
        let names = archives()?;
        Ok((names.len() == 2).then_some(()))
    })?;
    let newest = archives()?.pop().context("no archive")?;
    // The operator's identity opens what the agent wrote.
    let newest = dir.join(newest).to_string_lossy().into_owned();
    expect(
        agent.config_path(),
        &[
            "backup",
            "verify",
            &newest,
            "--identity",
            &operator.key_file().to_string_lossy(),
        ],
        0,
        "the restore drill passed",
    )?;
    let last = metric(
        &agent,
        "crmguard_backup_last_success_timestamp_seconds",
        &[],
    )?;
    let since = started
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs_f64();
    ensure!(
        last >= since.floor(),
        "last success {last}, started at {since}"
    );
    let interval = metric(&agent, "crmguard_backup_interval_seconds", &[])?;
    ensure!(
        interval == 2.0,
        "crmguard_backup_interval_seconds {interval}"
    );
    ensure!(
        metric(
            &agent,
            "crmguard_backup_failures_total",
            &[("stage", "drill")]
        )? == 0.0
            && metric(
                &agent,
                "crmguard_backup_failures_total",
                &[("stage", "create")]
            )? == 0.0,
        "failures counted"
    );
    audit_verifies(&agent)?;
    eprintln!(
        "a drilled backup's audit records:\n{}\n{}",
        serde_json::to_string(created[0])?,
        serde_json::to_string(restored[0])?
    );
    Ok(())
}
