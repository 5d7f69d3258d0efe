//! The key-value server's protocol and data: a RESP2 parser (arrays of bulk strings and inline
//! commands), the commands, and a fixed-capacity store. Pure computation on byte slices, with
//! no allocation and no dependency beyond `core`, so it runs at CPL3 in the guest and is also
//! compiled on the host by the root workspace's `tests/kv_resp.rs`, which unit-tests it.
//!
//! Limits (documented in guest/README.md):
//! - keys up to [`KEY_MAX`] bytes, values up to [`VALUE_MAX`] bytes (`-ERR` beyond);
//! - at most [`MAX_KEYS`] keys (`-OOM` beyond);
//! - a request up to the caller's input buffer and at most [`MAX_ARGS`] arguments;
//! - a reply up to the caller's output buffer (`-ERR reply too large` for an `MGET` beyond).

/// Longest key.
pub const KEY_MAX: usize = 64;
/// Longest value.
pub const VALUE_MAX: usize = 1024;
/// Slots of the open-addressing table (a power of two).
pub const SLOTS: usize = 4096;
/// Keys the store holds at most: three quarters of the slots, so probes stay short.
pub const MAX_KEYS: usize = SLOTS / 4 * 3;
/// Arguments of one command, the command name included.
pub const MAX_ARGS: usize = 64;
/// Room a reply other than a bulk string or an array of them needs at most: the longest is
/// the unknown-command error, which quotes the name and four arguments, 32 bytes each.
const SMALL_REPLY: usize = 320;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn hash(key: &[u8]) -> u64 {
    key.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    /// 0: empty slot; otherwise the key's length + 1.
    key_len: u8,
    value_len: u16,
}

/// A fixed-capacity hash table with linear probing and backward-shift deletion (no
/// tombstones), keys and values stored inline in their slot.
#[derive(Debug)]
pub struct Store {
    meta: [Meta; SLOTS],
    keys: [[u8; KEY_MAX]; SLOTS],
    values: [[u8; VALUE_MAX]; SLOTS],
    len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    Full,
    TooLong,
}

