//! A TAP device: the host end of the guest's NIC. Plain Ethernet frames in and out, link and
//! carrier control; no device logic.
//!
//! Facts this module relies on, measured on the project's kernel (6.18); the tests below check
//! all of them except the timings and what a bridge does:
//! - `TUNSETIFF` with `IFF_TAP | IFF_NO_PI` creates the TAP if no interface has the name in the
//!   opener's network namespace and attaches to it if it is a single-queue TAP. The errors:
//!   `EPERM` without `CAP_NET_ADMIN` (creating, or attaching a TAP owned by another user;
//!   attaching a persistent TAP that has no owner needs no capability),
//!   `EBUSY` when another descriptor is attached, `EINVAL` when the name is a TUN, a
//!   multi-queue TAP, a veth, the loopback interface or any other non-TAP interface.
//! - A TAP made by `TUNSETIFF` is not persistent: the kernel deletes it when the last descriptor
//!   attached to it closes. One made by `ip tuntap add` is persistent and stays.
//! - Writing to a TAP whose link is down fails with `EIO`; a frame shorter than an Ethernet
//!   header fails with `EINVAL`; the kernel accepts frames longer than the MTU (which a bridge
//!   then drops), so [`Tap::write_frame`] refuses them itself.
//! - A read into a buffer shorter than the frame returns the buffer's length and discards the
//!   rest of the frame, so [`Tap::read_frame`] reads into one spare byte more to notice.
//! - A TAP attached with `IFF_NO_CARRIER` queues nothing the host sends (and a bridge floods
//!   nothing to it) from the start. Turning the carrier off later takes effect only once the
//!   kernel's link watcher has processed the change, asynchronously: frames sent in between
//!   are still queued (measured: 15 ms to 1 s; the link watcher batches events up to a second).
//!   Turning it on is asynchronous too: frames sent just after are dropped.
//! - Once the interface is deleted under an open descriptor, `poll` reports `POLLERR` and reads
//!   and writes fail with `EBADFD`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int, c_short};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Length of an Ethernet header (two MACs and the ethertype), which the MTU does not count.
pub const ETH_HLEN: usize = 14;
/// Longest interface name in bytes: `IFNAMSIZ` (16) less the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The ioctl type of the TUN/TAP driver (`'T'`).
const TUNTAP: u32 = b'T' as u32;
// The macros declare `pub fn`s; a private module keeps them out of the crate's API.
mod ioctls {
    use std::os::raw::{c_int, c_uint};
    vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, super::TUNTAP, 202, c_int);
    vmm_sys_util::ioctl_ior_nr!(TUNGETIFF, super::TUNTAP, 210, c_uint);
    vmm_sys_util::ioctl_iow_nr!(TUNSETCARRIER, super::TUNTAP, 226, c_int);
}
use ioctls::{TUNGETIFF, TUNSETCARRIER, TUNSETIFF};

/// `IFF_PERSIST`, as `TUNGETIFF` reports it (libc does not define it).
const IFF_PERSIST: c_int = 0x0800;
/// `ETHTOOL_GDRVINFO`: which driver runs an interface.
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// What is wrong with a TAP name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error(
        "the name is {len} bytes long; an interface name has at most 15 \
         (IFNAMSIZ is 16 with the terminating NUL)"
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// `.` or `..`.
    #[error("'.' and '..' are not interface names")]
    Dot,
    /// The name contains `/`.
    #[error("the name contains '/' (interfaces appear as /sys/class/net/NAME)")]
    Slash,
    /// The name contains a NUL byte.
    #[error("the name contains a NUL byte")]
    Nul,
    /// The name contains whitespace.
    #[error("the name contains whitespace")]
    Whitespace,
    /// The name contains `:`.
    #[error("the name contains ':' (the kernel reserves it for interface aliases)")]
    Colon,
    /// The name contains `%`.
    #[error(
        "the name contains '%' (the kernel would take it as a pattern such as tap%d and pick another name)"
    )]
    Percent,
}

/// Checks that `name` is one the kernel accepts as an interface name, as exactly that name.
pub fn validate_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameProblem::TooLong { len: name.len() });
    }
    if name == "." || name == ".." {
        return Err(NameProblem::Dot);
    }
    if name.contains('/') {
        return Err(NameProblem::Slash);
    }
    if name.contains('\0') {
        return Err(NameProblem::Nul);
    }
    // The kernel's isspace also takes vertical tab and byte 0xa0 (part of some UTF-8 letters).
    if name.chars().any(char::is_whitespace) || name.bytes().any(|b| b == 0x0b || b == 0xa0) {
        return Err(NameProblem::Whitespace);
    }
    if name.contains(':') {
        return Err(NameProblem::Colon);
    }
    if name.contains('%') {
        return Err(NameProblem::Percent);
    }
    Ok(())
}

