//! Kernel command line: whitespace-separated tokens.
//!
//! The first workload name wins (`ticker`, `compute`, `exits`, `tcploop`, `kv`, `triplefault`);
//! the rest are `key=value` options or the `user` flag. `virtio_mmio.device=<size>@<addr>:<irq>`
//! (the form Linux parses) is accepted with every workload: the VMM appends it whenever it
//! attaches a network card. Anything else is an error
//! so that typos in tests fail loudly instead of silently using defaults.

use crate::workloads::tcploop;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Ticker,
    Compute,
    Exits,
    TcpLoop,
    Kv,
    TripleFault,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Ticker => "ticker",
            Workload::Compute => "compute",
            Workload::Exits => "exits",
            Workload::TcpLoop => "tcploop",
            Workload::Kv => "kv",
            Workload::TripleFault => "triplefault",
        }
    }
}

pub const DEFAULT_HZ: u32 = 100;
pub const DEFAULT_TICKS: u64 = 20;
pub const DEFAULT_TASKS: usize = 2;
pub const MAX_TASKS: usize = 4;
/// CPL0 code is emulated (~280 ns/instruction) on the target host.
pub const DEFAULT_KERNEL_ITERS: u64 = 60_000;
/// CPL3 code runs natively.
pub const DEFAULT_USER_ITERS: u64 = 200_000_000;
/// Progress lines per task when `report` is not given.
pub const DEFAULT_REPORTS: u64 = 16;
/// Keeps `secs * hz` (the deadline in ticks) far inside a u64.
pub const MAX_SECS: u64 = u32::MAX as u64;
/// The PIT reload is 16 bits: 1193182 / 65535 ~= 18.2 Hz is the floor.
pub const MIN_HZ: u32 = 19;
pub const MAX_HZ: u32 = 10_000;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub workload: Workload,
    pub hz: u32,
    pub ticks: u64,
    pub tasks: usize,
    /// compute: iterations per task; `None` only with `secs`, which then alone ends the run.
    pub iters: Option<u64>,
    /// compute: stop once this many seconds of guest time (PIT ticks / hz) have passed since
    /// boot.
    pub secs: Option<u64>,
    /// 0 means no progress lines.
    pub report: u64,
    pub user: bool,
    pub exit: Option<u8>,
    /// ticker: how it ends once its ticks are done.
    pub end: End,
    /// exits: number of port writes; tcploop: number of round trips.
    pub n: u64,
    /// exits: the port written.
    pub port: u16,
    /// The virtio-mmio network card, if the VMM attached one.
    pub nic: Option<MmioDevice>,
    /// kv: the interface's address and prefix length.
    pub ip: Option<([u8; 4], u8)>,
    /// kv: the default gateway.
    pub gw: Option<[u8; 4]>,
}

/// How a workload that finishes ends the machine (`end=N`, `end=triplefault`, `end=reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Power off with this exit code.
    PowerOff(u8),
    /// Triple-fault: a guest that dies instead of powering off.
    TripleFault,
    /// Ask the machine to reset (the keyboard controller's reset line, as Linux tries first).
    Reset,
}

/// `virtio_mmio.device=<size>@<addr>:<irq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub size: u64,
    pub addr: u64,
    pub irq: u8,
}