impl Store {
    /// An empty store. Only the metadata is initialised: key and value bytes are read only
    /// where the metadata says they were written, so the guest can keep them in memory that is
    /// never zeroed (zeroing 4 MiB at CPL0 would take seconds on the target host).
    pub const fn new() -> Self {
        Self {
            meta: [Meta {
                key_len: 0,
                value_len: 0,
            }; SLOTS],
            keys: [[0; KEY_MAX]; SLOTS],
            values: [[0; VALUE_MAX]; SLOTS],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        for m in self.meta.iter_mut() {
            m.key_len = 0;
        }
        self.len = 0;
    }

    fn key_at(&self, slot: usize) -> Option<&[u8]> {
        let m = self.meta.get(slot)?;
        if m.key_len == 0 {
            return None;
        }
        self.keys.get(slot)?.get(..usize::from(m.key_len - 1))
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: &[u8]) -> (usize, bool) {
        let mut slot = (hash(key) as usize) & (SLOTS - 1);
        loop {
            match self.key_at(slot) {
                None => return (slot, false),
                Some(k) if k == key => return (slot, true),
                Some(_) => slot = (slot + 1) & (SLOTS - 1),
            }
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        if key.len() > KEY_MAX {
            return None;
        }
        let (slot, found) = self.find(key);
        if !found {
            return None;
        }
        let len = usize::from(self.meta.get(slot)?.value_len);
        self.values.get(slot)?.get(..len)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key.len() <= KEY_MAX && self.find(key).1
    }

    /// Sets `key` to the concatenation of `parts`.
    pub fn set(&mut self, key: &[u8], parts: &[&[u8]]) -> Result<(), StoreError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if key.len() > KEY_MAX || total > VALUE_MAX {
            return Err(StoreError::TooLong);
        }
        let (slot, found) = self.find(key);
        if !found && self.len >= MAX_KEYS {
            return Err(StoreError::Full);
        }
        let (Some(meta), Some(kbuf), Some(vbuf)) = (
            self.meta.get_mut(slot),
            self.keys.get_mut(slot),
            self.values.get_mut(slot),
        ) else {
            return Err(StoreError::Full);
        };
        let mut at = 0;
        for p in parts {
            if let Some(dst) = vbuf.get_mut(at..at + p.len()) {
                dst.copy_from_slice(p);
            }
            at += p.len();
        }
        if !found {
            if let Some(dst) = kbuf.get_mut(..key.len()) {
                dst.copy_from_slice(key);
            }
            meta.key_len = key.len() as u8 + 1;
            self.len += 1;
        }
        meta.value_len = total as u16;
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) -> bool {
        if key.len() > KEY_MAX {
            return false;
        }
        let (mut hole, found) = self.find(key);
        if !found {
            return false;
        }
        self.len -= 1;
        // Backward-shift deletion: pull later members of the probe run into the hole.
        let mut next = (hole + 1) & (SLOTS - 1);
        while let Some(k) = self.key_at(next) {
            let home = (hash(k) as usize) & (SLOTS - 1);
            // Whether `next`'s home lies cyclically outside (hole, next].
            let movable = if hole <= next {
                home <= hole || home > next
            } else {
                home <= hole && home > next
            };
            if movable {
                self.move_slot(next, hole);
                hole = next;
            }
            next = (next + 1) & (SLOTS - 1);
        }
        if let Some(m) = self.meta.get_mut(hole) {
            m.key_len = 0;
        }
        true
    }

    fn move_slot(&mut self, from: usize, to: usize) {
        let Some(&m) = self.meta.get(from) else {
            return;
        };
        if to >= SLOTS {
            return;
        }
        self.keys.copy_within(from..from + 1, to);
        self.values.copy_within(from..from + 1, to);
        if let Some(t) = self.meta.get_mut(to) {
            *t = m;
        }
    }

    /// Appends `suffix` to `key`'s value (creating it empty first); the new length.
    pub fn append(&mut self, key: &[u8], suffix: &[u8]) -> Result<usize, StoreError> {
        let old = self.get(key).map_or(0, <[u8]>::len);
        if key.len() > KEY_MAX || old + suffix.len() > VALUE_MAX {
            return Err(StoreError::TooLong);
        }
        if !self.contains(key) {
            self.set(key, &[])?;
        }
        let (slot, _) = self.find(key);
        let (Some(meta), Some(vbuf)) = (self.meta.get_mut(slot), self.values.get_mut(slot)) else {
            return Err(StoreError::Full);
        };
        if let Some(dst) = vbuf.get_mut(old..old + suffix.len()) {
            dst.copy_from_slice(suffix);
        }
        meta.value_len = (old + suffix.len()) as u16;
        Ok(old + suffix.len())
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`process`] did with a connection's input.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Outcome {
    /// Input bytes consumed (whole commands).
    pub consumed: usize,
    /// Reply bytes written to the output.
    pub written: usize,
    /// Commands executed.
    pub commands: usize,
    /// The connection must be closed once the reply is sent (protocol error, QUIT).
    pub close: bool,
    /// A client asked the server to stop (SHUTDOWN): the connection closes too.
    pub shutdown: bool,
}

/// What happens after a command's reply.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum After {
    Continue,
    Close,
    Shutdown,
}

/// Result of parsing one request at the start of the input.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A command of `len` bytes with `argc` arguments (the first [`MAX_ARGS`] in the array).
    Command { len: usize, argc: usize },
    /// `len` bytes of nothing (an empty inline line).
    Empty { len: usize },
    /// Malformed: the reply, after which the connection closes.
    Error(&'static str),
}

