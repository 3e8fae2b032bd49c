//! Running external programs: show what runs, turn a failed exit into an error that names the
//! command line, and run as root through sudo when needed.
//!
//! Everything xtask and the bench do to the machine goes through here, so the terminal shows each command
//! (prefixed with `$`) before it runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The command line as a user would type it (arguments with spaces quoted, the toolchain's
/// cargo shown as `cargo`).
pub fn display(cmd: &Command) -> String {
    let program = cmd.get_program();
    let program = if std::env::var_os("CARGO").is_some_and(|cargo| cargo == program) {
        "cargo".into()
    } else {
        program.to_string_lossy()
    };
    let mut words = vec![program.into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains([' ', '\'', '"', '$', '\\']) {
            words.push(format!("'{}'", arg.replace('\'', r"'\''")));
        } else {
            words.push(arg.into_owned());
        }
    }
    words.join(" ")
}

/// Runs `cmd` with the terminal's stdin, stdout and stderr, after echoing it.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` without echoing it and returns its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Runs `cmd` quietly and returns its stdout; a failure carries its stderr.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Runs `cmd` quietly and tells whether it exited 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    output(cmd).is_ok_and(|out| out.status.success())
}

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command that runs `program` as root: directly when xtask already is root, else through
/// `sudo` with the caller's environment and PATH (sudo resets PATH even with `-E`). `vars` are
/// set for the program in both cases. Fails when neither root nor sudo is available.
pub fn as_root(program: &str, vars: &[(&str, OsString)]) -> Result<Command> {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.envs(vars.iter().map(|(key, value)| (key, value)));
        return Ok(cmd);
    }
    if which("sudo").is_none() {
        bail!("`{program}` must run as root, and this user is not root and has no sudo");
    }
    let mut cmd = Command::new("sudo");
    cmd.arg("-E").arg("env");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.arg(assignment("PATH", &path));
    }
    for (key, value) in vars {
        cmd.arg(assignment(key, value));
    }
    cmd.arg(program);
    Ok(cmd)
}

fn assignment(key: &str, value: &OsString) -> OsString {
    let mut arg = OsString::from(key);
    arg.push("=");
    arg.push(value);
    arg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("ncat");
        cmd.args(["-c", "echo hi", "it's", ""]);
        assert_eq!(display(&cmd), r#"ncat -c 'echo hi' 'it'\''s' ''"#);
    }
}
