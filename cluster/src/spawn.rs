//! `understudy viewserver` and `understudy node` as child processes: started with the flags
//! that the demo and the end-to-end tests give them, their output kept ([`Spawned`]), their
//! address learnt before they are handed over, killed when dropped.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Sender, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use crate::capture::{Captured, Line, Stream, Taps, capture};
use crate::events::{EventsError, EventsFile};
use crate::netns::{Net, NetError};
use crate::process::{Process, ProcessError, Signal};
use crate::wait;

/// How long a node has to say it started (its `started` event).
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed process's pipes have to deliver what it wrote before it died.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The line a viewserver starts its stderr with, before its address.
const LISTENING_ON: &str = "viewserver: listening on ";

/// What went wrong starting a viewserver or a node.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Its command could not be made: the host is not on the network.
    #[error("{what}: {source}")]
    Place {
        /// The process (`node A`, `viewserver vs`).
        what: String,
        /// What the network said.
        #[source]
        source: NetError,
    },
    /// The process could not be started.
    #[error("{what}: {source}")]
    Process {
        /// The process.
        what: String,
        /// What went wrong.
        #[source]
        source: ProcessError,
    },
    /// Its output cannot be read (no pipe, or no reader thread).
    #[error("{what}: reading its output: {source}")]
    Capture {
        /// The process.
        what: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Its events file cannot be read.
    #[error("{what}: {source}")]
    Events {
        /// The process.
        what: String,
        /// What went wrong.
        #[source]
        source: EventsError,
    },
    /// It did not say in time that it runs, and where (it was killed).
    #[error("{what} did not say {expected} within {timeout:?}; its log:\n{log}")]
    NotStarted {
        /// The process.
        what: String,
        /// What it should have said.
        expected: String,
        /// How long it had.
        timeout: Duration,
        /// Its stderr so far.
        log: String,
    },
}

/// Where a child runs: on this machine's own network, or on a host of a [`Net`].
#[derive(Debug, Clone, Default)]
pub enum Place {
    /// In our own network namespace (loopback).
    #[default]
    Local,
    /// Inside `host`'s namespace of `net`.
    Host {
        /// The network.
        net: Arc<Net>,
        /// The host.
        host: String,
    },
}

/// Runs the `understudy` binary: tests pass `env!("CARGO_BIN_EXE_understudy")`, the demo
/// `std::env::current_exe()`.
#[derive(Debug, Clone)]
pub struct Understudy {
    exe: PathBuf,
    lines: Option<Sender<Line>>,
}