/// `\r\n`-terminated line starting at `at`: the index of its `\r`.
fn line_end(input: &[u8], at: usize) -> Option<usize> {
    let rest = input.get(at..)?;
    let cr = rest.iter().position(|&b| b == b'\r')?;
    (rest.get(cr + 1)? == &b'\n').then_some(at + cr)
}

fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i128::from(d - b'0');
    }
    i64::try_from(if neg { -v } else { v }).ok()
}

/// An integer the way Redis reads a value or an argument: optional `-`, no leading zeros,
/// no `+`, no spaces, in i64.
fn value_int(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') || s == b"-0" {
        return None;
    }
    parse_int(s)
}

fn parse<'a>(input: &'a [u8], args: &mut [&'a [u8]; MAX_ARGS]) -> Parsed {
    let Some(&first) = input.first() else {
        return Parsed::Incomplete;
    };
    if first != b'*' {
        return parse_inline(input, args);
    }
    let Some(end) = line_end(input, 1) else {
        return if input.len() > 32 {
            Parsed::Error("-ERR Protocol error: invalid multibulk length\r\n")
        } else {
            Parsed::Incomplete
        };
    };
    let Some(n) = input.get(1..end).and_then(parse_int) else {
        return Parsed::Error("-ERR Protocol error: invalid multibulk length\r\n");
    };
    let mut at = end + 2;
    if n <= 0 {
        return Parsed::Empty { len: at };
    }
    if n > 1024 * 1024 {
        return Parsed::Error("-ERR Protocol error: invalid multibulk length\r\n");
    }
    let n = n as usize;
    for i in 0..n {
        match input.get(at) {
            None => return Parsed::Incomplete,
            Some(b'$') => {}
            Some(_) => return Parsed::Error("-ERR Protocol error: expected '$'\r\n"),
        }
        let Some(end) = line_end(input, at + 1) else {
            return if input.len() - at > 32 {
                Parsed::Error("-ERR Protocol error: invalid bulk length\r\n")
            } else {
                Parsed::Incomplete
            };
        };
        let len = match input.get(at + 1..end).and_then(parse_int) {
            Some(l) if (0..=512 * 1024 * 1024).contains(&l) => l as usize,
            _ => return Parsed::Error("-ERR Protocol error: invalid bulk length\r\n"),
        };
        let start = end + 2;
        let Some(arg) = input.get(start..start + len) else {
            return Parsed::Incomplete;
        };
        match input.get(start + len..start + len + 2) {
            None | Some([b'\r']) => return Parsed::Incomplete,
            Some(b"\r\n") => {}
            Some(_) => return Parsed::Error("-ERR Protocol error: bulk string not terminated\r\n"),
        }
        if let Some(slot) = args.get_mut(i) {
            *slot = arg;
        }
        at = start + len + 2;
    }
    Parsed::Command { len: at, argc: n }
}

fn parse_inline<'a>(input: &'a [u8], args: &mut [&'a [u8]; MAX_ARGS]) -> Parsed {
    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
        return Parsed::Incomplete;
    };
    let line = input.get(..nl).unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut argc = 0;
    for word in line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
    {
        if let Some(slot) = args.get_mut(argc) {
            *slot = word;
        }
        argc += 1;
    }
    if argc == 0 {
        Parsed::Empty { len: nl + 1 }
    } else {
        Parsed::Command { len: nl + 1, argc }
    }
}

/// A reply being written into a fixed buffer; the caller checked the room beforehand, so
/// running out only truncates (and is reported by `overflowed`).
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflowed: bool,
}

