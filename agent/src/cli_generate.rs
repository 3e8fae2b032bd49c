//! `crmguard generate man DIR | completions SHELL`: man pages and shell completions made from
//! the command-line definition itself, so that they name every subcommand and option the binary
//! accepts. The Debian package build runs it; the subcommand is hidden from `--help` because
//! an administrator has no use for it on an installed host.
//!
//! One page per command: `crmguard.1`, then `crmguard-ban.1`, `crmguard-ban-add.1` and so on
//! for every visible subcommand at any depth. Hidden subcommands (this one) and clap's
//! generated `help` get none.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Subcommand, ValueEnum};
use crmguard_core::exit;

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write one man page (section 1, roff) per command into DIR
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the completion script for SHELL
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// The shells whose completion scripts the package installs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn run(command: GenerateCommand) -> u8 {
    let result = match command {
        GenerateCommand::Man { dir } => man_pages(&dir).map(|pages| {
            for page in pages {
                println!("{}", page.display());
            }
        }),
        GenerateCommand::Completions { shell } => {
            completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("crmguard: {}", crmguard_core::error_chain(&e));
            exit::FAILURE
        }
    }
}

/// The command-line definition with every subcommand's display name (`crmguard-ban-add`) and
/// usage filled in.
fn definition() -> clap::Command {
    let mut cli = crate::Cli::command();
    cli.build();
    cli
}

/// Writes the pages of `crmguard` and all its visible subcommands into `dir` (created when
/// missing) and returns their paths, parents before children.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    std::fs::create_dir_all(dir).map_err(|source| GenerateError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut pages = Vec::new();
    write_pages(&definition(), dir, &mut pages)?;
    Ok(pages)
}

fn write_pages(
    command: &clap::Command,
    dir: &Path,
    pages: &mut Vec<PathBuf>,
) -> Result<(), GenerateError> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name());
    let path = dir.join(format!("{name}.1"));
    let mut roff = Vec::new();
    let written = clap_mangen::Man::new(command.clone())
        .render(&mut roff)
        .and_then(|()| std::fs::write(&path, roff));
    written.map_err(|source| GenerateError::Write {
        path: path.clone(),
        source,
    })?;
    pages.push(path);
    for sub in documented_subcommands(command) {
        write_pages(sub, dir, pages)?;
    }
    Ok(())
}

/// The subcommands that get a page: not hidden, not clap's `help`.
fn documented_subcommands(command: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cli = crate::Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
    };
    clap_complete::generate(shell, &mut cli, "crmguard", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page names every visible command at every depth must have, from the definition.
    fn expected_pages(command: &clap::Command, prefix: &str, names: &mut Vec<String>) {
        names.push(format!("{prefix}.1"));
        for sub in documented_subcommands(command) {
            expected_pages(sub, &format!("{prefix}-{}", sub.get_name()), names);
        }
    }

    #[test]
    fn every_subcommand_gets_a_page_and_the_hidden_ones_none() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pages = man_pages(dir.path()).expect("pages written");

        let mut expected = Vec::new();
        expected_pages(&crate::Cli::command(), "crmguard", &mut expected);
        let mut written: Vec<String> = pages
            .iter()
            .map(|p| {
                p.file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        expected.sort();
        written.sort();
        assert_eq!(written, expected);
        for page in ["crmguard.1", "crmguard-ban-add.1", "crmguard-peer.1"] {
            assert!(expected.iter().any(|p| p == page), "{page} expected");
        }
        for page in ["crmguard-generate.1", "crmguard-help.1"] {
            assert!(!dir.path().join(page).exists(), "{page} written");
        }

        let ban_add = std::fs::read_to_string(dir.path().join("crmguard-ban-add.1")).expect("page");
        assert!(ban_add.starts_with(".ie"), "not roff: {ban_add}");
        assert!(ban_add.contains(".TH crmguard-ban-add 1"), "{ban_add}");
        assert!(ban_add.contains("\\-\\-ttl"), "no --ttl in {ban_add}");
    }

    #[test]
    fn completions_offer_every_visible_subcommand() {
        for shell in [Shell::Bash, Shell::Zsh] {
            let mut script = Vec::new();
            completions(shell, &mut script);
            let script = String::from_utf8(script).expect("UTF-8");
            for sub in documented_subcommands(&definition()) {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell:?}: no {}",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn generate_is_hidden_from_help() {
        let help = crate::Cli::command().render_long_help().to_string();
        assert!(help.contains("uninstall"), "{help}");
        assert!(!help.contains("generate"), "{help}");
    }
}
