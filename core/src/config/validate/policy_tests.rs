//! `[[test]]` and `[tests] files`: the policy's own tests, checked like the rest of the file.
//!
//! A test names what is sent (`from` a source address, or as a `peer` through the tunnel), `to`
//! which port, and what the policy promises (`expect`, and optionally the `reason`). Running the
//! tests is [`crate::explain::check`]'s job; this module only makes sure each one is well formed,
//! so that a test cannot pass by asking nothing.

use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;

use super::super::error::{ConfigError, Source};
use super::super::raw::{RawTest, RawTestFile, RawTests};
use super::super::{Place, PolicyTest, Probe, TestCase, WeekTime};
use super::{Check, Checked, Seen};
use crate::abi::Reason;
use crate::acl;

/// Checks the `[[test]]` entries of one file. The peers they name are checked later, against
/// every configured peer: each goes to `peer_refs` with the error to report if it is missing.
pub(super) fn tests(
    c: &mut Check,
    raw: &[RawTest],
    peer_refs: &mut Vec<(String, ConfigError)>,
) -> Vec<PolicyTest> {
    let mut seen = Seen::new("test");
    let mut tests = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("test[{i}]");
        if let Some(test) = test(c, raw, &key, &mut seen, peer_refs) {
            tests.push(test);
        }
    }
    tests
}

fn test(
    c: &mut Check,
    raw: &RawTest,
    key: &str,
    seen: &mut Seen,
    peer_refs: &mut Vec<(String, ConfigError)>,
) -> Option<PolicyTest> {
    let name_key = format!("{key}.name");
    let name = raw.name.get_ref().trim();
    let name_ok = if name.is_empty() {
        c.fail(&raw.name.span(), &name_key, "a test needs a name");
        false
    } else {
        seen.check(c, name, &raw.name, &name_key)
    };
    let to = match Probe::parse(raw.to.get_ref()) {
        Ok(to) => Some(to),
        Err(message) => {
            c.fail(&raw.to.span(), &format!("{key}.to"), message);
            None
        }
    };
    let case = match (&raw.from, &raw.peer) {
        (Some(from), None) => outside(c, raw, key, from, to?),
        (None, Some(peer)) => tunnel(c, raw, key, peer, to?, peer_refs),
        (Some(_), Some(peer)) => {
            c.fail(
                &peer.span(),
                &format!("{key}.peer"),
                "a test is sent either `from` an address outside or by a `peer`, not both",
            );
            None
        }
        (None, None) => {
            c.fail(
                &raw.name.span(),
                key,
                "say who sends the packet: `from = \"ADDRESS\"` (from outside) or `peer = \"NAME\"` (through the tunnel)",
            );
            None
        }
    };
    let expect_key = format!("{key}.expect");
    let expect_pass = match raw.expect.get_ref().as_str() {
        "pass" => Some(true),
        "drop" => Some(false),
        other => {
            c.fail(
                &raw.expect.span(),
                &expect_key,
                format!("`{other}` is not a verdict; write \"pass\" or \"drop\""),
            );
            None
        }
    };
    let case = case?;
    let expect_pass = expect_pass?;
    let expect_reason = match &raw.reason {
        Some(reason) => Some(checked_reason(
            c,
            reason,
            &format!("{key}.reason"),
            &case,
            expect_pass,
        )?),
        None => None,
    };
    if !name_ok {
        return None;
    }
    let (line, column) = c.src.position(raw.expect.span().start);
    Some(PolicyTest {
        name: name.to_owned(),
        place: Place {
            file: c.src.file.to_path_buf(),
            line,
            column,
        },
        case,
        expect_pass,
        expect_reason,
    })
}

fn outside(
    c: &mut Check,
    raw: &RawTest,
    key: &str,
    from: &super::Text,
    to: Probe,
) -> Option<TestCase> {
    let from_key = format!("{key}.from");
    let addr = match from.get_ref().parse::<IpAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.fail(
                &from.span(),
                &from_key,
                format!("`{}` is not an IP address", from.get_ref()),
            );
            None
        }
    };
    let mut ok = true;
    if let Some(syn) = &raw.syn {
        if !matches!(to, Probe::Tcp(_)) {
            c.fail(
                &syn.span(),
                &format!("{key}.syn"),
                "`syn` applies to TCP only",
            );
            ok = false;
        }
    }
    for (value, name) in [
        (raw.at.as_ref().map(|a| a.span()), "at"),
        (raw.mfa.as_ref().map(|m| m.span()), "mfa"),
    ] {
        if let Some(span) = value {
            c.fail(
                &span,
                &format!("{key}.{name}"),
                format!("`{name}` applies to tests sent by a `peer` through the tunnel"),
            );
            ok = false;
        }
    }
    let syn = raw.syn.as_ref().is_some_and(|syn| *syn.get_ref());
    (ok).then_some(TestCase::Outside {
        from: addr?,
        to,
        syn,
    })
}

