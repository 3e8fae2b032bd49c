//! The operator's guide (`docs/OPERATIONS.md`) is held to the command line and to the test
//! suite: every `crmguard` command in its shell blocks must parse with the CLI definition, and
//! the privileged suite, the package test or the lab must run that subcommand with each option
//! the guide gives it. Other programs the guide names must be ones those tests run too, except
//! the few that need systemd or apt as PID 1 and the package manager of a real host.
//!
//! "Runs" is read from the sources: an array of string literals (`["backup", "create", &file]`,
//! as `Agent::cli` and `Command::args` take them) that holds the subcommand's words in order,
//! then every option the guide uses.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// Programs of the guide that no test can run: systemd is not PID 1 in the test
/// namespaces, and apt would change the test machine's own packages (the package test
/// installs with dpkg in a throwaway root instead). An editor is the operator's own.
const NOT_RUN: [&str; 4] = ["systemctl", "journalctl", "apt", "$EDITOR"];

/// Where the tests that run commands live, from the repository's root.
const TEST_SOURCES: [&str; 3] = ["tests/suite", "lab/src", "xtask/src/deb"];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The command lines of the guide's ```sh blocks, comments and prompts removed.
fn guide_commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_shell = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_shell = !in_shell && matches!(info, "sh" | "bash" | "shell");
            continue;
        }
        if !in_shell {
            continue;
        }
        let command = trimmed.split(" #").next().unwrap_or_default().trim();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        out.push(command.strip_prefix("sudo ").unwrap_or(command).to_owned());
    }
    out
}

/// Splits a command line into words, keeping quoted words whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// The subcommand words and the long options of a `crmguard` command line (without the
/// program name), checked against the CLI definition.
fn subcommand_and_options(args: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut argv = vec!["crmguard".to_owned()];
    argv.extend(args.iter().cloned());
    crate::Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| format!("does not parse: {}", e.render()))?;
    let mut command = crate::Cli::command();
    let mut path = Vec::new();
    for word in args {
        let Some(sub) = command.find_subcommand(word).cloned() else {
            break;
        };
        path.push(word.clone());
        command = sub;
    }
    let options = args
        .iter()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|o| format!("--{}", o.split('=').next().unwrap_or(o)))
        .filter(|o| o != "--config")
        .collect();
    Ok((path, options))
}

/// Every array of the sources as the string literals it holds, in order.
fn literal_arrays(source: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'[' {
            i += 1;
            continue;
        }
        let Some(len) = source[i + 1..].find(']') else {
            break;
        };
        let inside = &source[i + 1..i + 1 + len];
        let literals: Vec<String> = inside
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        if !literals.is_empty() {
            out.push(literals);
        }
        i += 1;
    }
    out
}

fn test_sources() -> String {
    let mut text = String::new();
    for dir in TEST_SOURCES {
        let dir = repository().join(dir);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(
                    &std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
                );
                text.push('\n');
            }
        }
    }
    text
}

/// Whether an array runs `path` (its words in order, from its first literal) with `options`.
fn runs(arrays: &[Vec<String>], path: &[String], options: &[String]) -> bool {
    arrays.iter().any(|array| {
        array.len() >= path.len()
            && array.iter().zip(path).all(|(a, p)| a == p)
            && options.iter().all(|o| array.contains(o))
    })
}

/// What is wrong with the guide: commands that do not parse, or that no test runs.
fn problems(guide: &str, sources: &str) -> Vec<String> {
    let arrays = literal_arrays(sources);
    let mut out = Vec::new();
    for line in guide_commands(guide) {
        let words = words(&line);
        let Some((program, args)) = words.split_first() else {
            continue;
        };
        if program != "crmguard" {
            let quoted = format!("\"{program}\"");
            if !NOT_RUN.contains(&program.as_str()) && !sources.contains(&quoted) {
                out.push(format!("`{line}`: no test runs {program}"));
            }
            continue;
        }
        match subcommand_and_options(args) {
            Err(e) => out.push(format!("`{line}`: {e}")),
            Ok((path, options)) if !runs(&arrays, &path, &options) => out.push(format!(
                "`{line}`: no test runs `crmguard {}` with {options:?}",
                path.join(" ")
            )),
            Ok(_) => {}
        }
    }
    out
}

#[test]
fn every_command_of_the_operators_guide_is_one_the_tests_run() {
    let path = repository().join("docs/OPERATIONS.md");
    let guide = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let commands = guide_commands(&guide);
    assert!(commands.len() >= 20, "{commands:?}");
    let found = problems(&guide, &test_sources());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_check_catches_what_no_test_runs_and_what_does_not_parse() {
    let guide = "```sh\n\
                 crmguard backup create /root/x.backup   # a comment\n\
                 sudo crmguard ban add 192.0.2.1 --ttl 1h --reason \"by hand\"\n\
                 crmguard peer add alice --role sales --frobnicate\n\
                 nft list ruleset\n\
                 systemctl reload crmguard\n\
                 ```\n\
                 ```toml\nnot = \"a command\"\n```\n";
    let sources =
        r#"agent.cli(&["backup", "create", &file]); cli(&["ban", "add", "x", "--reason", "r"]);"#;
    let found = problems(guide, sources);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("no test runs `crmguard ban add`"),
        "{found:#?}"
    );
    assert!(found[1].contains("does not parse"), "{found:#?}");
    assert!(found[2].contains("no test runs nft"), "{found:#?}");
}

#[test]
fn words_keep_quoted_text_whole() {
    assert_eq!(
        words(r#"crmguard ban add 1.2.3.4 --reason "brute force" --ttl '1h'"#),
        [
            "crmguard",
            "ban",
            "add",
            "1.2.3.4",
            "--reason",
            "brute force",
            "--ttl",
            "1h"
        ]
    );
}