impl Out<'_> {
    fn bytes(&mut self, s: &[u8]) {
        match self.buf.get_mut(self.len..self.len + s.len()) {
            Some(dst) => {
                dst.copy_from_slice(s);
                self.len += s.len();
            }
            None => self.overflowed = true,
        }
    }
    fn int_digits(&mut self, v: i64) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        let neg = v < 0;
        let mut u = v.unsigned_abs();
        loop {
            if let Some(d) = digits.get_mut(n) {
                *d = b'0' + (u % 10) as u8;
            }
            n += 1;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        if neg {
            self.bytes(b"-");
        }
        for i in (0..n).rev() {
            let d = digits.get(i).copied().unwrap_or(b'0');
            self.bytes(&[d]);
        }
    }
    fn integer(&mut self, v: i64) {
        self.bytes(b":");
        self.int_digits(v);
        self.bytes(b"\r\n");
    }
    fn bulk(&mut self, s: &[u8]) {
        self.bytes(b"$");
        self.int_digits(s.len() as i64);
        self.bytes(b"\r\n");
        self.bytes(s);
        self.bytes(b"\r\n");
    }
    fn nil(&mut self) {
        self.bytes(b"$-1\r\n");
    }
    fn array(&mut self, n: usize) {
        self.bytes(b"*");
        self.int_digits(n as i64);
        self.bytes(b"\r\n");
    }
    fn ok(&mut self) {
        self.bytes(b"+OK\r\n");
    }
}

fn bulk_len(len: usize) -> usize {
    len + 16
}