fn tunnel(
    c: &mut Check,
    raw: &RawTest,
    key: &str,
    peer: &super::Text,
    to: Probe,
    peer_refs: &mut Vec<(String, ConfigError)>,
) -> Option<TestCase> {
    let mut ok = true;
    if let Some(syn) = &raw.syn {
        c.fail(
            &syn.span(),
            &format!("{key}.syn"),
            "`syn` applies to tests sent `from` outside; a peer's packets are decided by service",
        );
        ok = false;
    }
    let at = match &raw.at {
        Some(at) => match WeekTime::parse(at.get_ref()) {
            Ok(at) => Some(at),
            Err(err) => {
                c.fail(&at.span(), &format!("{key}.at"), err);
                ok = false;
                None
            }
        },
        None => None,
    };
    let name = peer.get_ref().clone();
    peer_refs.push((
        name.clone(),
        c.src.error(
            &peer.span(),
            &format!("{key}.peer"),
            format!("no peer `{name}` is configured (inline or in the peers file)"),
        ),
    ));
    ok.then_some(TestCase::Tunnel {
        peer: name,
        to,
        at,
        mfa: raw.mfa.as_ref().is_some_and(|mfa| *mfa.get_ref()),
    })
}

/// The reason names a test of `case` may expect, with whether each comes with a pass.
fn reasons(case: &TestCase) -> Vec<(&'static str, bool)> {
    match case {
        TestCase::Outside { .. } => Reason::ALL
            .iter()
            .map(|reason| (reason.name(), reason.is_pass()))
            .collect(),
        TestCase::Tunnel { .. } => acl::ALLOW_REASONS
            .iter()
            .map(|name| (*name, true))
            .chain(acl::DenyReason::ALL.iter().map(|r| (r.as_str(), false)))
            .collect(),
    }
}

fn checked_reason(
    c: &mut Check,
    reason: &super::Text,
    key: &str,
    case: &TestCase,
    expect_pass: bool,
) -> Option<String> {
    let name = reason.get_ref();
    let known = reasons(case);
    let layer = match case {
        TestCase::Outside { .. } => "a packet from outside",
        TestCase::Tunnel { .. } => "a peer's packet",
    };
    match known.iter().find(|(known, _)| known == name) {
        Some((_, pass)) if *pass == expect_pass => Some(name.clone()),
        Some((_, pass)) => {
            let verdict = if *pass { "pass" } else { "drop" };
            c.fail(
                &reason.span(),
                key,
                format!(
                    "`{name}` is a reason to {verdict}, but the test expects the other verdict"
                ),
            );
            None
        }
        None => {
            let names: Vec<&str> = known.iter().map(|(name, _)| *name).collect();
            c.fail(
                &reason.span(),
                key,
                format!(
                    "`{name}` is not a reason for {layer}; the reasons are {}",
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// `[tests] files`, resolved against the configuration file's directory, with their spans.
pub(super) fn files(c: &mut Check, raw: &RawTests) -> (Vec<PathBuf>, Vec<Range<usize>>) {
    let mut paths = Vec::new();
    let mut spans = Vec::new();
    for (i, file) in raw.files.iter().flat_map(|f| f.get_ref()).enumerate() {
        if let Some(path) = c.path(file, &format!("tests.files[{i}]")) {
            paths.push(path);
            spans.push(file.span());
        }
    }
    (paths, spans)
}

/// Reads each file of `[tests] files` and adds its tests after those of the configuration. A
/// file that cannot be read is reported at the key that names it; a bad test in the file itself.
pub(in crate::config) fn test_files(
    src: &Source,
    checked: &mut Checked,
    read: &mut crate::config::ReadFile<'_>,
) {
    let files = checked.config.test_files.clone();
    let spans = checked.test_file_spans.clone();
    for (i, (path, span)) in files.iter().zip(spans).enumerate() {
        let text = match read(path) {
            Ok(text) => text,
            Err(err) => {
                checked.errors.push(src.error(
                    &span,
                    &format!("tests.files[{i}]"),
                    format!("cannot read test file {}: {err}", path.display()),
                ));
                continue;
            }
        };
        let file_src = Source::new(path, &text);
        let raw = match file_src.deserialize::<RawTestFile>() {
            Ok(raw) => raw,
            Err(err) => {
                checked.errors.push(err);
                continue;
            }
        };
        let mut c = Check {
            src: &file_src,
            errors: &mut checked.errors,
        };
        let more = tests(&mut c, &raw.test, &mut checked.test_peer_refs);
        checked.config.tests.extend(more);
    }
}

/// Reports the tests that name a peer the configuration and the peers file do not.
pub(in crate::config) fn test_peers(checked: &mut Checked) {
    for (peer, error) in std::mem::take(&mut checked.test_peer_refs) {
        if checked.config.peer(&peer).is_none() {
            checked.errors.push(error);
        }
    }
}
