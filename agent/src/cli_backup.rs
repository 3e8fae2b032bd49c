//! `crmguard backup create|verify|restore`: the command line of `crmguard::backup`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crmguard::backup::{self, drill, BackupError, Unsealing};
use crmguard::control::{self, Request, Response};
use crmguard::daemon::ConfigSource;
use crmguard_core::audit;
use crmguard_core::config::{BackupEncryption, Config};
use crmguard_core::exit;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write an archive of the gateway's configuration, keys, peers, bans, MFA secrets and
    /// sessions, detection history and audit checkpoint to FILE
    ///
    /// The archive is encrypted with age to `[backup] recipient` or `passphrase_file`, and its
    /// manifest (the SHA-256 of every file) is signed with this host's backup signing key
    /// (created in the state directory on first use). The signer's public key is printed: keep
    /// it with the identity, as restoring on another host needs it (--signer). Exit 64 when
    /// no recipient or passphrase is configured, 1 when the archive cannot be written.
    Create {
        /// Where to write the archive (mode 0600)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Decrypt FILE, check its signature and every file's sum, and restore it into a scratch
    /// directory where its configuration must pass `crmguard check` (the restore drill)
    ///
    /// Exit 0 when the archive is sound, 1 when it is refused (the message names what is
    /// wrong: a file whose sum differs, a bad signature, another signer, a truncated archive,
    /// a wrong identity or passphrase), 64 for bad usage.
    Verify {
        /// The archive
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        keys: OpenArgs,
    },
    /// Put the files of FILE back where the archive's configuration says, after the checks of
    /// `verify`; the configuration goes to --config (default /etc/crmguard/crmguard.toml)
    ///
    /// Refused while an agent runs: stop it, restore, start it. Each file is replaced
    /// atomically with its saved mode; files the archive does not hold are left as they are.
    Restore {
        /// The archive
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Say what would be written, and write nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        keys: OpenArgs,
    },
}

/// How an archive is opened and whose signature it must carry.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// An age identity file (`age-keygen` output) for archives encrypted to a recipient
    /// [default: this host's drill identity, which scheduled and `create`d archives are also
    /// encrypted to]
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    identity: Option<PathBuf>,
    /// A file whose first line is the archive's passphrase [default: `[backup]
    /// passphrase_file`]
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// The signer's public key as `backup create` printed it [default: this host's backup
    /// signing key; required on a host without one]
    #[arg(long, value_name = "PUBKEY")]
    signer: Option<String>,
}

pub fn run(source: &ConfigSource, config_path: &Path, command: BackupCommand, actor: &str) -> u8 {
    // Archives record, and restores write, the configuration under an absolute path.
    let absolute = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
    let source = match source {
        ConfigSource::File(_) => &ConfigSource::File(absolute.clone()),
        ConfigSource::Embedded => source,
    };
    let config_path = absolute.as_path();
    let result = match command {
        BackupCommand::Create { file } => create(source, &file, actor),
        BackupCommand::Verify { file, keys } => verify(source, config_path, &file, &keys),
        BackupCommand::Restore {
            file,
            dry_run,
            keys,
        } => restore(source, config_path, &file, &keys, dry_run, actor),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
            e.exit_code()
        }
    }
}

fn create(source: &ConfigSource, file: &Path, actor: &str) -> Result<(), BackupError> {
    let config = source.load().map_err(BackupError::Config)?;
    let config_file = match source {
        ConfigSource::File(path) => Some(path.as_path()),
        ConfigSource::Embedded => None,
    };
    let drill = match &config.backup.encryption {
        Some(BackupEncryption::Recipient(_)) => Some(backup::keys::load_or_create_drill_identity(
            &config.agent.state_dir,
        )?),
        _ => None,
    };
    let sealing = backup::sealing(&config, drill.as_ref())?;
    let created = backup::create(&config, config_file, &sealing, file, SystemTime::now())?;
    if created.new_signing_key {
        println!(
            "created the backup signing key {}",
            backup::keys::signing_key_path(&config.agent.state_dir).display()
        );
    }
    let to = match &config.backup.encryption {
        Some(BackupEncryption::Recipient(recipient)) => format!("to {recipient}"),
        Some(BackupEncryption::PassphraseFile(path)) => {
            format!("to the passphrase of {}", path.display())
        }
        None => String::new(),
    };
    println!(
        "wrote {}: {} files, {} bytes, encrypted {to}",
        file.display(),
        created.manifest.files.len(),
        created.size
    );
    println!("signer: {}", created.signer);
    let key = match &config.backup.encryption {
        Some(BackupEncryption::PassphraseFile(_)) => "--passphrase-file FILE",
        _ => "--identity KEYFILE",
    };
    println!(
        "restore on another host with: crmguard backup restore {} {key} --signer {}",
        file.display(),
        created.signer
    );
    // A running agent writes the audit log: it records the archive; this command writes the
    // record itself only when no agent runs.
    let request = Request::BackupCreated {
        file: file.display().to_string(),
        files: created.manifest.files.len(),
        size: created.size,
        signer: created.signer.clone(),
        by: actor.to_owned(),
    };
    match control::call(&config.agent.control_socket, &request) {
        Ok(Response::Recorded) => {}
        Err(e) if e.is_agent_down() => {
            let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
            sink.record(&created.event(actor, file));
        }
        Ok(other) => eprintln!("crmguard: the running agent did not record the backup: {other:?}"),
        Err(e) => eprintln!(
            "crmguard: the running agent could not be told of the backup: {}",
            crmguard_core::error_chain(&e)
        ),
    }
    Ok(())
}

