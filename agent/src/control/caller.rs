//! Who asks: the administrator behind a control-socket connection or a CLI command, as the
//! audit log's `actor` names them.
//!
//! The agent takes this from the kernel, not from the request: the connection's `SO_PEERCRED`
//! gives the caller's uid and pid, and `/proc/PID/loginuid` the user who logged in to the host
//! (kept across `sudo` and `su`, set by `pam_loginuid`). A request's own `by` field is
//! replaced, so a local user cannot write someone else's name into the audit log.

use std::path::Path;

/// The loginuid of a process that was not started from a login session.
const NO_LOGIN: u32 = u32::MAX;

/// `admin:USER`, the effective user, with ` (login NAME)` when the user who logged in is
/// someone else: `admin:root (login alice)` for `sudo crmguard ...` run by alice.
pub fn actor(uid: u32, pid: Option<i32>) -> String {
    let user = user_name(uid);
    let login = pid
        .and_then(|pid| loginuid(Path::new(&format!("/proc/{pid}/loginuid"))))
        .filter(|&login| login != uid);
    match login {
        Some(login) => format!("admin:{user} (login {})", user_name(login)),
        None => format!("admin:{user}"),
    }
}

/// The actor of the process itself (the CLI writing audit records when no agent runs).
pub fn this_process() -> String {
    actor(
        nix::unistd::getuid().as_raw(),
        i32::try_from(std::process::id()).ok(),
    )
}

/// The user's name, or the uid as a number when it has no entry.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// The loginuid in `path`; `None` when unset, unreadable or not a number.
fn loginuid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|&uid| uid != NO_LOGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loginuid_is_read_and_the_unset_value_ignored() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("loginuid");
        for (text, expected) in [
            ("1000", Some(1000)),
            ("4294967295", None),
            ("garbage", None),
            ("", None),
        ] {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(loginuid(&path), expected, "{text:?}");
        }
        assert_eq!(loginuid(&dir.path().join("missing")), None);
    }

    #[test]
    fn the_actor_names_the_user_and_the_login_when_they_differ() {
        // uid 0 is root everywhere; a pid that does not exist has no loginuid.
        assert_eq!(actor(0, None), "admin:root");
        assert_eq!(actor(0, Some(i32::MAX)), "admin:root");
        assert_eq!(actor(4_000_000, None), "admin:4000000");
    }
}
