//! Builds the freestanding guest kernel (`guest/`, its own workspace) and hands its ELF to the
//! VMM, which embeds it. The guest needs its own target flags (no start files, static, linker
//! script), so it is a nested cargo build rather than a workspace member. It is tried offline
//! first; only if the guest's locked dependencies (smoltcp) are not in cargo's cache yet, as on
//! a fresh machine, does it fetch them (`cargo fetch --locked` in guest/) and try again, so
//! `cargo build` works on a fresh clone without a separate step.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guest_dir = manifest.parent().expect("vmm/ has a parent").join("guest");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for path in [
        "Cargo.toml",
        "Cargo.lock",
        "link.ld",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    // Every source file by name, not just the directory, so no edit can leave a stale guest
    // embedded in the VMM.
    let mut dirs = vec![guest_dir.join("src")];
    while let Some(dir) = dirs.pop() {
        println!("cargo:rerun-if-changed={}", dir.display());
        for entry in std::fs::read_dir(&dir)
            .expect("reading guest/src")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let guest_cargo = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.args(args).current_dir(&guest_dir);
        // The outer build's settings must not leak into the guest's: its flags come from
        // guest/.cargo/config.toml, and host RUSTFLAGS would break the freestanding link.
        for (key, _) in env::vars() {
            if (key.starts_with("CARGO_") && key != "CARGO_HOME")
                || key == "RUSTFLAGS"
                || key == "RUSTDOCFLAGS"
            {
                cmd.env_remove(&key);
            }
        }
        cmd.status().expect("running cargo for the guest").success()
    };
    let build = ["build", "--release", "--locked", "--offline"];
    if !guest_cargo(&build) {
        println!("cargo:warning=fetching the guest's dependencies (guest/Cargo.lock) and retrying");
        assert!(
            guest_cargo(&["fetch", "--locked"]),
            "fetching the guest kernel's dependencies (guest/Cargo.lock) failed: is the crates.io \
             registry reachable?"
        );
        assert!(
            guest_cargo(&build),
            "building the guest kernel (guest/) failed"
        );
    }

    let elf = guest_dir.join("target/x86_64-unknown-linux-gnu/release/understudy-guest");
    let dest = out_dir.join("understudy-guest.elf");
    std::fs::copy(&elf, &dest).unwrap_or_else(|e| panic!("copying {} failed: {e}", elf.display()));
}