/// The configuration of this host, when it loads: on a fresh host there is none yet.
fn current(source: &ConfigSource) -> Option<Config> {
    source.load().ok()
}

fn unsealing(keys: &OpenArgs, current: Option<&Config>) -> Result<Unsealing, BackupError> {
    if let Some(path) = &keys.identity {
        return Ok(Unsealing::Identities(backup::keys::read_identity_file(
            path,
        )?));
    }
    if let Some(path) = &keys.passphrase_file {
        return Ok(Unsealing::Passphrase(backup::keys::read_passphrase_file(
            path,
        )?));
    }
    match current {
        Some(config) => backup::local_unsealing(config)?.ok_or(BackupError::NoUnsealing),
        None => Err(BackupError::NoUnsealing),
    }
}

fn verify(
    source: &ConfigSource,
    config_path: &Path,
    file: &Path,
    keys: &OpenArgs,
) -> Result<(), BackupError> {
    let current = current(source);
    let unsealing = unsealing(keys, current.as_ref())?;
    let signer = backup::expected_signer(
        keys.signer.as_deref(),
        current.as_ref().map(|c| c.agent.state_dir.as_path()),
    )?;
    let verified = backup::open_verified(file, &unsealing, &signer)?;
    let drill = drill::run_verified(&verified, config_path)?;
    println!(
        "ok: {}: {} files, signed by {} on {}; the restore drill passed{}",
        file.display(),
        drill.files,
        verified.manifest.signer,
        verified.manifest.created,
        if drill.config_checked {
            " and its configuration passes `crmguard check`"
        } else {
            ""
        }
    );
    for entry in &verified.manifest.files {
        println!(
            "  {:<32} {:>8} bytes  sha256 {}  from {}",
            entry.name, entry.size, entry.sha256, entry.original
        );
    }
    Ok(())
}

fn restore(
    source: &ConfigSource,
    config_path: &Path,
    file: &Path,
    keys: &OpenArgs,
    dry_run: bool,
    actor: &str,
) -> Result<(), BackupError> {
    let current = current(source);
    let unsealing = unsealing(keys, current.as_ref())?;
    let signer = backup::expected_signer(
        keys.signer.as_deref(),
        current.as_ref().map(|c| c.agent.state_dir.as_path()),
    )?;
    let verified = backup::open_verified(file, &unsealing, &signer)?;
    let plan = backup::plan(&verified, config_path, Path::new("/"))?;
    let sockets = [
        Some(plan.config.agent.control_socket.clone()),
        current.as_ref().map(|c| c.agent.control_socket.clone()),
    ];
    let running = sockets
        .into_iter()
        .flatten()
        .find(|socket| backup::agent_running(socket));
    if dry_run {
        println!(
            "{}: {} files signed by {} on {}; would write:",
            file.display(),
            plan.writes.len(),
            verified.manifest.signer,
            verified.manifest.created
        );
        for write in &plan.writes {
            let state = if write.target.exists() {
                "replaces the file there"
            } else {
                "new"
            };
            println!(
                "  {} ({}, {} bytes, mode {:04o}, {state})",
                write.target.display(),
                write.name,
                write.bytes.len(),
                write.mode
            );
        }
        if let Some(socket) = running {
            println!(
                "an agent is running ({}): a restore would be refused until it is stopped",
                socket.display()
            );
        }
        println!("nothing written (--dry-run)");
        return Ok(());
    }
    if let Some(socket) = running {
        return Err(BackupError::AgentRunning(socket));
    }
    backup::write(&plan, Path::new("/"))?;
    for write in &plan.writes {
        println!("restored {} ({})", write.target.display(), write.name);
    }
    let mut sink = audit::Sink::open(&plan.config.audit, &plan.config.agent.state_dir);
    sink.record(
        &audit::Event::new(
            audit::EventType::BackupRestored,
            audit::Outcome::Success,
            actor,
        )
        .with_detail("file", file.display().to_string())
        .with_detail("drill", false)
        .with_detail("files", plan.writes.len())
        .with_detail("signer", verified.manifest.signer.clone())
        .with_detail("created", verified.manifest.created.clone()),
    );
    println!(
        "restored {} files from {}; start the agent to enforce them",
        plan.writes.len(),
        file.display()
    );
    Ok(())
}