#[derive(Debug)]
pub enum Error<'a> {
    Unknown(&'a [u8]),
    Invalid(&'a [u8]),
}

pub fn parse(cmdline: &[u8]) -> Result<Config, Error<'_>> {
    let mut workload = None;
    let mut hz = DEFAULT_HZ;
    let mut ticks = DEFAULT_TICKS;
    let mut tasks = DEFAULT_TASKS;
    let mut iters = None;
    let mut secs = None;
    let mut report = None;
    let mut user = false;
    let mut exit = None;
    let mut end = End::PowerOff(crate::power::EXIT_OK);
    let mut n = None;
    let mut port = crate::workloads::exits::DEFAULT_PORT;
    let mut nic = None;
    let mut ip = None;
    let mut gw = None;

    for tok in cmdline
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let named = match tok {
            b"ticker" => Some(Workload::Ticker),
            b"compute" => Some(Workload::Compute),
            b"exits" => Some(Workload::Exits),
            b"tcploop" => Some(Workload::TcpLoop),
            b"kv" => Some(Workload::Kv),
            b"triplefault" => Some(Workload::TripleFault),
            _ => None,
        };
        if let Some(w) = named {
            workload.get_or_insert(w);
            continue;
        }
        if tok == b"user" {
            user = true;
            continue;
        }
        let Some(eq) = tok.iter().position(|&b| b == b'=') else {
            return Err(Error::Unknown(tok));
        };
        let (key, value) = (&tok[..eq], &tok[eq + 1..]);
        let num = || parse_u64(value).ok_or(Error::Invalid(tok));
        match key {
            b"ticks" => ticks = num()?,
            b"hz" => {
                hz = match u32::try_from(num()?) {
                    Ok(v) if (MIN_HZ..=MAX_HZ).contains(&v) => v,
                    _ => return Err(Error::Invalid(tok)),
                }
            }
            b"tasks" => {
                tasks = match usize::try_from(num()?) {
                    Ok(v) if (1..=MAX_TASKS).contains(&v) => v,
                    _ => return Err(Error::Invalid(tok)),
                }
            }
            b"iters" => {
                iters = match num()? {
                    0 => return Err(Error::Invalid(tok)),
                    v => Some(v),
                }
            }
            b"secs" => {
                secs = match num()? {
                    v @ 1..=MAX_SECS => Some(v),
                    _ => return Err(Error::Invalid(tok)),
                }
            }
            b"report" => report = Some((num()?, tok)),
            b"n" => n = Some(num()?),
            b"port" => port = u16::try_from(num()?).map_err(|_| Error::Invalid(tok))?,
            b"virtio_mmio.device" => {
                nic = Some(parse_mmio_device(value).ok_or(Error::Invalid(tok))?)
            }
            b"ip" => {
                let (addr, prefix) = match value.iter().position(|&b| b == b'/') {
                    Some(slash) => (&value[..slash], &value[slash + 1..]),
                    None => return Err(Error::Invalid(tok)),
                };
                let addr = parse_ipv4(addr).ok_or(Error::Invalid(tok))?;
                let prefix = match parse_u64(prefix) {
                    Some(p @ 1..=32) if !prefix.starts_with(b"0x") => p as u8,
                    _ => return Err(Error::Invalid(tok)),
                };
                if addr == [0; 4] || addr[0] >= 224 {
                    return Err(Error::Invalid(tok));
                }
                ip = Some((addr, prefix));
            }
            b"gw" => gw = Some(parse_ipv4(value).ok_or(Error::Invalid(tok))?),
            b"exit" => {
                exit = match u8::try_from(num()?) {
                    Ok(v) => Some(v),
                    Err(_) => return Err(Error::Invalid(tok)),
                }
            }
            b"end" if value == b"triplefault" => end = End::TripleFault,
            b"end" if value == b"reset" => end = End::Reset,
            b"end" => {
                end = match u8::try_from(num()?) {
                    Ok(v) => End::PowerOff(v),
                    Err(_) => return Err(Error::Invalid(tok)),
                }
            }
            _ => return Err(Error::Unknown(tok)),
        }
    }

    let workload = workload.unwrap_or(Workload::Compute);
    let default_iters = if user {
        DEFAULT_USER_ITERS
    } else {
        DEFAULT_KERNEL_ITERS
    };
    // With `secs` alone, time ends the run; an explicit `iters` still bounds it.
    let iters = match (iters, secs) {
        (Some(i), _) => Some(i),
        (None, Some(_)) => None,
        (None, None) => Some(default_iters),
    };
    let n = n.unwrap_or(match (workload, user) {
        (Workload::TcpLoop, false) => tcploop::DEFAULT_KERNEL_N,
        (Workload::TcpLoop, true) => tcploop::DEFAULT_USER_N,
        _ => crate::workloads::exits::DEFAULT_N,
    });
    // `report` counts iterations for compute and round trips for tcploop. A run bounded by time
    // alone reports as often as the default run does: progress lines are also what gives the
    // timer a guest exit to land on where it cannot land mid-execution (CPL3 here, any CPL on
    // hosts without precise interrupt positions), so they must keep coming.
    let reported = if workload == Workload::TcpLoop {
        n
    } else {
        iters.unwrap_or(default_iters)
    };
    if let (Workload::Compute, Some(_), Some((0, tok))) = (workload, secs, report) {
        // No progress lines, no exits: such a task would spin past its deadline forever.
        return Err(Error::Invalid(tok));
    }
    Ok(Config {
        workload,
        hz,
        ticks,
        tasks,
        iters,
        secs,
        report: report.map_or((reported / DEFAULT_REPORTS).max(1), |(r, _)| r),
        user,
        exit,
        end,
        n,
        port,
        nic,
        ip,
        gw,
    })
}

/// `A.B.C.D`, each part decimal 0..=255.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for o in out.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *o = u8::try_from(parse_u64(part)?).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `<size>@<addr>:<irq>`: size decimal or hex with an optional K/M suffix, as Linux takes it.
fn parse_mmio_device(s: &[u8]) -> Option<MmioDevice> {
    let at = s.iter().position(|&b| b == b'@')?;
    let colon = s.iter().rposition(|&b| b == b':')?;
    if colon < at {
        return None;
    }
    let (size, scale) = match s[..at].split_last()? {
        (b'k' | b'K', rest) => (rest, 1 << 10),
        (b'm' | b'M', rest) => (rest, 1 << 20),
        _ => (&s[..at], 1),
    };
    let size = parse_u64(size)?.checked_mul(scale)?;
    let addr = parse_u64(&s[at + 1..colon])?;
    let irq = u8::try_from(parse_u64(&s[colon + 1..])?).ok()?;
    if size == 0 || irq > 15 {
        return None;
    }
    Some(MmioDevice { size, addr, irq })
}

/// Decimal, or hexadecimal with `0x` (port numbers are written in hex).
fn parse_u64(s: &[u8]) -> Option<u64> {
    let (s, radix) = match s.strip_prefix(b"0x") {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = char::from(b).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}