impl Understudy {
    /// The binary at `exe`.
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        Self {
            exe: exe.into(),
            lines: None,
        }
    }

    /// Also sends every line the children started from now on write (stdout and stderr) to
    /// `lines`, as it arrives, for a caller that shows them.
    pub fn with_lines(mut self, lines: Sender<Line>) -> Self {
        self.lines = Some(lines);
        self
    }

    /// The binary.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// A command that runs the binary at `place`.
    pub fn command(&self, place: &Place) -> Result<Command, NetError> {
        match place {
            Place::Local => Ok(Command::new(&self.exe)),
            Place::Host { net, host } => net.command(host, &self.exe),
        }
    }

    /// [`Self::command`], its error told as `what`'s.
    fn command_for(&self, what: &str, place: &Place) -> Result<Command, SpawnError> {
        self.command(place).map_err(|source| SpawnError::Place {
            what: what.to_string(),
            source,
        })
    }

    /// Starts `label`'s process from `cmd` (its arguments given) with stdin closed, stderr
    /// kept and stdout kept if `stdout`; `first` gets its first stderr line.
    fn spawn(
        &self,
        label: &str,
        what: &str,
        mut cmd: Command,
        stdout: bool,
        first: Option<SyncSender<String>>,
    ) -> Result<Spawned<()>, SpawnError> {
        cmd.stdin(Stdio::null())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        let mut process = Process::spawn(&mut cmd).map_err(|source| SpawnError::Process {
            what: what.to_string(),
            source,
        })?;
        let capture_error = |source| SpawnError::Capture {
            what: what.to_string(),
            source,
        };
        let no_pipe = || capture_error(io::Error::other("no pipe"));
        let taps = |first| Taps {
            lines: self.lines.clone(),
            first,
        };
        let child = process.child_mut();
        let out = match child.stdout.take() {
            Some(s) => capture(label, Stream::Stdout, s, taps(None)).map_err(capture_error)?,
            None if stdout => return Err(no_pipe()),
            None => Captured::ended(),
        };
        let err = child.stderr.take().ok_or_else(no_pipe)?;
        let log = capture(label, Stream::Stderr, err, taps(first)).map_err(capture_error)?;
        Ok(Spawned {
            label: label.to_string(),
            addr: String::new(),
            process,
            out,
            log,
            role: (),
        })
    }

    /// Starts `understudy viewserver` as `spec` says; returns once it said where it listens.
    pub fn viewserver(&self, spec: ViewserverSpec) -> Result<Viewserver, SpawnError> {
        let what = format!("viewserver {}", spec.label);
        let mut cmd = self.command_for(&what, &spec.place)?;
        cmd.args(["viewserver", "--listen", &spec.listen])
            .args(["--ping-interval-ms", &spec.ping_ms.to_string()]);
        match &spec.store {
            Store::DataDir(dir) => cmd.arg("--data-dir").arg(dir),
            Store::Etcd { urls, prefix } => {
                cmd.args(["--etcd", urls.as_str(), "--etcd-prefix", prefix.as_str()])
            }
        };
        let events = spec.events.as_ref().map(EventsFile::new);
        if let Some(e) = &events {
            cmd.arg("--events").arg(e.path());
        }
        cmd.args(&spec.args);
        let events_error = |source| SpawnError::Events {
            what: what.clone(),
            source,
        };
        // A restart appends to the same events file: only what comes after counts.
        let from = match &events {
            Some(e) => e.count().map_err(events_error)?,
            None => 0,
        };
        let (first_tx, first_rx) = sync_channel(1);
        let first = events.is_none().then_some(first_tx);
        let mut spawned = self.spawn(&spec.label, &what, cmd, false, first)?;
        // Where it listens: its `listening` event with an events file, else its first line.
        let addr = match &events {
            Some(e) => e
                .wait_event("listening", from, spec.start_timeout)
                .map_err(events_error)?
                .and_then(|l| l["addr"].as_str().map(str::to_string)),
            None => first_rx
                .recv_timeout(spec.start_timeout)
                .ok()
                .and_then(|l| l.strip_prefix(LISTENING_ON).map(str::to_string)),
        };
        let Some(addr) = addr else {
            return Err(spawned.not_started(what, "where it listens", spec.start_timeout));
        };
        spawned.addr = addr;
        Ok(spawned.with_role(ViewserverRole {
            understudy: self.clone(),
            spec,
        }))
    }

    /// Starts `understudy node` as `spec` says; returns once it said it started (and its name).
    pub fn node(&self, spec: NodeSpec) -> Result<Node, SpawnError> {
        let what = format!("node {}", spec.label);
        let transcript = spec.dir.join(format!("{}.transcript", spec.label));
        let events = EventsFile::new(spec.dir.join(format!("{}.events", spec.label)));
        let mut cmd = self.command_for(&what, &spec.place)?;
        cmd.args([
            "node",
            "--viewserver",
            &spec.viewserver,
            "--listen",
            &spec.listen,
        ])
        .arg("--events")
        .arg(events.path())
        .args(["--guest", &spec.guest])
        .args(["--ping-interval-ms", &spec.ping_ms.to_string()])
        .arg("--transcript")
        .arg(&transcript);
        if let Some(n) = &spec.name {
            cmd.args(["--name", n]);
        }
        if let Some(m) = spec.mem_mib {
            cmd.args(["--mem-mib", &m.to_string()]);
        }
        if let Some(t) = &spec.tap {
            cmd.args(["--tap", t]);
        }
        cmd.args(&spec.extra_args);
        for a in &spec.guest_args {
            cmd.args(["--guest-arg", a]);
        }
        if spec.clear_log_filter {
            cmd.env_remove("UNDERSTUDY_LOG");
        }
        let events_error = |source| SpawnError::Events {
            what: what.clone(),
            source,
        };
        // An events file kept from an earlier run: only what comes after counts.
        let from = events.count().map_err(events_error)?;
        let mut spawned = self.spawn(&spec.label, &what, cmd, true, None)?;
        let name = events
            .wait_event("started", from, NODE_START_TIMEOUT)
            .map_err(events_error)?
            .and_then(|e| e["name"].as_str().map(str::to_string));
        let Some(name) = name else {
            let expected = "that it started, and its name";
            return Err(spawned.not_started(what, expected, NODE_START_TIMEOUT));
        };
        spawned.addr = name;
        Ok(spawned.with_role(NodeRole { transcript, events }))
    }
}