/// Why a TAP could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("invalid TAP name {name:?}: {problem}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: NameProblem,
    },
    /// `/dev/net/tun` is missing (`ENOENT`), or no driver is behind it (`ENODEV`, `ENXIO`).
    #[error(
        "{TUN_PATH} is missing or has no driver behind it: load the kernel's `tun` module \
         (a container must be given the device)"
    )]
    TunMissing {
        /// What opening it said.
        source: io::Error,
    },
    /// Opening `/dev/net/tun` was refused (`EACCES`, `EPERM`).
    #[error(
        "no permission to open {TUN_PATH}: run as root, or give this user read/write access to it"
    )]
    TunAccess {
        /// What opening it said.
        source: io::Error,
    },
    /// The kernel refused an operation that needs `CAP_NET_ADMIN` (`EPERM`).
    #[error(
        "no permission to {action} TAP {name}: this needs CAP_NET_ADMIN (run as root, or have root \
         make the TAP with `ip tuntap add {name} mode tap user USER` and bring it up)"
    )]
    NotPermitted {
        /// The interface.
        name: String,
        /// What was refused ("create or attach", "bring up", ...).
        action: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// An interface of that name exists in this network namespace and is not a TAP (`EINVAL`).
    #[error("{name} exists in this network namespace and is not a TAP device: it is {kind}")]
    NotTap {
        /// The interface.
        name: String,
        /// What it is, as far as the kernel says.
        kind: String,
    },
    /// The name is a TAP made with `multi_queue`; understudy attaches one queue (`EINVAL`).
    #[error(
        "{name} is a multi-queue TAP and understudy attaches a single queue: recreate it with \
         `ip tuntap add {name} mode tap` (without multi_queue)"
    )]
    MultiQueue {
        /// The interface.
        name: String,
    },
    /// Another descriptor (normally another process) is attached to the TAP (`EBUSY`).
    #[error(
        "TAP {name} is busy: another process has it open, and a single-queue TAP takes only one"
    )]
    Busy {
        /// The interface.
        name: String,
    },
    /// Any other failure of a system call.
    #[error("{op} on TAP {name} failed")]
    Os {
        /// The interface.
        name: String,
        /// The call.
        op: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

/// Why a frame could not be read or written. Carried inside the `io::Error`s of
/// [`Tap::read_frame`], [`Tap::write_frame`], [`Tap::drain`] and [`Tap::wait_readable`]; get it
/// back with [`FrameError::of`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is longer than the MTU plus an Ethernet header.
    #[error(
        "a frame of {len} bytes is longer than TAP {name} takes: {max} bytes \
         (MTU {mtu} + {ETH_HLEN}-byte Ethernet header)"
    )]
    TooLong {
        /// The interface.
        name: String,
        /// The frame's length.
        len: usize,
        /// The longest frame the interface takes.
        max: usize,
        /// The interface's MTU.
        mtu: u32,
    },
    /// The frame is shorter than an Ethernet header.
    #[error("a frame of {len} bytes is shorter than an Ethernet header ({ETH_HLEN} bytes)")]
    TooShort {
        /// The frame's length.
        len: usize,
    },
    /// A received frame was longer than the buffer; the kernel discarded it.
    #[error("a frame on TAP {name} was longer than the {capacity}-byte buffer and was dropped")]
    Truncated {
        /// The interface.
        name: String,
        /// The buffer's length.
        capacity: usize,
    },
    /// The interface is administratively down, so it takes no frames (`EIO` on write).
    #[error("TAP {name} is down, so it takes no frames (`ip link set {name} up`)")]
    Down {
        /// The interface.
        name: String,
    },
    /// The interface was deleted while open (`EBADFD`, `POLLERR`).
    #[error("TAP {name} no longer exists: it was deleted while understudy had it open")]
    Gone {
        /// The interface.
        name: String,
    },
    /// A write took part of a frame (the TUN driver never does this).
    #[error("TAP {name} took {written} bytes of a {len}-byte frame")]
    Partial {
        /// The interface.
        name: String,
        /// Bytes written.
        written: usize,
        /// The frame's length.
        len: usize,
    },
}

impl FrameError {
    /// The frame error inside `err`, if it carries one.
    pub fn of(err: &io::Error) -> Option<&FrameError> {
        err.get_ref()?.downcast_ref::<FrameError>()
    }

    fn into_io(self) -> io::Error {
        let kind = match self {
            FrameError::TooLong { .. } | FrameError::TooShort { .. } => io::ErrorKind::InvalidInput,
            FrameError::Truncated { .. } => io::ErrorKind::InvalidData,
            FrameError::Down { .. } => io::ErrorKind::NetworkDown,
            FrameError::Gone { .. } => io::ErrorKind::NotConnected,
            FrameError::Partial { .. } => io::ErrorKind::WriteZero,
        };
        io::Error::new(kind, self)
    }
}

/// A TAP device, attached through its own `/dev/net/tun` descriptor.
///
/// **Namespace.** The TAP is the interface of that name in the network namespace of the thread
/// that calls [`Tap::open`]; a TAP of the same name in another namespace is a different device.
/// The control socket for link state is made at the same time, so [`Tap::set_up`] and
/// [`Tap::is_up`] act in that namespace whatever thread calls them later.
///
/// **Lifetime.** If no interface had the name, `open` creates the TAP ([`Tap::created`]). Such a
/// TAP is not persistent: the kernel deletes it when this `Tap` is dropped (when the last
/// descriptor attached to it closes). A TAP made beforehand with `ip tuntap add` is persistent:
/// `open` attaches to it and dropping the `Tap` detaches and leaves it (with its carrier off, as
/// the kernel does for a TAP nobody has open).
///
/// **Link state.** `open` never changes whether the link is up. A TAP made with
/// `ip tuntap add` is down until someone runs `ip link set NAME up`; whoever made it and put it
/// on a bridge also brings it up, as QEMU and Firecracker expect, and the VMM leaves it alone
/// (it should say so when it finds the TAP down: [`Tap::is_up`]; writes to a down TAP fail).
/// A TAP the VMM created cannot have been set up by anyone, and it vanishes with the VMM, so
/// for that one the VMM calls [`Tap::set_up`] itself.
///
/// **Carrier.** [`Tap::open`] attaches with the carrier on; [`Tap::open_without_carrier`]
/// attaches with it off (`IFF_NO_CARRIER`), so a backup's TAP is silent from the first moment:
/// the kernel queues nothing on it and a bridge floods nothing to it. Use that for a backup
/// rather than `open` and then `set_carrier(false)`: the kernel applies a carrier change
/// asynchronously, so a TAP opened with the carrier on takes frames for a while after it is
/// turned off. [`Tap::set_carrier`] turns it on when the backup goes live (frames the host sends
/// in the first milliseconds after are dropped, as by a NIC whose link just came up). A
/// persistent TAP's carrier goes off again when its `Tap` is dropped.
///
/// **Frames.** Reads and writes carry plain Ethernet frames (`IFF_NO_PI`, no `virtio_net_hdr`):
/// the NIC copies frames into and out of the guest's buffers itself and writes a zeroed
/// `virtio_net_hdr` in front (no offloads are offered to the guest), so a vnet header from the
/// kernel would only be stripped again, and a header written to the kernel would let the guest
/// ask the host to checksum or segment. The descriptor is non-blocking; wait with
/// [`Tap::wait_readable`] or poll [`Tap::as_raw_fd`]. All methods take `&self`: one thread may
/// read while another writes (each frame goes to exactly one reader).
#[derive(Debug)]
pub struct Tap {
    file: File,
    /// An `AF_INET` datagram socket in the TAP's namespace, for the interface ioctls.
    control: OwnedFd,
    name: String,
    created: bool,
    mtu: AtomicU32,
}

