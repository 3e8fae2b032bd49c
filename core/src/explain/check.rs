//! The policy's own tests: each `[[test]]` of a configuration, asked as `crmguard explain` asks,
//! against the compiled policy, with no bans and no MFA session unless the test says so.
//!
//! A tunnel test without `at` is a promise for the whole week: it is asked at every minute, and
//! the first minute that breaks it is reported.

use std::fmt;
use std::time::SystemTime;

use super::{Context, Explanation};
use crate::bans::BanStore;
use crate::config::{Config, Place, PolicyTest, TestCase, WeekTime};
use crate::policy::CompiledPolicy;

/// A test the policy does not keep, shown as
/// `FILE:LINE:COL: test NAME: expected drop (default_drop), got pass (service: ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where the test's `expect` is written.
    pub place: Place,
    pub name: String,
    /// What was expected and what came instead.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: test {}: {}", self.place, self.name, self.message)
    }
}

/// Runs every test of `config` on `policy` (compiled from it). The failures, in test order.
pub fn run(config: &Config, policy: &CompiledPolicy) -> Vec<Failure> {
    let bans = BanStore::new();
    let ctx = Context {
        config,
        policy,
        bans: &bans,
        portal_listening: true,
        sessions: None,
    };
    let acl = super::acl_of(config, true).ok();
    config
        .tests
        .iter()
        .filter_map(|test| run_one(&ctx, acl.as_ref(), test).err())
        .collect()
}

fn run_one(
    ctx: &Context<'_>,
    acl: Option<&crate::acl::Acl>,
    test: &PolicyTest,
) -> Result<(), Failure> {
    let fail = |message: String| Failure {
        place: test.place.clone(),
        name: test.name.clone(),
        message,
    };
    match &test.case {
        TestCase::Outside { from, to, syn } => {
            let answer = super::outside(ctx, *from, *to, *syn, SystemTime::UNIX_EPOCH);
            verdict_kept(test, &answer).map_err(fail)
        }
        TestCase::Tunnel { peer, to, at, mfa } => {
            let Some(acl) = acl else {
                return Err(fail(super::QueryError::NoVpn.to_string()));
            };
            let packet =
                super::tunnel_packet(ctx.config, peer, *to).map_err(|e| fail(e.to_string()))?;
            let ask = |at: WeekTime| {
                let answer = super::tunnel_decision(ctx.config, acl, peer, *to, &packet, at, *mfa);
                verdict_kept(test, &answer)
            };
            match at {
                Some(at) => ask(*at).map_err(fail),
                None => {
                    for minute in WeekTime::all() {
                        ask(minute).map_err(|message| fail(format!("{message} at {minute}")))?;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// Whether `answer` is what `test` expects; if not, the message that says so.
fn verdict_kept(test: &PolicyTest, answer: &Explanation) -> Result<(), String> {
    let verdict_ok = answer.passes() == test.expect_pass;
    let reason_ok = test
        .expect_reason
        .as_ref()
        .is_none_or(|reason| *reason == answer.reason);
    if verdict_ok && reason_ok {
        return Ok(());
    }
    let expected = if test.expect_pass { "pass" } else { "drop" };
    let expected = match &test.expect_reason {
        Some(reason) => format!("{expected} ({reason})"),
        None => expected.to_owned(),
    };
    Err(format!(
        "expected {expected}, got {} ({}: {})",
        answer.verdict, answer.reason, answer.rule
    ))
}
