//! `crmguard audit verify`: the audit log's chain, across its rotated segments, against the
//! key and the checkpoint.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crmguard_core::audit::{self, Checkpoint, Tail, VerifyReport};
use crmguard_core::config::Config;
use crmguard_core::exit;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record of the audit log: its MAC under `[audit] key_file`, the chain of
    /// `prev`, gapless `seq`, and the tail against `state_dir/audit.checkpoint`
    ///
    /// Without FILE, checks `[audit] path` and the segments rotation left next to it
    /// (`audit-<seq>.jsonl`), oldest first, as one chain. With FILEs, checks those, in the
    /// order given (oldest first). Prints `ok: N records` and exits 0, or prints the first
    /// broken record (file, line, seq and what is wrong) and exits 1. A log that holds records
    /// while the checkpoint is missing fails too, since a cut-off tail could not be seen, and
    /// so does a log whose oldest segments are missing. Exit 64 when the key file is missing.
    Verify {
        /// Audit log files, such as /var/log/crmguard/audit-000000012345.jsonl
        /// /var/log/crmguard/audit.jsonl; default: `[audit] path` and its segments
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Check a copy of the log away from its host: every record, without the tail
        /// against the checkpoint (which is only on the host)
        #[arg(long)]
        without_checkpoint: bool,
    },
}

pub fn run(config: &Config, command: AuditCommand) -> u8 {
    match command {
        AuditCommand::Verify {
            files,
            without_checkpoint,
        } => verify(config, files, without_checkpoint),
    }
}

/// What one check read: the files in chain order and the checkpoint.
#[derive(Debug, PartialEq, Eq)]
struct Inputs {
    files: Vec<PathBuf>,
    checkpoint: Option<Checkpoint>,
}

/// How many times a check is made again when the agent rotated the log while it ran.
const ATTEMPTS: usize = 3;

fn verify(config: &Config, given: Vec<PathBuf>, without_checkpoint: bool) -> u8 {
    let key = match audit::load_key(&config.audit.key_file) {
        Ok(key) => key,
        Err(e) if e.is_missing() => {
            eprintln!(
                "crmguard: {e}; `audit verify` needs the key that signed the log ([audit] key_file)"
            );
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
            return exit::FAILURE;
        }
    };
    let checkpoint_path = config.agent.state_dir.join(audit::CHECKPOINT_FILE);
    let read_inputs = || -> Result<Inputs, String> {
        let files = if given.is_empty() {
            let live = &config.audit.path;
            let mut all = audit::segments(live).map_err(|e| {
                format!(
                    "cannot list the audit log's segments next to {}: {e}",
                    live.display()
                )
            })?;
            all.push(live.clone());
            all
        } else {
            given.clone()
        };
        let checkpoint = if without_checkpoint {
            None
        } else {
            audit::read_checkpoint(&checkpoint_path).map_err(|e| crmguard_core::error_chain(&e))?
        };
        Ok(Inputs { files, checkpoint })
    };
    // A rotation while the files are read makes a chain that looks cut: the check is made
    // again when the segments changed under it.
    for attempt in 1..=ATTEMPTS {
        let inputs = match read_inputs() {
            Ok(inputs) => inputs,
            Err(e) => {
                eprintln!("crmguard: {e}");
                return exit::FAILURE;
            }
        };
        let tail = tail_for(config, &inputs);
        let result = audit::verify_files(&inputs.files, &key, tail);
        let rotated = read_inputs().map_or(true, |now| now.files != inputs.files);
        if rotated && attempt < ATTEMPTS {
            continue;
        }
        return match result {
            Ok(report) => {
                print_report(&inputs, tail, &report, &checkpoint_path, without_checkpoint)
            }
            Err(e) => {
                eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
                exit::FAILURE
            }
        };
    }
    exit::FAILURE
}

/// What `inputs` are held against: with the host's live log among the files, a start that a
/// rotation accounts for and the checkpoint's record as the end; with segments only, a seal as
/// the end.
fn tail_for(config: &Config, inputs: &Inputs) -> Tail {
    let has_live = inputs
        .files
        .iter()
        .any(|f| same_file(f, &config.audit.path));
    match (inputs.checkpoint, has_live) {
        (None, true) => Tail::Whole,
        (None, false) => Tail::Unchecked,
        (Some(cp), true) => Tail::Live(cp),
        (Some(cp), false) => Tail::Segments(cp),
    }
}

fn print_report(
    inputs: &Inputs,
    tail: Tail,
    report: &VerifyReport,
    checkpoint_path: &Path,
    without_checkpoint: bool,
) -> u8 {
    let files = &inputs.files;
    let name = |file: usize| {
        files
            .get(file)
            .map_or_else(String::new, |f| f.display().to_string())
    };
    let last = name(files.len().saturating_sub(1));
    if let (Some(continues), None) = (&report.continues, &report.broken) {
        println!(
            "{}: continues segment {} (its last record, seq {}, is not part of this check)",
            name(0),
            continues.segment,
            continues.seq
        );
    }
    for missing in &report.checkpoints_missing {
        println!(
            "{}: line {} (seq {}): the agent found the checkpoint missing; a tail cut off before this record would not show",
            name(missing.file),
            missing.line,
            missing.seq
        );
    }
    for torn in &report.acknowledged {
        println!(
            "{}: line {}: {} line(s), {} bytes torn by a crash, acknowledged by record seq {}",
            name(torn.file),
            torn.line,
            torn.lines,
            torn.bytes,
            torn.seq
        );
    }
    if let (Some(seq), Tail::Segments(_)) = (report.sealed, tail) {
        println!(
            "{last}: ends with the rotation to the next segment (seq {seq}); the chain goes on there"
        );
    }
    match &report.broken {
        None if inputs.checkpoint.is_none() && report.records > 0 && !without_checkpoint => {
            println!(
                "{last}: no checkpoint at {}, so a tail cut off from these {} records would not show (a copy away from its host: --without-checkpoint)",
                checkpoint_path.display(),
                report.records
            );
            exit::FAILURE
        }
        None => {
            println!("ok: {} records", report.records);
            exit::OK
        }
        Some(broken) => {
            let seq = broken
                .seq
                .map_or_else(|| "unknown".to_owned(), |seq| seq.to_string());
            println!(
                "{}: line {} (seq {seq}): {} ({} good records before it)",
                name(broken.file),
                broken.line,
                broken.problem,
                report.records
            );
            exit::FAILURE
        }
    }
}

/// Whether `a` and `b` name the same file (by device and inode when both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}