impl Tap {
    /// Opens the TAP `name` in the current network namespace, creating it if no interface has
    /// that name, with its carrier on.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Self::open_with(name, true)
    }

    /// Like [`Tap::open`], but the carrier is off from the start, so nothing queues on the TAP
    /// and a bridge floods nothing to it until [`Tap::set_carrier`] turns it on. For a backup.
    pub fn open_without_carrier(name: &str) -> Result<Tap, TapError> {
        Self::open_with(name, false)
    }

    fn open_with(name: &str, carrier: bool) -> Result<Tap, TapError> {
        validate_name(name).map_err(|problem| TapError::InvalidName {
            name: name.to_owned(),
            problem,
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::TunMissing { source },
                Some(libc::EACCES | libc::EPERM) => TapError::TunAccess { source },
                _ => TapError::Os {
                    name: name.to_owned(),
                    op: "open /dev/net/tun",
                    source,
                },
            })?;
        let control = control_socket().map_err(|source| TapError::Os {
            name: name.to_owned(),
            op: "socket(AF_INET)",
            source,
        })?;

        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if !carrier {
            flags |= libc::IFF_NO_CARRIER;
        }
        let mut ifr = ifreq(name);
        // The flags all fit the kernel's 16-bit field.
        ifr.ifr_ifru.ifru_flags = flags as c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is.
        if unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut ifr) } < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) => TapError::NotPermitted {
                    name: name.to_owned(),
                    action: "create or attach",
                    source,
                },
                Some(libc::EBUSY) => TapError::Busy {
                    name: name.to_owned(),
                },
                Some(libc::EINVAL) => why_not_a_tap(&control, name).unwrap_or(TapError::Os {
                    name: name.to_owned(),
                    op: "TUNSETIFF",
                    source,
                }),
                _ => TapError::Os {
                    name: name.to_owned(),
                    op: "TUNSETIFF",
                    source,
                },
            });
        }

        let mut ifr = ifreq(name);
        // SAFETY: TUNGETIFF writes one `struct ifreq`, which `ifr` is.
        if unsafe { ioctl_with_mut_ref(&file, TUNGETIFF(), &mut ifr) } < 0 {
            return Err(TapError::Os {
                name: name.to_owned(),
                op: "TUNGETIFF",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let got = c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
        let mut tap = Tap {
            file,
            control,
            name: name.to_owned(),
            // TUNSETIFF made the device only if it was not there; what it makes is not
            // persistent, and nothing can make it persistent while we hold the only queue.
            created: got & IFF_PERSIST == 0,
            mtu: AtomicU32::new(0),
        };
        let mtu = tap.query_mtu()?;
        *tap.mtu.get_mut() = mtu;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether [`Tap::open`] created the TAP (it did not exist): the kernel deletes it when this
    /// `Tap` is dropped. False for a persistent TAP (e.g. made with `ip tuntap add`), which stays.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The interface's MTU as last read (at open, and again whenever a frame longer than it is
    /// written).
    pub fn mtu(&self) -> u32 {
        self.mtu.load(Ordering::Relaxed)
    }

    /// The longest frame [`Tap::write_frame`] takes: MTU + [`ETH_HLEN`]. A receive buffer this
    /// long holds every frame the host sends within the MTU.
    pub fn max_frame_len(&self) -> usize {
        self.mtu() as usize + ETH_HLEN
    }

    /// Turns the carrier on or off (`TUNSETCARRIER`). The link reports it at once
    /// (`NO-CARRIER`, `/sys/class/net/NAME/carrier`); the kernel stops (or starts) queueing what
    /// the host sends, and a bridge stops (or starts) flooding to the TAP, a little later, when
    /// its link watcher gets to the change (see the type's documentation). Needs no
    /// capability: holding the attached descriptor is enough.
    pub fn set_carrier(&self, on: bool) -> Result<(), TapError> {
        let value = c_int::from(on);
        // SAFETY: TUNSETCARRIER reads one `int`, which `value` is.
        if unsafe { ioctl_with_ref(&self.file, TUNSETCARRIER(), &value) } < 0 {
            let source = io::Error::last_os_error();
            return Err(self.ioctl_error("set the carrier of", "TUNSETCARRIER", source));
        }
        Ok(())
    }

    /// Whether the interface is administratively up (`IFF_UP`).
    pub fn is_up(&self) -> Result<bool, TapError> {
        Ok(self.flags()? & libc::IFF_UP as c_short != 0)
    }

    /// Brings the interface up (`SIOCSIFFLAGS` with `IFF_UP`), as `ip link set NAME up` does.
    /// Needs `CAP_NET_ADMIN`. See the type's documentation for when the VMM should call it.
    pub fn set_up(&self) -> Result<(), TapError> {
        let flags = self.flags()?;
        if flags & libc::IFF_UP as c_short != 0 {
            return Ok(());
        }
        let mut ifr = ifreq(&self.name);
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
        // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`, which `ifr` is.
        if unsafe { ioctl_with_ref(&self.control, libc::SIOCSIFFLAGS, &ifr) } < 0 {
            let source = io::Error::last_os_error();
            return Err(self.ioctl_error("bring up", "SIOCSIFFLAGS", source));
        }
        Ok(())
    }

    /// Reads one frame into `buf` without blocking: `Ok(None)` when none waits. A frame longer
    /// than `buf` is lost (the kernel discards what does not fit) and reported as
    /// [`FrameError::Truncated`]; a buffer of [`Tap::max_frame_len`] bytes avoids that for
    /// frames within the MTU.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let capacity = buf.len();
        let mut spare = [0u8; 1];
        loop {
            let mut bufs = [IoSliceMut::new(buf), IoSliceMut::new(&mut spare)];
            match (&self.file).read_vectored(&mut bufs) {
                Ok(n) if n > capacity => {
                    return Err(FrameError::Truncated {
                        name: self.name.clone(),
                        capacity,
                    }
                    .into_io());
                }
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.frame_io_error(e)),
            }
        }
    }

    /// Writes one whole Ethernet frame (no padding is added: the kernel takes short frames as
    /// they are). Refuses frames shorter than [`ETH_HLEN`] or longer than
    /// [`Tap::max_frame_len`] ([`FrameError::TooShort`], [`FrameError::TooLong`]); fails with
    /// [`FrameError::Down`] while the interface is down. With the carrier off the kernel still
    /// takes the frame.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < ETH_HLEN {
            return Err(FrameError::TooShort { len: frame.len() }.into_io());
        }
        if frame.len() > self.max_frame_len() {
            // The MTU may have been raised since it was read: read it again before refusing.
            let mtu = self.query_mtu().map_err(io::Error::other)?;
            self.mtu.store(mtu, Ordering::Relaxed);
            let max = self.max_frame_len();
            if frame.len() > max {
                return Err(FrameError::TooLong {
                    name: self.name.clone(),
                    len: frame.len(),
                    max,
                    mtu,
                }
                .into_io());
            }
        }
        loop {
            match (&self.file).write(frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(written) => {
                    return Err(FrameError::Partial {
                        name: self.name.clone(),
                        written,
                        len: frame.len(),
                    }
                    .into_io());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.frame_io_error(e)),
            }
        }
    }

    /// Discards every frame queued on the TAP when called (for going live: frames that arrived
    /// while this node was a backup are stale). Returns how many it discarded. Reads at most the
    /// queue's capacity (the interface's `txqueuelen`), so frames that keep arriving during the
    /// call cannot keep it going.
    pub fn drain(&self) -> io::Result<usize> {
        let limit = self.tx_queue_len().map_err(io::Error::other)?.max(1);
        // A read shorter than the frame still takes the whole frame off the queue.
        let mut scrap = [0u8; 64];
        let mut discarded = 0;
        while discarded < limit {
            match (&self.file).read(&mut scrap) {
                Ok(_) => discarded += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.frame_io_error(e)),
            }
        }
        Ok(discarded)
    }

    /// Blocks until a frame can be read or `timeout` passes; true when one can. Fails with
    /// [`FrameError::Gone`] once the interface has been deleted.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let millis = match deadline {
                // Rounded up, so a wake-up before the deadline is never taken for a timeout.
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    c_int::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX)
                }
                None => -1,
            };
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid `pollfd` for the length of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(FrameError::Gone {
                    name: self.name.clone(),
                }
                .into_io());
            }
            if pfd.revents & libc::POLLIN != 0 {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    fn flags(&self) -> Result<c_short, TapError> {
        let mut ifr = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS writes one `struct ifreq`, which `ifr` is.
        if unsafe { ioctl_with_mut_ref(&self.control, libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
            let source = io::Error::last_os_error();
            return Err(self.ioctl_error("read the flags of", "SIOCGIFFLAGS", source));
        }
        // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
        Ok(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    fn query_mtu(&self) -> Result<u32, TapError> {
        let mut ifr = ifreq(&self.name);
        // SAFETY: SIOCGIFMTU writes one `struct ifreq`, which `ifr` is.
        if unsafe { ioctl_with_mut_ref(&self.control, libc::SIOCGIFMTU, &mut ifr) } < 0 {
            let source = io::Error::last_os_error();
            return Err(self.ioctl_error("read the MTU of", "SIOCGIFMTU", source));
        }
        // SAFETY: SIOCGIFMTU filled in the MTU member of the union.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
        Ok(u32::try_from(mtu).unwrap_or(0))
    }

    fn tx_queue_len(&self) -> Result<usize, TapError> {
        let mut ifr = ifreq(&self.name);
        // SAFETY: SIOCGIFTXQLEN writes one `struct ifreq`, which `ifr` is.
        if unsafe { ioctl_with_mut_ref(&self.control, libc::SIOCGIFTXQLEN, &mut ifr) } < 0 {
            let source = io::Error::last_os_error();
            return Err(self.ioctl_error("read the queue length of", "SIOCGIFTXQLEN", source));
        }
        // SAFETY: SIOCGIFTXQLEN filled in the int member of the union (`ifr_qlen` in C, which
        // shares its place with `ifr_mtu`).
        let qlen = unsafe { ifr.ifr_ifru.ifru_mtu };
        Ok(usize::try_from(qlen).unwrap_or(0))
    }

    fn ioctl_error(&self, action: &'static str, op: &'static str, source: io::Error) -> TapError {
        if source.raw_os_error() == Some(libc::EPERM) {
            TapError::NotPermitted {
                name: self.name.clone(),
                action,
                source,
            }
        } else {
            TapError::Os {
                name: self.name.clone(),
                op,
                source,
            }
        }
    }

    fn frame_io_error(&self, e: io::Error) -> io::Error {
        let name = self.name.clone();
        match e.raw_os_error() {
            Some(libc::EBADFD) => FrameError::Gone { name }.into_io(),
            Some(libc::EIO) => FrameError::Down { name }.into_io(),
            _ => e,
        }
    }
}

impl AsRawFd for Tap {
    /// The TAP's descriptor, for `poll`/`epoll` (readable when a frame waits).
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    /// The TAP's descriptor, for `poll`/`epoll` (readable when a frame waits).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// An `ifreq` naming `name` (already validated: shorter than `IFNAMSIZ`), everything else zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data (byte arrays, integers and a union of such and a pointer);
    // all zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *to = *from as c_char;
    }
    ifr
}

/// A datagram socket in the current network namespace, for interface ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct ethtool_drvinfo` from `linux/ethtool.h`.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// After `TUNSETIFF` said `EINVAL`: what the interface called `name` is, or `None` if there is
/// no such interface (then the `EINVAL` had another cause).
fn why_not_a_tap(control: &OwnedFd, name: &str) -> Option<TapError> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `cname` is a NUL-terminated string that lives across the call.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
        return None;
    }
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_data = std::ptr::from_mut(&mut info).cast::<c_char>();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO fills the `ethtool_drvinfo` that `ifr` points
    // to, which is live and whole for the length of the call.
    let driver = if unsafe { ioctl_with_ref(control, libc::SIOCETHTOOL, &ifr) } == 0 {
        Some((c_string(&info.driver), c_string(&info.bus_info)))
    } else {
        None
    };
    let kind = match driver {
        Some((driver, bus)) if driver == "tun" && bus == "tap" => {
            // A TAP refused with EINVAL: its queue mode differs from ours.
            return Some(TapError::MultiQueue {
                name: name.to_owned(),
            });
        }
        Some((driver, bus)) if driver == "tun" && bus == "tun" => {
            "a TUN device (IP packets, no Ethernet frames)".to_owned()
        }
        Some((driver, _)) if !driver.is_empty() => format!("an interface of the {driver} driver"),
        _ => {
            let mut ifr = ifreq(name);
            // SAFETY: SIOCGIFFLAGS writes one `struct ifreq`, which `ifr` is.
            let got = unsafe { ioctl_with_mut_ref(control, libc::SIOCGIFFLAGS, &mut ifr) };
            // SAFETY: on success SIOCGIFFLAGS filled in the flags member of the union.
            if got == 0 && c_int::from(unsafe { ifr.ifr_ifru.ifru_flags }) & libc::IFF_LOOPBACK != 0
            {
                "the loopback interface".to_owned()
            } else {
                "an interface whose driver does not say what it is".to_owned()
            }
        }
    };
    Some(TapError::NotTap {
        name: name.to_owned(),
        kind,
    })
}

