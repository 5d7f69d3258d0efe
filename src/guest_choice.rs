//! Which guest image to boot: a built-in workload or an ELF file.

use std::path::{Path, PathBuf};

use vmm::guest_image::{BUILTIN_GUEST, BUILTIN_WORKLOADS, hex, sha256};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot read guest image {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the log was recorded with guest image {recorded} but {what} has hash {found}; replay needs the exact image that was recorded"
    )]
    ImageMismatch {
        recorded: String,
        what: String,
        found: String,
    },
}

/// `--guest`, `--guest-arg` and `--mem-mib`: the guest a live run boots (`run`, `node`).
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Built-in workload (`ticker`, `compute`, `tcploop`, `kv`) or the path of a PVH ELF guest image.
    #[arg(long)]
    pub guest: String,
    /// Argument passed to the guest on its command line (repeatable), e.g. `ticks=10`, `user`.
    #[arg(long = "guest-arg", value_name = "ARG")]
    pub guest_args: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=3072))]
    pub mem_mib: u32,
}

impl GuestArgs {
    pub fn resolve(&self) -> Result<Guest, GuestError> {
        Guest::resolve(&self.guest, &self.guest_args)
    }
}

#[derive(Debug, Clone)]
pub struct Guest {
    /// "ticker", "compute", "tcploop", "kv", or the image path as given.
    pub name: String,
    pub image: Vec<u8>,
    pub cmdline: String,
}

impl Guest {
    /// `--guest` + `--guest-arg`s. A built-in workload name is passed to the guest as its first
    /// argument; a path boots that ELF with the arguments as its command line.
    pub fn resolve(guest: &str, args: &[String]) -> Result<Self, GuestError> {
        if BUILTIN_WORKLOADS.contains(&guest) {
            let mut words = vec![guest.to_string()];
            words.extend(args.iter().cloned());
            return Ok(Self {
                name: guest.to_string(),
                image: BUILTIN_GUEST.to_vec(),
                cmdline: words.join(" "),
            });
        }
        let path = Path::new(guest);
        let image = std::fs::read(path).map_err(|source| GuestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            name: guest.to_string(),
            image,
            cmdline: args.join(" "),
        })
    }

    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.image)
    }

    /// The guest a log was recorded with, checked against its recorded hash.
    pub fn from_log(
        name: &str,
        args: &[String],
        recorded: &[u8; 32],
        override_path: Option<&Path>,
    ) -> Result<Self, GuestError> {
        let guest = match override_path {
            Some(p) => {
                let mut g = Self::resolve(&p.to_string_lossy(), &[])?;
                g.name = name.to_string();
                g.cmdline = if BUILTIN_WORKLOADS.contains(&name) {
                    std::iter::once(name.to_string())
                        .chain(args.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" ")
                } else {
                    args.join(" ")
                };
                g
            }
            None => Self::resolve(name, args)?,
        };
        let found = guest.sha256();
        if &found != recorded {
            let what = match override_path {
                Some(p) => format!("{}", p.display()),
                None if BUILTIN_WORKLOADS.contains(&name) => {
                    "this build's built-in guest".to_string()
                }
                None => name.to_string(),
            };
            return Err(GuestError::ImageMismatch {
                recorded: hex(recorded),
                what,
                found: hex(&found),
            });
        }
        Ok(guest)
    }
}