fn eq_ci(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Room the reply to `args` may need (an upper bound), computed without changing anything.
fn reply_bound(store: &Store, args: &[&[u8]]) -> usize {
    let Some(name) = args.first() else {
        return SMALL_REPLY;
    };
    if eq_ci(name, b"GET") {
        args.get(1)
            .and_then(|k| store.get(k))
            .map_or(SMALL_REPLY, |v| bulk_len(v.len()))
    } else if eq_ci(name, b"MGET") {
        16 + args
            .iter()
            .skip(1)
            .map(|k| store.get(k).map_or(8, |v| bulk_len(v.len())))
            .sum::<usize>()
    } else if eq_ci(name, b"ECHO") {
        args.get(1).map_or(SMALL_REPLY, |m| bulk_len(m.len()))
    } else if eq_ci(name, b"PING") {
        args.get(1).map_or(SMALL_REPLY, |m| bulk_len(m.len()))
    } else {
        SMALL_REPLY
    }
}

/// Executes every complete command at the start of `input` whose reply fits in `out`, in
/// order, and stops at the first incomplete one or when the next reply might not fit.
pub fn process(store: &mut Store, input: &[u8], out: &mut [u8]) -> Outcome {
    let mut consumed = 0;
    let mut o = Out {
        buf: out,
        len: 0,
        overflowed: false,
    };
    let mut commands = 0;
    let mut close = false;
    let mut shutdown = false;
    while consumed < input.len() && !close {
        let rest = input.get(consumed..).unwrap_or(&[]);
        let mut args: [&[u8]; MAX_ARGS] = [&[]; MAX_ARGS];
        let room = o.buf.len() - o.len;
        match parse(rest, &mut args) {
            Parsed::Incomplete => break,
            Parsed::Empty { len } => consumed += len,
            Parsed::Error(msg) => {
                if room < msg.len() {
                    break;
                }
                o.bytes(msg.as_bytes());
                close = true;
                consumed = input.len();
            }
            Parsed::Command { len, argc } => {
                if argc > MAX_ARGS {
                    let msg = b"-ERR too many arguments (this server takes at most 64)\r\n";
                    if room < msg.len() {
                        break;
                    }
                    o.bytes(msg);
                } else {
                    let args = args.get(..argc).unwrap_or(&[]);
                    let bound = reply_bound(store, args);
                    if bound > o.buf.len() {
                        // Could never fit, even in an empty buffer.
                        let msg = b"-ERR reply too large for this server\r\n";
                        if room < msg.len() {
                            break;
                        }
                        o.bytes(msg);
                    } else if bound > room {
                        break;
                    } else {
                        match execute(store, args, &mut o) {
                            After::Continue => {}
                            After::Close => close = true,
                            After::Shutdown => {
                                close = true;
                                shutdown = true;
                            }
                        }
                    }
                }
                consumed += len;
                commands += 1;
            }
        }
    }
    Outcome {
        consumed,
        written: o.len,
        commands,
        close,
        shutdown,
    }
}

fn wrong_args(o: &mut Out<'_>, name: &[u8]) {
    o.bytes(b"-ERR wrong number of arguments for '");
    quoted(o, name, true);
    o.bytes(b"' command\r\n");
}

/// Up to 32 bytes of `s` for an error line (line breaks would end the reply early).
fn quoted(o: &mut Out<'_>, s: &[u8], lowercase: bool) {
    for &b in s.iter().take(32) {
        let b = match b {
            b'\r' | b'\n' => b' ',
            b if lowercase => b.to_ascii_lowercase(),
            b => b,
        };
        o.bytes(&[b]);
    }
}

const NOT_INT: &[u8] = b"-ERR value is not an integer or out of range\r\n";
const OVERFLOW: &[u8] = b"-ERR increment or decrement would overflow\r\n";
const TOO_LONG: &[u8] =
    b"-ERR key or value too long (this server keeps keys up to 64 bytes and values up to 1024)\r\n";
const OOM: &[u8] = b"-OOM command not allowed when used memory > 'maxmemory' (this server keeps at most 3072 keys)\r\n";

fn store_error(o: &mut Out<'_>, e: StoreError) {
    o.bytes(match e {
        StoreError::Full => OOM,
        StoreError::TooLong => TOO_LONG,
    });
}

/// Runs one command and writes its reply.
fn execute(store: &mut Store, args: &[&[u8]], o: &mut Out<'_>) -> After {
    let Some((&name, rest)) = args.split_first() else {
        return After::Continue;
    };
    let argc = args.len();
    let is = |n: &[u8]| eq_ci(name, n);
    // (name, minimum argc, maximum argc or 0 for unbounded, extra check)
    let arity: Option<(usize, usize)> = if is(b"PING") {
        Some((1, 2))
    } else if is(b"ECHO") || is(b"GET") || is(b"INCR") || is(b"DECR") || is(b"STRLEN") {
        Some((2, 2))
    } else if is(b"SET") {
        Some((3, 0))
    } else if is(b"INCRBY") || is(b"DECRBY") || is(b"APPEND") {
        Some((3, 3))
    } else if is(b"DEL") || is(b"EXISTS") || is(b"MGET") {
        Some((2, 0))
    } else if is(b"MSET") {
        Some((3, 0))
    } else if is(b"DBSIZE") || is(b"QUIT") {
        Some((1, 1))
    } else if is(b"SHUTDOWN") {
        Some((1, 0))
    } else if is(b"FLUSHALL") || is(b"FLUSHDB") {
        Some((1, 2))
    } else if is(b"CONFIG") || is(b"CLIENT") || is(b"COMMAND") {
        Some((1, 0))
    } else {
        None
    };
    let Some((min, max)) = arity else {
        o.bytes(b"-ERR unknown command '");
        quoted(o, name, false);
        o.bytes(b"', with args beginning with: ");
        for a in rest.iter().take(4) {
            o.bytes(b"'");
            quoted(o, a, false);
            o.bytes(b"' ");
        }
        o.bytes(b"\r\n");
        return After::Continue;
    };
    if argc < min || (max != 0 && argc > max) || (is(b"MSET") && argc.is_multiple_of(2)) {
        wrong_args(o, name);
        return After::Continue;
    }
    let arg = |i: usize| args.get(i).copied().unwrap_or(&[]);
    if is(b"PING") {
        match args.get(1) {
            Some(m) => o.bulk(m),
            None => o.bytes(b"+PONG\r\n"),
        }
    } else if is(b"ECHO") {
        o.bulk(arg(1));
    } else if is(b"GET") {
        match store.get(arg(1)) {
            Some(v) => o.bulk(v),
            None => o.nil(),
        }
    } else if is(b"SET") {
        if argc > 3 {
            // Options (EX, NX, ...) are not supported.
            o.bytes(b"-ERR syntax error\r\n");
        } else {
            match store.set(arg(1), &[arg(2)]) {
                Ok(()) => o.ok(),
                Err(e) => store_error(o, e),
            }
        }
    } else if is(b"INCR") || is(b"DECR") || is(b"INCRBY") || is(b"DECRBY") {
        let by = if argc == 3 {
            match value_int(arg(2)) {
                Some(v) => v,
                None => {
                    o.bytes(NOT_INT);
                    return After::Continue;
                }
            }
        } else {
            1
        };
        let by = if is(b"DECR") || is(b"DECRBY") {
            match by.checked_neg() {
                Some(v) => v,
                None => {
                    o.bytes(OVERFLOW);
                    return After::Continue;
                }
            }
        } else {
            by
        };
        let key = arg(1);
        let current = match store.get(key) {
            None => 0,
            Some(v) => match value_int(v) {
                Some(n) => n,
                None => {
                    o.bytes(NOT_INT);
                    return After::Continue;
                }
            },
        };
        let Some(new) = current.checked_add(by) else {
            o.bytes(OVERFLOW);
            return After::Continue;
        };
        let mut digits = [0u8; 24];
        let mut d = Out {
            buf: &mut digits,
            len: 0,
            overflowed: false,
        };
        d.int_digits(new);
        let n = d.len;
        match store.set(key, &[digits.get(..n).unwrap_or(&[])]) {
            Ok(()) => o.integer(new),
            Err(e) => store_error(o, e),
        }
    } else if is(b"APPEND") {
        match store.append(arg(1), arg(2)) {
            Ok(n) => o.integer(n as i64),
            Err(e) => store_error(o, e),
        }
    } else if is(b"STRLEN") {
        o.integer(store.get(arg(1)).map_or(0, <[u8]>::len) as i64);
    } else if is(b"DEL") {
        let n = rest.iter().filter(|k| store.remove(k)).count();
        o.integer(n as i64);
    } else if is(b"EXISTS") {
        let n = rest.iter().filter(|k| store.contains(k)).count();
        o.integer(n as i64);
    } else if is(b"MSET") {
        // All or nothing: check limits first.
        let pairs = rest.chunks(2);
        let new_keys = rest
            .chunks(2)
            .filter(|p| !store.contains(p.first().copied().unwrap_or(&[])))
            .count();
        if pairs.clone().any(|p| {
            p.first().map_or(0, |k| k.len()) > KEY_MAX
                || p.get(1).map_or(0, |v| v.len()) > VALUE_MAX
        }) {
            o.bytes(TOO_LONG);
        } else if store.len() + new_keys > MAX_KEYS {
            o.bytes(OOM);
        } else {
            for p in pairs {
                if let [k, v] = p {
                    let _ = store.set(k, &[v]);
                }
            }
            o.ok();
        }
    } else if is(b"MGET") {
        o.array(rest.len());
        for k in rest {
            match store.get(k) {
                Some(v) => o.bulk(v),
                None => o.nil(),
            }
        }
    } else if is(b"DBSIZE") {
        o.integer(store.len() as i64);
    } else if is(b"FLUSHALL") || is(b"FLUSHDB") {
        store.clear();
        o.ok();
    } else if is(b"CONFIG") {
        if eq_ci(arg(1), b"GET") {
            o.array(0);
        } else {
            o.bytes(b"-ERR CONFIG is not supported by this server except CONFIG GET\r\n");
        }
    } else if is(b"CLIENT") || is(b"COMMAND") {
        if is(b"COMMAND") {
            o.array(0);
        } else {
            o.ok();
        }
    } else if is(b"QUIT") {
        o.ok();
        return After::Close;
    } else if is(b"SHUTDOWN") {
        // Redis answers nothing and closes; an OK first tells the client it was heard.
        o.ok();
        return After::Shutdown;
    }
    After::Continue
}