/// The text of a NUL-padded C string field.
fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    //! Every test that touches a real TAP runs on a thread of its own that first enters a new
    //! network namespace and a new mount namespace (with its own `/sys`, since sysfs shows the
    //! namespace of whoever mounted it). `unshare` changes only the calling thread, which
    //! `namespaces_are_private_to_the_test_thread` checks; the namespaces, and every interface
    //! in them, go away when the thread ends. `ip`/`tc` run as children of that thread, so they
    //! act in its namespace too.

    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;
    use std::sync::mpsc;
    use std::thread;

    /// An IEEE "local experimental" ethertype: no stack on the host answers or sends it.
    const ETHERTYPE: u16 = 0x88b5;
    /// Generous bound for anything the kernel does asynchronously.
    pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

    fn cannot_run() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)".into());
        }
        if !Path::new(TUN_PATH).exists() {
            return Some(format!("{TUN_PATH} does not exist"));
        }
        for tool in ["ip", "tc"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Some(format!("no `{tool}` command (iproute2)"));
            }
        }
        None
    }

    /// Runs `body` on a new thread in private network and mount namespaces; prints why and
    /// returns if that cannot be done here.
    pub(crate) fn in_private_netns(test: &str, body: impl FnOnce() + Send + 'static) {
        if let Some(why) = cannot_run() {
            eprintln!("skipped: {test}: {why}");
            return;
        }
        let thread = thread::spawn(move || -> Result<(), String> {
            enter_private_namespaces()?;
            body();
            Ok(())
        });
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => eprintln!("skipped: {test}: {why}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn enter_private_namespaces() -> Result<(), String> {
        // SAFETY: unshare takes no pointers; it changes only the calling thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
            return Err(format!(
                "cannot unshare network and mount namespaces: {}",
                io::Error::last_os_error()
            ));
        }
        // Nothing mounted from here on may propagate back to the host's mount namespace.
        mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE);
        mount(Some("sysfs"), "/sys", Some("sysfs"), 0);
        // IPv6 would have the kernel send ND/MLD frames on new interfaces: noise in the counts.
        for conf in ["all", "default"] {
            let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
            if Path::new(&knob).exists() {
                std::fs::write(&knob, "1").unwrap();
            }
        }
        Ok(())
    }

    fn mount(source: Option<&str>, target: &str, fstype: Option<&str>, flags: libc::c_ulong) {
        let c = |s: &str| CString::new(s).unwrap();
        let (source, target, fstype) = (source.map(c), c(target), fstype.map(c));
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: every pointer is null or a NUL-terminated string alive across the call.
        let r = unsafe {
            libc::mount(
                ptr(&source),
                target.as_ptr(),
                ptr(&fstype),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "mount {target:?}: {}", io::Error::last_os_error());
    }

    pub(crate) fn run(args: &[&str]) {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn exists(name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }

    fn carrier(name: &str) -> String {
        let path = format!("/sys/class/net/{name}/carrier");
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    }

    fn ifindex(name: &str) -> u32 {
        let cname = CString::new(name).unwrap();
        // SAFETY: a NUL-terminated string alive across the call.
        unsafe { libc::if_nametoindex(cname.as_ptr()) }
    }

    fn ns_of_this_thread() -> String {
        std::fs::read_link("/proc/thread-self/ns/net")
            .unwrap()
            .display()
            .to_string()
    }

    /// Polls `done` until it holds, failing after [`PATIENCE`].
    pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < PATIENCE, "gave up waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    pub(crate) fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The host side of the TAP: an `AF_PACKET` socket bound to it, for our ethertype only (so
    /// it sees frames arriving from the TAP, not the ones it sends itself).
    pub(crate) struct PacketSocket(OwnedFd);

    impl PacketSocket {
        fn bind(name: &str) -> PacketSocket {
            let proto = c_int::from(ETHERTYPE.to_be());
            // SAFETY: socket() takes no pointers.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETHERTYPE.to_be();
            sll.sll_ifindex = ifindex(name) as c_int;
            // SAFETY: `sll` is a whole sockaddr_ll of the length passed.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
            PacketSocket(fd)
        }

        pub(crate) fn send(&self, frame: &[u8]) {
            self.try_send(frame).unwrap();
        }

        pub(crate) fn try_send(&self, frame: &[u8]) -> io::Result<()> {
            // SAFETY: `frame` is valid for reads of its length across the call.
            let n =
                unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            assert_eq!(n, frame.len() as isize);
            Ok(())
        }

        pub(crate) fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as c_int) };
            if ready <= 0 {
                return None;
            }
            let mut buf = vec![0u8; 65536];
            // SAFETY: `buf` is valid for writes of its length across the call.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            assert!(n >= 0, "recv: {}", io::Error::last_os_error());
            buf.truncate(n as usize);
            Some(buf)
        }
    }

    /// A TAP that is up and passes frames, on the `noqueue` qdisc so a host-side `send` returns
    /// only once the frame is on the TAP's queue (counts are then exact), with a packet socket
    /// on its host side and nothing queued.
    pub(crate) fn ready_tap(name: &str) -> (Tap, PacketSocket) {
        let tap = Tap::open(name).unwrap();
        tap.set_up().unwrap();
        run(&["tc", "qdisc", "replace", "dev", name, "root", "noqueue"]);
        let host = PacketSocket::bind(name);
        // Until the kernel has finished bringing the link up, frames may be dropped: send until
        // one arrives.
        let probe = frame([0x02; 6], [0x04; 6], b"probe");
        let start = Instant::now();
        loop {
            host.send(&probe);
            if tap.wait_readable(Duration::from_millis(20)).unwrap() {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "no frame reached {name}");
        }
        tap.drain().unwrap();
        assert_eq!(tap.read_frame(&mut [0u8; 2048]).unwrap(), None);
        (tap, host)
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(TUNSETIFF(), libc::TUNSETIFF as libc::c_ulong);
        assert_eq!(TUNGETIFF(), libc::TUNGETIFF as libc::c_ulong);
        assert_eq!(TUNSETCARRIER(), libc::TUNSETCARRIER as libc::c_ulong);
        assert_eq!(std::mem::size_of::<EthtoolDrvinfo>(), 196);
    }

    #[test]
    fn names_are_validated_before_anything_is_opened() {
        let cases: [(&str, NameProblem, &str); 11] = [
            ("", NameProblem::Empty, "empty"),
            (
                "abcdefghijklmnop",
                NameProblem::TooLong { len: 16 },
                "16 bytes long",
            ),
            (
                "tap-ééééééé",
                NameProblem::TooLong { len: 18 },
                "at most 15",
            ),
            (".", NameProblem::Dot, "'.'"),
            ("..", NameProblem::Dot, "'..'"),
            ("a/b", NameProblem::Slash, "'/'"),
            ("a\0b", NameProblem::Nul, "NUL"),
            ("a b", NameProblem::Whitespace, "whitespace"),
            ("tap\n", NameProblem::Whitespace, "whitespace"),
            ("a:1", NameProblem::Colon, "':'"),
            ("tap%d", NameProblem::Percent, "pattern"),
        ];
        for (name, problem, says) in cases {
            assert_eq!(validate_name(name), Err(problem), "{name:?}");
            let err = Tap::open(name).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, TapError::InvalidName { problem: p, .. } if *p == problem),
                "{name:?}: {err:?}"
            );
            assert!(
                text.contains(says) && text.contains("invalid TAP name"),
                "{text}"
            );
        }
        for name in ["tap0", "abcdefghijklmno", "ut-1_x.y", "é"] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(
            validate_name("\u{e0}"),
            Err(NameProblem::Whitespace),
            "à is c3 a0 in UTF-8"
        );
    }

    #[test]
    fn namespaces_are_private_to_the_test_thread() {
        let host_ns = ns_of_this_thread();
        let (created_tx, created_rx) = mpsc::channel();
        let (checked_tx, checked_rx) = mpsc::channel::<()>();
        let inner_host_ns = host_ns.clone();
        let outer_host_ns = host_ns.clone();
        let checker = thread::spawn(move || {
            // Runs in the host's namespace while the test thread holds its TAP.
            if created_rx.recv().is_err() {
                return;
            }
            assert_eq!(ns_of_this_thread(), inner_host_ns);
            assert_eq!(
                ifindex("usiso0"),
                0,
                "the test's TAP is visible in the host namespace"
            );
            checked_tx.send(()).unwrap();
        });
        in_private_netns("namespaces_are_private_to_the_test_thread", move || {
            let mine = ns_of_this_thread();
            assert_ne!(
                mine, host_ns,
                "unshare did not give this thread a new namespace"
            );
            // The process's other threads (the main one here) keep the host's.
            let main = std::fs::read_link("/proc/self/ns/net").unwrap();
            assert_eq!(main.display().to_string(), host_ns);
            let tap = Tap::open("usiso0").unwrap();
            assert!(exists("usiso0") && ifindex("usiso0") != 0);
            created_tx.send(()).unwrap();
            checked_rx.recv().unwrap();
            drop(tap);
        });
        checker.join().unwrap();
        assert_eq!(ns_of_this_thread(), outer_host_ns);
    }

    #[test]
    fn a_created_tap_is_deleted_when_dropped() {
        in_private_netns("a_created_tap_is_deleted_when_dropped", || {
            assert!(!exists("ut0"));
            let tap = Tap::open("ut0").unwrap();
            assert!(tap.created());
            assert_eq!(tap.name(), "ut0");
            assert!(exists("ut0"));
            assert_eq!(
                std::fs::read_to_string("/sys/class/net/ut0/tun_flags")
                    .unwrap()
                    .trim(),
                "0x1002"
            );
            assert!(!tap.is_up().unwrap(), "a new TAP is down");
            assert_eq!(tap.mtu(), 1500);
            assert_eq!(tap.max_frame_len(), 1514);
            drop(tap);
            // Another test thread may be spawning a process at this moment, whose copy of the
            // descriptor table holds the TAP until it execs: wait rather than assume.
            wait_until("ut0 is deleted", || !exists("ut0"));
            assert_eq!(ifindex("ut0"), 0);
        });
    }

    #[test]
    fn an_existing_tap_is_attached_and_kept() {
        in_private_netns("an_existing_tap_is_attached_and_kept", || {
            run(&["ip", "tuntap", "add", "ut1", "mode", "tap"]);
            let tap = Tap::open("ut1").unwrap();
            assert!(!tap.created());
            assert!(
                !tap.is_up().unwrap(),
                "`ip tuntap add` makes it down, open leaves it"
            );

            // A second open while this one holds it: busy.
            let err = Tap::open("ut1").unwrap_err();
            assert!(matches!(err, TapError::Busy { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                "TAP ut1 is busy: another process has it open, and a single-queue TAP takes only one"
            );

            drop(tap);
            assert!(exists("ut1"), "a persistent TAP must survive its Tap");
            let start = Instant::now();
            let again = loop {
                match Tap::open("ut1") {
                    Ok(tap) => break tap,
                    // A process being spawned by another test may still hold the descriptor.
                    Err(TapError::Busy { .. }) if start.elapsed() < PATIENCE => {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("reopening ut1: {e}"),
                }
            };
            assert!(!again.created());
        });
    }

    #[test]
    fn interfaces_that_are_not_single_queue_taps_are_refused() {
        in_private_netns(
            "interfaces_that_are_not_single_queue_taps_are_refused",
            || {
                run(&["ip", "tuntap", "add", "ut2", "mode", "tun"]);
                run(&["ip", "tuntap", "add", "ut3", "mode", "tap", "multi_queue"]);
                run(&[
                    "ip", "link", "add", "ut4", "type", "veth", "peer", "name", "ut5",
                ]);
                run(&["ip", "link", "add", "ut6", "type", "bridge"]);
                let expect = [
                    (
                        "ut2",
                        "ut2 exists in this network namespace and is not a TAP device: it is a TUN device (IP packets, no Ethernet frames)",
                    ),
                    (
                        "ut4",
                        "ut4 exists in this network namespace and is not a TAP device: it is an interface of the veth driver",
                    ),
                    (
                        "ut6",
                        "ut6 exists in this network namespace and is not a TAP device: it is an interface of the bridge driver",
                    ),
                    (
                        "lo",
                        "lo exists in this network namespace and is not a TAP device: it is the loopback interface",
                    ),
                ];
                for (name, text) in expect {
                    let err = Tap::open(name).unwrap_err();
                    assert!(matches!(err, TapError::NotTap { .. }), "{name}: {err:?}");
                    assert_eq!(err.to_string(), text);
                }
                let err = Tap::open("ut3").unwrap_err();
                assert!(matches!(err, TapError::MultiQueue { .. }), "{err:?}");
                assert!(err.to_string().contains("multi-queue TAP"), "{err}");
                // Nothing was created or removed on the way.
                for name in ["ut2", "ut3", "ut4", "ut5", "ut6"] {
                    assert!(exists(name), "{name}");
                }
            },
        );
    }

    #[test]
    fn without_cap_net_admin_creating_is_refused() {
        in_private_netns("without_cap_net_admin_creating_is_refused", || {
            run(&["ip", "tuntap", "add", "ut7", "mode", "tap", "user", "65534"]);
            run(&["ip", "tuntap", "add", "ut9", "mode", "tap"]);
            drop_cap_net_admin_on_this_thread();
            let err = Tap::open("ut8").unwrap_err();
            match &err {
                TapError::NotPermitted { source, action, .. } => {
                    assert_eq!(source.raw_os_error(), Some(libc::EPERM));
                    assert_eq!(*action, "create or attach");
                }
                other => panic!("{other:?}"),
            }
            assert!(err.to_string().contains("needs CAP_NET_ADMIN"), "{err}");
            assert!(!exists("ut8"));
            // Attaching to a TAP owned by another user is refused the same way.
            let err = Tap::open("ut7").unwrap_err();
            assert!(matches!(err, TapError::NotPermitted { .. }), "{err:?}");
            // A persistent TAP without an owner can be attached without the capability.
            let tap = Tap::open("ut9").unwrap();
            assert!(!tap.created());
            // The carrier belongs to whoever holds the descriptor: no capability needed.
            tap.set_carrier(false).unwrap();
            tap.set_carrier(true).unwrap();
            // Bringing it up still needs the capability.
            let err = tap.set_up().unwrap_err();
            assert!(
                matches!(
                    err,
                    TapError::NotPermitted {
                        action: "bring up",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(
                err.to_string().split(':').next(),
                Some("no permission to bring up TAP ut9")
            );
        });
    }

    /// Removes `CAP_NET_ADMIN` from the calling thread's effective set (capabilities are per
    /// thread; the rest of the process keeps it).
    fn drop_cap_net_admin_on_this_thread() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const CAP_NET_ADMIN: u32 = 12;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget with version 3 writes two `Data`, which `data` holds.
        let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(r, 0, "capget: {}", io::Error::last_os_error());
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        // SAFETY: capset with version 3 reads two `Data`; pid 0 is this thread alone.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        assert_eq!(r, 0, "capset: {}", io::Error::last_os_error());
    }

    #[test]
    fn a_missing_or_forbidden_dev_net_tun_is_reported() {
        in_private_netns("a_missing_or_forbidden_dev_net_tun_is_reported", || {
            // Only this thread's mount namespace sees the empty /dev/net.
            mount(Some("tmpfs"), "/dev/net", Some("tmpfs"), 0);
            let err = Tap::open("ut9").unwrap_err();
            match &err {
                TapError::TunMissing { source } => {
                    assert_eq!(source.raw_os_error(), Some(libc::ENOENT))
                }
                other => panic!("{other:?}"),
            }
            assert!(
                err.to_string().starts_with("/dev/net/tun is missing"),
                "{err}"
            );

            // A root-only /dev/net/tun, opened by a thread that is not root.
            let path = CString::new(TUN_PATH).unwrap();
            // SAFETY: a NUL-terminated path alive across the call.
            let r = unsafe {
                libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 200))
            };
            assert_eq!(r, 0, "mknod: {}", io::Error::last_os_error());
            std::fs::set_permissions(TUN_PATH, std::fs::Permissions::from_mode(0o600)).unwrap();
            // The raw system call changes only this thread's credentials (glibc's setresuid
            // would change every thread's).
            // SAFETY: no pointers; this thread does nothing needing root afterwards.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(r, 0, "setresuid: {}", io::Error::last_os_error());
            let err = Tap::open("ut9").unwrap_err();
            match &err {
                TapError::TunAccess { source } => {
                    assert_eq!(source.raw_os_error(), Some(libc::EACCES))
                }
                other => panic!("{other:?}"),
            }
            assert!(
                err.to_string()
                    .starts_with("no permission to open /dev/net/tun"),
                "{err}"
            );
        });
    }

    #[test]
    fn frames_cross_the_tap_byte_for_byte() {
        in_private_netns("frames_cross_the_tap_byte_for_byte", || {
            let (tap, host) = ready_tap("ut10");

            // Guest to host: written to the TAP, received on the interface.
            for len in [ETH_HLEN, 60, 1514] {
                let out = frame(
                    [0x02, 0, 0, 0, 0, 1],
                    [0x52, 0x54, 0, 0, 0, 1],
                    &pattern(len - ETH_HLEN, 7),
                );
                tap.write_frame(&out).unwrap();
                let got = host
                    .recv(PATIENCE)
                    .expect("the frame written to the TAP never arrived");
                assert_eq!(got, out, "{len}-byte frame");
            }

            // Host to guest: sent on the interface, read from the TAP.
            let mut buf = vec![0u8; tap.max_frame_len()];
            for len in [ETH_HLEN, 60, 1514] {
                let sent = frame(
                    [0x52, 0x54, 0, 0, 0, 1],
                    [0x02, 0, 0, 0, 0, 1],
                    &pattern(len - ETH_HLEN, 9),
                );
                host.send(&sent);
                assert!(tap.wait_readable(PATIENCE).unwrap());
                let n = tap.read_frame(&mut buf).unwrap().unwrap();
                assert_eq!(&buf[..n], &sent[..], "{len}-byte frame");
            }
            assert_eq!(tap.read_frame(&mut buf).unwrap(), None);
            assert!(!tap.wait_readable(Duration::ZERO).unwrap());
        });
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_reported_and_dropped() {
        in_private_netns(
            "a_frame_longer_than_the_buffer_is_reported_and_dropped",
            || {
                let (tap, host) = ready_tap("ut11");
                host.send(&frame([0x52; 6], [0x02; 6], &pattern(186, 1)));
                host.send(&frame([0x52; 6], [0x02; 6], &pattern(46, 2)));
                let mut small = [0u8; 100];
                let err = tap.read_frame(&mut small).unwrap_err();
                assert!(
                    matches!(
                        FrameError::of(&err),
                        Some(FrameError::Truncated { capacity: 100, .. })
                    ),
                    "{err:?}"
                );
                assert_eq!(err.kind(), io::ErrorKind::InvalidData);
                // The long frame is gone; the next one is whole.
                assert_eq!(tap.read_frame(&mut small).unwrap(), Some(60));
                assert_eq!(&small[ETH_HLEN..60], &pattern(46, 2)[..]);
                // A frame exactly as long as the buffer is not mistaken for a truncated one.
                host.send(&frame([0x52; 6], [0x02; 6], &pattern(86, 3)));
                assert_eq!(tap.read_frame(&mut small).unwrap(), Some(100));
            },
        );
    }

    #[test]
    fn frames_outside_the_size_limits_are_refused() {
        in_private_netns("frames_outside_the_size_limits_are_refused", || {
            let (tap, host) = ready_tap("ut12");
            let err = tap.write_frame(&[0u8; 13]).unwrap_err();
            assert!(
                matches!(FrameError::of(&err), Some(FrameError::TooShort { len: 13 })),
                "{err:?}"
            );
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

            let err = tap
                .write_frame(&frame([2; 6], [4; 6], &[0; 1501]))
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "a frame of 1515 bytes is longer than TAP ut12 takes: 1514 bytes (MTU 1500 + 14-byte Ethernet header)"
            );
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

            // A raised MTU is seen without reopening.
            run(&["ip", "link", "set", "ut12", "mtu", "9000"]);
            let jumbo = frame([2; 6], [4; 6], &pattern(9000, 5));
            tap.write_frame(&jumbo).unwrap();
            assert_eq!(tap.mtu(), 9000);
            assert_eq!(host.recv(PATIENCE).unwrap(), jumbo);
            let err = tap
                .write_frame(&frame([2; 6], [4; 6], &[0; 9001]))
                .unwrap_err();
            assert!(
                matches!(
                    FrameError::of(&err),
                    Some(FrameError::TooLong {
                        len: 9015,
                        max: 9014,
                        mtu: 9000,
                        ..
                    })
                ),
                "{err:?}"
            );
        });
    }

    #[test]
    fn writing_to_a_down_tap_says_it_is_down() {
        in_private_netns("writing_to_a_down_tap_says_it_is_down", || {
            let tap = Tap::open("ut13").unwrap();
            let err = tap
                .write_frame(&frame([2; 6], [4; 6], &[0; 46]))
                .unwrap_err();
            assert!(
                matches!(FrameError::of(&err), Some(FrameError::Down { .. })),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                "TAP ut13 is down, so it takes no frames (`ip link set ut13 up`)"
            );
            tap.set_up().unwrap();
            assert!(tap.is_up().unwrap());
            tap.set_up().unwrap();
            tap.write_frame(&frame([2; 6], [4; 6], &[0; 46])).unwrap();
        });
    }

    #[test]
    fn the_carrier_follows_set_carrier() {
        in_private_netns("the_carrier_follows_set_carrier", || {
            let (tap, host) = ready_tap("ut14");
            assert_eq!(carrier("ut14"), "1");
            tap.set_carrier(false).unwrap();
            assert_eq!(carrier("ut14"), "0");
            let link = Command::new("ip")
                .args(["link", "show", "ut14"])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&link.stdout).contains("NO-CARRIER"));

            // The kernel stops queueing only when its link watcher has processed the change.
            // On `noqueue` a send returns once the frame is queued or dropped, so the first
            // frame not queued shows the TAP has gone silent.
            let stale = frame([0x52; 6], [0x02; 6], b"sent with the carrier off");
            let mut buf = [0u8; 1514];
            let start = Instant::now();
            let mut late = 0;
            loop {
                host.send(&stale);
                if tap.read_frame(&mut buf).unwrap().is_none() {
                    break;
                }
                late += 1;
                assert!(
                    start.elapsed() < PATIENCE,
                    "ut14 kept queueing with its carrier off"
                );
            }
            println!(
                "ut14 queued {late} frames in {:?} after its carrier went off",
                start.elapsed()
            );
            for _ in 0..10 {
                host.send(&stale);
            }
            assert_eq!(tap.read_frame(&mut buf).unwrap(), None);
            // Writing is still possible with the carrier off (the VMM simply does not).
            tap.write_frame(&frame([2; 6], [4; 6], &[0; 46])).unwrap();

            tap.set_carrier(true).unwrap();
            assert_eq!(carrier("ut14"), "1");
            let fresh = frame([0x52; 6], [0x02; 6], b"sent with the carrier on");
            let start = Instant::now();
            loop {
                host.send(&fresh);
                if tap.wait_readable(Duration::from_millis(20)).unwrap() {
                    break;
                }
                assert!(
                    start.elapsed() < PATIENCE,
                    "no frame reached ut14 with the carrier on"
                );
            }
            while let Some(n) = tap.read_frame(&mut buf).unwrap() {
                assert_eq!(
                    &buf[..n],
                    &fresh[..],
                    "a frame sent with the carrier off was queued"
                );
            }
        });
    }

    #[test]
    fn a_tap_opened_without_carrier_queues_nothing_until_the_carrier_is_on() {
        in_private_netns(
            "a_tap_opened_without_carrier_queues_nothing_until_the_carrier_is_on",
            || {
                run(&["ip", "tuntap", "add", "ut15", "mode", "tap"]);
                run(&["ip", "link", "set", "ut15", "up"]);
                let tap = Tap::open_without_carrier("ut15").unwrap();
                assert_eq!(carrier("ut15"), "0");
                let host = PacketSocket::bind("ut15");
                let stale = frame([0x52; 6], [0x02; 6], b"sent while silent");
                for _ in 0..10 {
                    host.send(&stale);
                }
                tap.set_carrier(true).unwrap();
                assert_eq!(carrier("ut15"), "1");
                // The kernel finishes switching the link on asynchronously: send until one arrives.
                let fresh = frame([0x52; 6], [0x02; 6], b"sent once live");
                let start = Instant::now();
                loop {
                    host.send(&fresh);
                    if tap.wait_readable(Duration::from_millis(20)).unwrap() {
                        break;
                    }
                    assert!(
                        start.elapsed() < PATIENCE,
                        "no frame reached ut15 with the carrier on"
                    );
                }
                let mut buf = [0u8; 1514];
                let mut seen = 0;
                while let Some(n) = tap.read_frame(&mut buf).unwrap() {
                    assert_eq!(
                        &buf[..n],
                        &fresh[..],
                        "a frame sent with the carrier off was queued"
                    );
                    seen += 1;
                }
                assert!(seen >= 1);
                // Dropping it turns the carrier off again (nobody attached) but keeps the TAP.
                drop(tap);
                wait_until("ut15's carrier is off", || carrier("ut15") == "0");
            },
        );
    }

    #[test]
    fn drain_discards_everything_queued() {
        in_private_netns("drain_discards_everything_queued", || {
            let (tap, host) = ready_tap("ut16");
            assert_eq!(tap.drain().unwrap(), 0);
            for i in 0..25u8 {
                host.send(&frame([0x52; 6], [0x02; 6], &pattern(100, i)));
            }
            assert_eq!(tap.drain().unwrap(), 25);
            assert_eq!(tap.read_frame(&mut [0u8; 1514]).unwrap(), None);
            assert!(!tap.wait_readable(Duration::ZERO).unwrap());
            // What arrives afterwards is read normally, and nothing older comes with it.
            let after = frame([0x52; 6], [0x02; 6], b"after the drain");
            host.send(&after);
            let mut buf = [0u8; 1514];
            assert_eq!(tap.read_frame(&mut buf).unwrap(), Some(after.len()));
            assert_eq!(&buf[..after.len()], &after[..]);
            assert_eq!(tap.read_frame(&mut buf).unwrap(), None);

            // Drain stops at the queue's capacity, even with more arriving.
            run(&["ip", "link", "set", "ut16", "txqueuelen", "8"]);
            let mut queued = 0;
            for i in 0..20u8 {
                match host.try_send(&frame([0x52; 6], [0x02; 6], &[i; 46])) {
                    Ok(()) => queued += 1,
                    // The TAP's queue is full: the kernel drops the frame and says so.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
            assert_eq!(queued, 8, "the queue holds 8");
            assert_eq!(tap.drain().unwrap(), 8);
            assert_eq!(tap.read_frame(&mut buf).unwrap(), None);
        });
    }

    #[test]
    fn a_deleted_tap_is_reported_as_gone() {
        in_private_netns("a_deleted_tap_is_reported_as_gone", || {
            let tap = Tap::open("ut17").unwrap();
            tap.set_up().unwrap();
            run(&["ip", "link", "del", "ut17"]);
            assert!(!exists("ut17"));
            let err = tap.wait_readable(PATIENCE).unwrap_err();
            assert!(
                matches!(FrameError::of(&err), Some(FrameError::Gone { .. })),
                "{err:?}"
            );
            let err = tap.read_frame(&mut [0u8; 1514]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "TAP ut17 no longer exists: it was deleted while understudy had it open"
            );
            let err = tap
                .write_frame(&frame([2; 6], [4; 6], &[0; 46]))
                .unwrap_err();
            assert!(
                matches!(FrameError::of(&err), Some(FrameError::Gone { .. })),
                "{err:?}"
            );
            assert!(tap.drain().is_err());
        });
    }
}