/// A process of the binary that we started: its address, what it wrote, its PID (ours to
/// signal until it is reaped), and what its role adds (`R`: [`Viewserver`], [`Node`]).
/// Dropping it kills it.
#[derive(Debug)]
pub struct Spawned<R> {
    label: String,
    addr: String,
    process: Process,
    out: Captured,
    log: Captured,
    role: R,
}

impl<R> Spawned<R> {
    /// Kills it, for not having said `expected` within `timeout`: the error saying so.
    fn not_started(mut self, what: String, expected: &str, timeout: Duration) -> SpawnError {
        let _ = self.kill();
        SpawnError::NotStarted {
            what,
            expected: expected.to_string(),
            timeout,
            log: self.log(),
        }
    }

    fn with_role<S>(self, role: S) -> Spawned<S> {
        Spawned {
            label: self.label,
            addr: self.addr,
            process: self.process,
            out: self.out,
            log: self.log,
            role,
        }
    }

    /// The label it was started with (files and [`Line::who`]).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its address: where a viewserver listens, a node's name for the view service.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether it was reaped (killed, or waited for): it runs no more.
    pub fn reaped(&self) -> bool {
        self.process.reaped()
    }

    /// Sends it `signal` (refused once it is reaped).
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        self.process.signal(signal)
    }

    /// SIGKILLs and reaps it, then waits (briefly) until its pipes delivered everything it
    /// wrote before it died.
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        let status = self.process.kill()?;
        self.drain();
        Ok(status)
    }

    /// Waits up to `timeout` for it to exit; once it has, reaps it and lets its pipes deliver
    /// everything. `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait()? {
                self.drain();
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until it exits and reaps it, then lets its pipes deliver everything.
    pub fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        let status = self.process.wait()?;
        self.drain();
        Ok(status)
    }

    fn drain(&self) {
        self.out.wait_closed(DRAIN_TIMEOUT);
        self.log.wait_closed(DRAIN_TIMEOUT);
    }

    /// Its stdout so far (a node's released output), byte for byte.
    pub fn out(&self) -> Vec<u8> {
        self.out.bytes()
    }

    /// How many bytes of stdout so far.
    pub fn out_len(&self) -> usize {
        self.out.len()
    }

    /// Its stderr so far: its log, for people and failure messages.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits (up to `timeout`) until its log from byte `from` on contains `needle`.
    pub fn wait_log(&self, needle: &str, from: usize, timeout: Duration) -> bool {
        wait::poll(timeout, wait::POLL, || {
            self.log()
                .get(from..)
                .is_some_and(|l| l.contains(needle))
                .then_some(())
        })
        .is_some()
    }
}

/// Where a viewserver keeps the service's state.
#[derive(Debug, Clone)]
pub enum Store {
    /// A data directory (`--data-dir`).
    DataDir(PathBuf),
    /// etcd (`--etcd URLS --etcd-prefix PREFIX`).
    Etcd {
        /// The members' client URLs, comma-separated.
        urls: String,
        /// The prefix of the service's keys.
        prefix: String,
    },
}

/// How to start a viewserver.
#[derive(Debug, Clone)]
pub struct ViewserverSpec {
    /// Its label, for [`Line::who`] and messages.
    pub label: String,
    /// Where it runs.
    pub place: Place,
    /// `--listen` (port 0: any).
    pub listen: String,
    /// `--ping-interval-ms`.
    pub ping_ms: u64,
    /// Where it keeps the state.
    pub store: Store,
    /// `--events`: with a file, its address is read from its `listening` event; without, from
    /// its first line on stderr.
    pub events: Option<PathBuf>,
    /// More arguments, after the others.
    pub args: Vec<OsString>,
    /// How long it has to say where it listens.
    pub start_timeout: Duration,
}

