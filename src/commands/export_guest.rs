//! `understudy export-guest FILE`: the embedded guest image, for other VMMs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vmm::guest_image::{BUILTIN_GUEST, hex, sha256};

use super::CmdResult;

#[derive(Debug, Args)]
pub struct ExportGuestArgs {
    /// Where to write the ELF image.
    pub file: PathBuf,
}

pub fn run(args: &ExportGuestArgs) -> CmdResult {
    std::fs::write(&args.file, BUILTIN_GUEST).map_err(|e| {
        format!(
            "cannot write the guest image to {}: {e}",
            args.file.display()
        )
    })?;
    eprintln!(
        "wrote {} ({} bytes, sha256 {})",
        args.file.display(),
        BUILTIN_GUEST.len(),
        hex(&sha256(BUILTIN_GUEST))
    );
    Ok(ExitCode::SUCCESS)
}
