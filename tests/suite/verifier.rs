//! The XDP program verifies with room to spare. The kernel's verifier walks at most 1,000,000
//! instructions of a program's paths; a program that needs more does not load, and the agent
//! then cannot start its filter. A change that brings the program near the limit fails here,
//! with the figure, rather than on a host whose kernel explores a little more.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use crmguard_lab::privileged;

/// The verifier's budget per program (`BPF_COMPLEXITY_LIMIT_INSNS`).
const VERIFIER_LIMIT: u32 = 1_000_000;

/// The most of that budget the XDP program may use: 15 % is kept for kernels whose verifier
/// prunes less, and for the next feature.
const BUDGET_USED_MAX: u32 = VERIFIER_LIMIT / 100 * 85;

#[test]
fn the_xdp_program_verifies_well_inside_the_verifiers_budget() -> Result<()> {
    if !privileged::require("verifier::the_xdp_program_verifies_well_inside_the_verifiers_budget") {
        return Ok(());
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/cgverifier-{}", std::process::id()));
    let _ = crmguard_datapath::uninstall(&dir);
    let checked = (|| -> Result<u32> {
        let (mut ebpf, _maps) =
            crmguard_datapath::load_for_test(&dir).context("loading the XDP program")?;
        let info = crmguard_datapath::program(&mut ebpf)?
            .info()
            .context("reading the program's info")?;
        info.verified_instruction_count()
            .context("the kernel does not report how many instructions it verified (Linux 5.16+)")
    })();
    let _ = crmguard_datapath::uninstall(&dir);
    let insns = checked?;
    eprintln!(
        "verifier: the XDP program took {insns} of the verifier's {VERIFIER_LIMIT} instructions"
    );
    ensure!(
        insns <= BUDGET_USED_MAX,
        "the verifier walked {insns} instructions of the XDP program, more than the \
         {BUDGET_USED_MAX} allowed (its limit is {VERIFIER_LIMIT}): make the new code a global \
         function of scalars (as cg_deny4_holds, cg_flow4_live and clock_past are), so that it is \
         verified once and not on every path"
    );
    Ok(())
}
