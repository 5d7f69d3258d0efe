//! Where the view service keeps what must survive it ([`Persisted`]): a file
//! in a data directory ([`FileStore`]), etcd (`crate::etcd`), or memory for
//! tests. Every store also says whether this process may act for the service
//! (leads) and until when, so that several viewserver processes can share
//! one stored view with at most one of them answering.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::service::Persisted;

/// Whether this process may act for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// It leads, in term `term` (a new number whenever leadership is gained,
    /// so the coordinator knows to load the stored state afresh), until
    /// `until` if the store's lease may run out.
    Leader {
        /// Changes whenever leadership is gained.
        term: u64,
        /// When the lease runs out; `None` for a store without one (a data directory).
        until: Option<Instant>,
    },
    /// Another process leads (its address, if known) or nobody does.
    Follower {
        /// The leader's address, if known.
        leader: Option<String>,
    },
}

/// Why the state could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The data directory's lock file could not be opened or locked.
    #[error("cannot lock the data directory {path}")]
    Lock {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "the data directory {path} is in use by another viewserver; give each one its own --data-dir"
    )]
    InUse {
        /// The directory.
        path: PathBuf,
    },
    /// The state file exists but could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The state file is not a stored state: refused rather than started afresh, which could boot a
    /// second copy of the guest.
    #[error(
        "{path} is not a view service state ({detail}); refusing to start from nothing, which could boot a second copy of the guest: restore the file or give a new --data-dir"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The state file has another format version than this build reads.
    #[error("{path} has state format {found}; this build reads format {FORMAT}")]
    Format {
        /// The state file.
        path: PathBuf,
        /// Its format version.
        found: u32,
    },
    /// The state could not be written durably (write, fsync or rename failed).
    #[error("cannot write {path}")]
    Write {
        /// The file that failed.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// etcd failed or could not be reached (what happened).
    #[error("etcd: {0}")]
    Etcd(String),
    /// The etcd key holds something that is not a stored state; refused as `Corrupt` is.
    #[error(
        "etcd key {key} is not a view service state ({detail}); refusing to start from nothing, which could boot a second copy of the guest: restore the key or give a new --etcd-prefix"
    )]
    EtcdCorrupt {
        /// The key.
        key: String,
        /// What is wrong with its value.
        detail: String,
    },
    /// The etcd key holds a state of another format version.
    #[error("etcd key {key} has state format {found}; this build reads format {FORMAT}")]
    EtcdFormat {
        /// The key.
        key: String,
        /// Its format version.
        found: u32,
    },
    /// A store was refused because this process no longer leads (another took over, or its lease
    /// ran out).
    #[error("this viewserver no longer leads (another took over, or its lease ran out)")]
    NotLeader,
}

/// Storage for the view service's state.
pub trait Store: Send + std::fmt::Debug {
    /// The stored state, `None` if there never was one.
    fn load(&mut self) -> Result<Option<Persisted>, StoreError>;
    /// Stores `p` durably; only then may anything that depends on it be said.
    fn save(&mut self, p: &Persisted) -> Result<(), StoreError>;
    /// Whether this process leads, as of now.
    fn leadership(&self) -> Leadership;
}

/// Keeps nothing: a service that starts from nothing every time (tests).
#[derive(Debug, Default)]
pub struct MemoryStore {
    saved: Option<Persisted>,
}

impl MemoryStore {
    /// A store that starts with `p` (as if a previous run had saved it).
    pub fn with(p: Option<Persisted>) -> Self {
        Self { saved: p }
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Option<Persisted>, StoreError> {
        Ok(self.saved.clone())
    }
    fn save(&mut self, p: &Persisted) -> Result<(), StoreError> {
        self.saved = Some(p.clone());
        Ok(())
    }
    fn leadership(&self) -> Leadership {
        Leadership::Leader {
            term: 1,
            until: None,
        }
    }
}

/// The state file's format version.
const FORMAT: u32 = 1;
const STATE_FILE: &str = "view.json";
const LOCK_FILE: &str = "LOCK";

/// The stored form (in a file or an etcd value): the state with its format
/// version, so that a later build can tell an old state from a damaged one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredState {
    format: u32,
    state: Persisted,
}

