//! Compiles the BPF programs (C, in `ebpf/`: the XDP filter and the tc egress
//! flow recorder) into `OUT_DIR` with clang.
//!
//! The objects are embedded in the agent binary, so an installed `crmguard` needs
//! no files besides itself. `-g` is required: aya reads the map definitions
//! from BTF.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// BPF objects built from `ebpf/<name>.c`.
const PROGRAMS: &[&str] = &["xdp_firewall", "tc_egress"];

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=CLANG");

    for entry in std::fs::read_dir(&ebpf).context("reading ebpf/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "c" || e == "h") {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("include/crmguard_abi.h").display()
    );

    let multiarch = multiarch_include();
    for name in PROGRAMS {
        compile(&clang, &ebpf, &multiarch, name, &out)?;
    }
    Ok(())
}

fn compile(clang: &str, ebpf: &Path, multiarch: &Path, name: &str, out: &Path) -> Result<()> {
    let src = ebpf.join(format!("{name}.c"));
    let obj = out.join(format!("{name}.o"));
    let output = Command::new(clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{}", multiarch.display()))
        .arg(format!("-I{}", ebpf.display()))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .with_context(|| {
            format!("running `{clang}` (install it with `apt-get install clang libbpf-dev`)")
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("bpf/bpf_helpers.h") {
            bail!("libbpf headers are missing: install them with `apt-get install libbpf-dev`\n{stderr}");
        }
        bail!("clang failed to compile {}:\n{stderr}", src.display());
    }
    Ok(())
}

/// Debian keeps `asm/types.h` under the multiarch include directory, which
/// clang does not search when targeting BPF.
fn multiarch_include() -> PathBuf {
    let triple = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    PathBuf::from("/usr/include").join(triple)
}