impl ViewserverSpec {
    /// A viewserver labelled `vs` on `listen` here, pinging every `ping_ms`, keeping its state
    /// in `store`, without events or more arguments, with 30 s to start.
    pub fn new(listen: impl Into<String>, ping_ms: u64, store: Store) -> Self {
        Self {
            label: "vs".to_string(),
            place: Place::Local,
            listen: listen.into(),
            ping_ms,
            store,
            events: None,
            args: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// What a viewserver adds to its process: how it was started, to start it again.
#[derive(Debug)]
pub struct ViewserverRole {
    understudy: Understudy,
    spec: ViewserverSpec,
}

/// A viewserver we started.
pub type Viewserver = Spawned<ViewserverRole>;

impl Viewserver {
    /// How it was started.
    pub fn spec(&self) -> &ViewserverSpec {
        &self.role.spec
    }

    /// SIGKILLs it (if it still runs) and starts it again as it was started, on the address it
    /// had: same place, same state, same events file.
    pub fn restart(&mut self) -> Result<(), SpawnError> {
        let what = format!("viewserver {}", self.label);
        self.kill()
            .map_err(|source| SpawnError::Process { what, source })?;
        let spec = ViewserverSpec {
            listen: self.addr.clone(),
            ..self.role.spec.clone()
        };
        *self = self.role.understudy.viewserver(spec)?;
        Ok(())
    }
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its label: its files are `DIR/LABEL.transcript` and `DIR/LABEL.events`, and its lines
    /// are [`Line::who`] `LABEL`.
    pub label: String,
    /// Where its files go.
    pub dir: PathBuf,
    /// Where it runs.
    pub place: Place,
    /// `--viewserver`: the viewservers' addresses, comma-separated.
    pub viewserver: String,
    /// `--listen`: its logging channel's address (port 0: any).
    pub listen: String,
    /// `--name`: its name for the view service, if not its address (e.g. a proxy's).
    pub name: Option<String>,
    /// `--guest`: the built-in workload.
    pub guest: String,
    /// `--guest-arg`s.
    pub guest_args: Vec<String>,
    /// `--ping-interval-ms`.
    pub ping_ms: u64,
    /// `--mem-mib`, if not the node's default.
    pub mem_mib: Option<u32>,
    /// `--tap`: the TAP device of the guest's network card, if it has one (with the default
    /// `--mac`, the same on every node).
    pub tap: Option<String>,
    /// Remove `UNDERSTUDY_LOG` from its environment, so that its log is the default one
    /// whatever the caller's is set to.
    pub clear_log_filter: bool,
    /// More arguments, last (e.g. tuning a test needs).
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// A node labelled `label` with its files in `dir`, here on any loopback port, running
    /// `guest` (no arguments) with the viewserver(s) at `viewserver`, pinging every `ping_ms`.
    pub fn new(
        label: impl Into<String>,
        dir: impl Into<PathBuf>,
        viewserver: impl Into<String>,
        guest: impl Into<String>,
        ping_ms: u64,
    ) -> Self {
        Self {
            label: label.into(),
            dir: dir.into(),
            place: Place::Local,
            viewserver: viewserver.into(),
            listen: "127.0.0.1:0".to_string(),
            name: None,
            guest: guest.into(),
            guest_args: Vec::new(),
            ping_ms,
            mem_mib: None,
            tap: None,
            clear_log_filter: false,
            extra_args: Vec::new(),
        }
    }
}

/// What a node adds to its process: its transcript and events files.
#[derive(Debug)]
pub struct NodeRole {
    transcript: PathBuf,
    events: EventsFile,
}

/// A node we started.
pub type Node = Spawned<NodeRole>;

impl Node {
    /// Its events file (`--events`).
    pub fn events_file(&self) -> &EventsFile {
        &self.role.events
    }

    /// Its transcript file (`--transcript`): the guest's console from its boot, as this node
    /// ran or replayed it.
    pub fn transcript_path(&self) -> &Path {
        &self.role.transcript
    }

    /// Its transcript so far (empty before it is created).
    pub fn read_transcript(&self) -> io::Result<Vec<u8>> {
        match std::fs::read(&self.role.transcript) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            read => read,
        }
    }
}