/// Why stored bytes are not a state this build reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// Not a state at all (what is wrong with it).
    Corrupt(String),
    /// A state of another format version.
    Format(u32),
}

/// `p` in its stored form (pretty JSON, newline-terminated).
pub(crate) fn encode_state(p: &Persisted) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec_pretty(&StoredState {
        format: FORMAT,
        state: p.clone(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The state in its stored form.
pub(crate) fn decode_state(bytes: &[u8]) -> Result<Persisted, Undecodable> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Undecodable::Corrupt(e.to_string()))?;
    let found = value.get("format").and_then(serde_json::Value::as_u64);
    if let Some(found) = found.filter(|f| *f != u64::from(FORMAT)) {
        return Err(Undecodable::Format(
            u32::try_from(found).unwrap_or(u32::MAX),
        ));
    }
    let stored: StoredState =
        serde_json::from_value(value).map_err(|e| Undecodable::Corrupt(e.to_string()))?;
    Ok(stored.state)
}

/// The state in `DIR/view.json`, replaced atomically (write a temporary
/// file, fsync it, rename it over, fsync the directory), with `DIR/LOCK`
/// held for the process's lifetime so that two viewservers never share it.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    _lock: File,
}

impl FileStore {
    /// Opens (creating if needed) the data directory `dir` and locks it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        lock_exclusively(&lock).map_err(|source| {
            if source.kind() == io::ErrorKind::WouldBlock {
                StoreError::InUse { path: dir.clone() }
            } else {
                StoreError::Lock {
                    path: lock_path.clone(),
                    source,
                }
            }
        })?;
        Ok(Self { dir, _lock: lock })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: released by the kernel when the process dies,
/// so a killed viewserver never leaves its directory locked.
fn lock_exclusively(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own for the duration of the
    // call; it touches no memory.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Option<Persisted>, StoreError> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        match decode_state(&bytes) {
            Ok(p) => Ok(Some(p)),
            Err(Undecodable::Corrupt(detail)) => Err(StoreError::Corrupt { path, detail }),
            Err(Undecodable::Format(found)) => Err(StoreError::Format { path, found }),
        }
    }

    fn save(&mut self, p: &Persisted) -> Result<(), StoreError> {
        let path = self.state_path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let bytes = encode_state(p).map_err(|e| write_err(io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(write_err)?;
        f.write_all(&bytes).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(write_err)?;
        // The rename is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
        Ok(())
    }

    fn leadership(&self) -> Leadership {
        Leadership::Leader {
            term: 1,
            until: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::View;

    fn state(viewnum: u64) -> Persisted {
        Persisted {
            service: 0xabc,
            view: View {
                viewnum,
                primary: "a".into(),
                primary_incarnation: 5,
                ..View::default()
            },
            acked: true,
            backup_ready: false,
            booted: true,
            finished: None,
        }
    }

    #[test]
    fn file_store_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(dir.path().join("d")).unwrap();
        assert_eq!(s.load().unwrap(), None);
        s.save(&state(3)).unwrap();
        s.save(&state(4)).unwrap();
        assert_eq!(s.load().unwrap(), Some(state(4)));
        assert!(!dir.path().join("d/view.json.tmp").exists());
        drop(s);
        let mut again = FileStore::open(dir.path().join("d")).unwrap();
        assert_eq!(again.load().unwrap(), Some(state(4)));
    }

    #[test]
    fn a_data_directory_is_used_by_one_viewserver_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileStore::open(dir.path()).unwrap();
        let err = FileStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use by another viewserver"));
    }

    #[test]
    fn a_damaged_state_file_is_refused_with_where_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(dir.path()).unwrap();
        for (bytes, want) in [
            (
                &b"{\"format\":1,\"state\":{\"service\":1"[..],
                "not a view service state",
            ),
            (b"garbage", "not a view service state"),
            (b"{\"format\":1}", "missing field `state`"),
            (b"{\"format\":9,\"state\":{}}", "state format 9"),
        ] {
            fs::write(dir.path().join(STATE_FILE), bytes).unwrap();
            let err = s.load().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(err.contains("view.json"), "{err}");
        }
    }
}
