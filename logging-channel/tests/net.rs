//! The logging channel over real TCP on 127.0.0.1. Every wait is bounded.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use logging_channel::codec::encode_frame;
use logging_channel::net::{
    AcceptStats, ChannelConfig, ChannelError, ExpectedPrimary, Hello, Lag, Listener, LogReceiver,
    LogSender, MAX_HANDSHAKES, MAX_QUEUED, Message, PAGE_SIZE, PROTOCOL_VERSION, STATE_PIECE,
    StatePart, StateReceiver, StateSender, decode_message, decode_pages, encode_message,
    encode_page,
};
use logging_channel::{CodecError, Digest, EndReason, Entry, Frame, InputSource, Position, Regs};

const IMAGE: [u8; 32] = [7; 32];
const VIEW: u64 = 3;
const WAIT: Duration = Duration::from_secs(10);

fn cfg() -> ChannelConfig {
    ChannelConfig {
        connect_timeout: Duration::from_secs(2),
        peer_timeout: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(50),
        send_timeout: Duration::from_millis(300),
        ..ChannelConfig::default()
    }
}

fn hello() -> Hello {
    Hello::new(IMAGE, VIEW, "alpha", 0)
}

fn expected() -> ExpectedPrimary {
    ExpectedPrimary {
        guest_image_sha256: IMAGE,
        viewnum: VIEW,
        primary: "alpha".into(),
    }
}

fn entry(i: u64) -> Entry {
    let pos = if i.is_multiple_of(2) {
        Position::AtExit { exits: i }
    } else {
        Position::Precise {
            exits: i,
            counter: i * 3,
            regs: Regs {
                rip: 0x1000 + i,
                rcx: i,
                ..Regs::default()
            },
        }
    };
    match i % 6 {
        0 => Entry::Input {
            pos,
            source: InputSource::Clock,
            value: i * 7,
        },
        1 => Entry::Irq { pos, line: 0 },
        2 => Entry::Inject { pos, vector: 0x20 },
        3 => Entry::ConsoleInput {
            pos,
            bytes: format!("line {i}\n").into_bytes(),
        },
        4 => Entry::Digest {
            pos,
            digest: Digest {
                regs: Regs::default(),
                cr0: 1,
                cr3: 2,
                cr4: 3,
                efer: 4,
                mem_hash: i,
                devices_hash: 6,
            },
        },
        _ => Entry::End {
            pos,
            reason: EndReason::PowerOff { code: 0 },
        },
    }
}

fn frame(i: u64) -> Frame {
    Frame {
        seq: i,
        t_ns: 1_000 * i,
        state_check: i ^ 0x55,
        entry: entry(i),
    }
}

fn listen() -> Listener {
    LogReceiver::listen("127.0.0.1:0").unwrap()
}

/// A connected pair: the receiver is accepted on another thread.
fn pair(cfg: ChannelConfig) -> (LogSender, LogReceiver) {
    let listener = listen();
    let addr = listener.local_addr();
    let c = cfg.clone();
    let acceptor = thread::spawn(move || accept_with(&listener, c, WAIT));
    let sender = LogSender::connect(addr, hello(), cfg).unwrap();
    let receiver = acceptor.join().unwrap().unwrap();
    (sender, receiver)
}

fn msg_bytes(m: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    encode_message(m, &mut v);
    v
}

/// Reads one message from a raw socket (test peers that misbehave).
fn read_msg(s: &mut TcpStream, buf: &mut Vec<u8>) -> Message {
    s.set_read_timeout(Some(WAIT)).unwrap();
    loop {
        if let Some((m, n)) = decode_message(buf, 0).unwrap() {
            buf.drain(..n);
            return m;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "peer closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A hand-driven primary that has completed the handshake; returns the
/// stream offset after the Hello (where the first entry will start).
fn raw_primary(listener: &Listener) -> (TcpStream, u64) {
    let mut s = TcpStream::connect(listener.local_addr()).unwrap();
    let h = msg_bytes(&Message::Hello(hello()));
    s.write_all(&h).unwrap();
    (s, h.len() as u64)
}

/// A hand-driven backup: accepts one connection, reads the primary's `Hello`, answers
/// `Welcome { next_seq }`, then runs `script` on the connection (and what it has read ahead).
fn fake_backup<T: Send + 'static>(
    next_seq: u64,
    script: impl FnOnce(TcpStream, Vec<u8>) -> T + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<T>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let backup = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        assert!(matches!(read_msg(&mut s, &mut buf), Message::Hello(_)));
        s.write_all(&msg_bytes(&Message::Welcome { next_seq }))
            .unwrap();
        script(s, buf)
    });
    (addr, backup)
}

/// The backup's side of a handshake: takes the expected primary's `Hello` within `wait`.
fn accept_with(
    listener: &Listener,
    c: ChannelConfig,
    wait: Duration,
) -> Result<LogReceiver, ChannelError> {
    let exp = expected();
    listener.accept(|h| exp.check(h), c, Some(wait))
}

fn accept(listener: &Listener) -> Result<LogReceiver, ChannelError> {
    accept_with(listener, cfg(), WAIT)
}

/// As [`accept_with`], for a new backup: takes the expected primary's state offer, whatever
/// the memory size.
fn accept_offer(
    listener: &Listener,
    c: ChannelConfig,
    wait: Duration,
) -> Result<StateReceiver, ChannelError> {
    let exp = expected();
    listener.accept_transfer(|h, _| exp.check(h), c, Some(wait))
}

/// A backup's receiver with a hand-driven primary on the other end ([`raw_primary`]); the
/// listener too, kept as long as the test runs, as a node keeps its own.
fn raw_link() -> (Listener, TcpStream, u64, LogReceiver) {
    let listener = listen();
    let (s, start) = raw_primary(&listener);
    let receiver = accept(&listener).unwrap();
    (listener, s, start, receiver)
}

#[test]
fn handshake_is_accepted() {
    let (sender, receiver) = pair(cfg());
    assert_eq!(sender.welcome_seq(), 0);
    assert_eq!(receiver.hello(), &hello());
    assert!(sender.is_alive() && receiver.is_alive());
    assert_eq!(sender.acked(), None);
    assert_eq!(sender.lag().entries, 0);
    sender.close().unwrap();
}

#[test]
fn refused_for_each_reason_and_the_listener_keeps_accepting() {
    let listener = listen();
    let addr = listener.local_addr();
    let cases: Vec<(Hello, &str)> = vec![
        (
            Hello {
                protocol_version: PROTOCOL_VERSION + 1,
                ..hello()
            },
            "unsupported channel protocol version",
        ),
        (
            Hello {
                magic: *b"NOTUSTDY",
                ..hello()
            },
            "bad magic",
        ),
        (
            Hello {
                guest_image_sha256: [9; 32],
                ..hello()
            },
            "guest image mismatch",
        ),
        (
            Hello {
                viewnum: VIEW + 1,
                ..hello()
            },
            "view mismatch",
        ),
        (
            Hello {
                primary: "mallory".into(),
                ..hello()
            },
            "not the primary",
        ),
    ];
    // Another version or magic is refused by the listener itself; only the
    // rest reach the node's check in `accept`.
    let n = cases.len() - 2;
    let backup = thread::spawn(move || {
        let mut refusals = Vec::new();
        for _ in 0..n {
            match accept(&listener) {
                Err(ChannelError::RefusedPrimary { reason, .. }) => refusals.push(reason),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        // Still listening: the right primary gets in.
        (refusals, accept(&listener).unwrap())
    });
    for (h, why) in cases {
        match LogSender::connect(addr, h, cfg()) {
            Err(e @ ChannelError::Refused { .. }) => {
                let text = e.to_string();
                assert!(text.contains(why), "{text}");
                assert!(text.contains(&addr.to_string()), "{text}");
            }
            other => panic!("expected Refused ({why}), got {other:?}"),
        }
    }
    let sender = LogSender::connect(addr, hello(), cfg()).unwrap();
    let (refusals, receiver) = backup.join().unwrap();
    assert_eq!(refusals.len(), n);
    sender.send(&frame(0)).unwrap();
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(0)));
}

/// What a peer that is not a primary gets: a `Refuse` saying why (with the stream offset), then
/// the end of the connection; `accept` never sees it.
#[test]
fn garbage_instead_of_hello_is_refused_with_a_clear_reason() {
    let listener = listen();
    let refusal = |s: &mut TcpStream| match read_msg(s, &mut Vec::new()) {
        Message::Refuse { reason } => reason,
        m => panic!("expected a refusal, got {m:?}"),
    };
    let mut s = TcpStream::connect(listener.local_addr()).unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let reason = refusal(&mut s);
    assert!(
        reason.contains("byte 0: frame length") && reason.contains("exceeds"),
        "{reason}"
    );
    assert!(reason.contains(&me.to_string()), "{reason}");

    // A well-framed message of an unknown type 0.
    let mut s = TcpStream::connect(listener.local_addr()).unwrap();
    let body = [0u8, 1, 2];
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast_hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    s.write_all(&bytes).unwrap();
    let reason = refusal(&mut s);
    assert!(
        reason.contains("byte 8: unknown channel message type 0"),
        "{reason}"
    );

    // A well-formed message that no primary starts with.
    let mut s = TcpStream::connect(listener.local_addr()).unwrap();
    s.write_all(&msg_bytes(&Message::Ack { seq: 1 })).unwrap();
    let reason = refusal(&mut s);
    assert!(reason.contains("sent Ack at stream byte 0"), "{reason}");

    // Silence instead of a Hello: bounded by the handshake deadline.
    let mut s = TcpStream::connect(listener.local_addr()).unwrap();
    let t = Instant::now();
    let reason = refusal(&mut s);
    assert!(reason.contains("handshake deadline"), "{reason}");
    assert!(t.elapsed() >= cfg().handshake_timeout, "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    let e = accept_with(&listener, cfg(), Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, ChannelError::AcceptTimeout { .. }), "{e:?}");
    let stats = listener.stats();
    assert_eq!((stats.rejected, stats.timed_out), (3, 1), "{stats:?}");
}

/// CRC-32/IEEE, bitwise (tests avoid depending on crc32fast directly).
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn streams_20000_mixed_entries_in_order() {
    const N: u64 = 20_000;
    let (sender, receiver) = pair(cfg());
    let backup = thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < N as usize {
            match receiver.recv(WAIT).unwrap() {
                Some(f) => got.push(f),
                None => panic!("stalled after {} entries", got.len()),
            }
        }
        (got, receiver)
    });
    for i in 0..N {
        sender.send(&frame(i)).unwrap();
    }
    assert!(sender.wait_acked(N - 1, WAIT).unwrap());
    assert_eq!(sender.acked(), Some(N - 1));
    assert_eq!(sender.lag().entries, 0);
    assert_eq!(sender.lag().t_ns, 0);
    let (got, _receiver) = backup.join().unwrap();
    assert_eq!(got.len(), N as usize);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f, &frame(i as u64));
    }
    // Already acked: immediate.
    assert!(sender.wait_acked(5, Duration::ZERO).unwrap());
    // Not sent yet: times out.
    assert!(!sender.wait_acked(N, Duration::from_millis(50)).unwrap());
    sender.close().unwrap();
}

#[test]
fn queued_entries_leave_together_at_push_and_are_never_stranded() {
    let c = ChannelConfig {
        max_unacked: 20,
        heartbeat_interval: Duration::from_secs(5),
        ..cfg()
    };
    let (sender, receiver) = pair(c);
    for i in 0..3 {
        sender.queue(&frame(i)).unwrap();
    }
    sender.push();
    for i in 0..3 {
        assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(i)));
    }
    assert!(sender.wait_acked(2, WAIT).unwrap());
    // Never pushed, the window fills with entries only queued: the sender must get them on
    // the wire itself, or no ack could ever make room (the heartbeat is 5 s off).
    let backup = thread::spawn(move || {
        for i in 3..60 {
            assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(i)));
        }
        receiver
    });
    for i in 3..60 {
        // A full window gives up after `send_timeout` (300 ms), far short of the heartbeat.
        sender.queue(&frame(i)).unwrap();
    }
    sender.push();
    assert!(sender.wait_acked(59, WAIT).unwrap());
    let _receiver = backup.join().unwrap();
}

/// `push_due`: an entry output waits for goes at once and takes the entries held before it;
/// an entry no output waits for, logged right after a write, waits for the next due push;
/// after a quiet spell of `batch_hold` it goes at once.
#[test]
fn entries_no_output_waits_for_go_with_the_next_write_unless_the_link_was_quiet() {
    let output = |i: u64| Frame {
        entry: Entry::Output {
            pos: Position::AtExit { exits: i },
            console_bytes: i,
            released: 0,
        },
        ..frame(i)
    };
    let input = |i: u64| Frame {
        entry: entry(6 * i),
        ..frame(i)
    };
    // Nothing but `push_due` may put the held entry on the wire for the whole test: no
    // heartbeat (which would carry it), and a backup that waits as long.
    let held = ChannelConfig {
        peer_timeout: Duration::from_secs(120),
        heartbeat_interval: Duration::from_secs(60),
        batch_hold: Duration::from_secs(60),
        ..cfg()
    };
    let (sender, receiver) = pair(held.clone());
    sender.queue(&output(0)).unwrap();
    sender.push_due();
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(output(0)));
    sender.queue(&input(1)).unwrap();
    sender.push_due();
    assert_eq!(
        receiver.recv(Duration::from_millis(300)).unwrap(),
        None,
        "an entry no output waits for left within batch_hold of the last write"
    );
    sender.queue(&output(2)).unwrap();
    sender.push_due();
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(input(1)));
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(output(2)));
    assert!(sender.wait_acked(2, WAIT).unwrap());
    // A plain `push` takes a held entry whatever it is.
    sender.queue(&input(3)).unwrap();
    sender.push_due();
    sender.push();
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(input(3)));

    let quiet = ChannelConfig {
        batch_hold: Duration::from_millis(20),
        ..held
    };
    let (sender, receiver) = pair(quiet);
    // The handshake was the last write; an entry after more than `batch_hold` goes at once,
    // and nothing else would send it for a minute.
    thread::sleep(Duration::from_millis(100));
    sender.queue(&input(0)).unwrap();
    sender.push_due();
    let got = receiver.recv(WAIT).unwrap();
    assert_eq!(got, Some(input(0)), "an entry after a quiet spell was held");
}

/// The primary times its channel's round trip from a write of entries to the ack covering
/// them: a backup that holds each ack for a known time shows up as at least that, and never as
/// more than the primary waited in all.
#[test]
fn the_round_trip_is_timed_from_the_write_to_the_ack_that_covers_it() {
    const HOLDS_MS: [u64; 3] = [30, 60, 90];
    let (addr, backup) = fake_backup(0, |mut s, mut buf| {
        for (seq, hold) in (0u64..).zip(HOLDS_MS) {
            loop {
                match read_msg(&mut s, &mut buf) {
                    Message::Heartbeat { .. } => continue,
                    Message::Entry(f) => assert_eq!(f.seq, seq),
                    m => panic!("{m:?} instead of entry {seq}"),
                }
                break;
            }
            thread::sleep(Duration::from_millis(hold));
            s.write_all(&msg_bytes(&Message::Ack { seq })).unwrap();
        }
        // Stay until the primary closes (its Bye; heartbeats before it).
        while let Message::Heartbeat { .. } = read_msg(&mut s, &mut buf) {}
    });
    let sender = LogSender::connect(addr, hello(), cfg()).unwrap();
    let kept = logging_channel::net::RoundTrips::default();
    assert!(sender.keep_round_trips(std::sync::Arc::clone(&kept)));
    let mut waited = Vec::new();
    for seq in 0..HOLDS_MS.len() as u64 {
        let started = Instant::now();
        sender.send(&frame(seq)).unwrap();
        assert!(sender.wait_acked(seq, WAIT).unwrap());
        waited.push(started.elapsed());
    }
    let got = kept.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        HOLDS_MS.len(),
        "one round trip per acked write: {got:?}"
    );
    for ((us, hold), waited) in got.iter().zip(HOLDS_MS).zip(waited) {
        let rt = Duration::from_micros(u64::from(*us));
        assert!(
            rt >= Duration::from_millis(hold),
            "{rt:?} for an ack held {hold} ms"
        );
        assert!(
            rt <= waited,
            "{rt:?}, but the primary waited only {waited:?}"
        );
    }
    drop(sender);
    backup.join().unwrap();
}

#[test]
fn flow_control_window_full_lag_and_resume() {
    let c = ChannelConfig {
        max_unacked: 100,
        max_buffered: 50,
        ..cfg()
    };
    let (sender, receiver) = pair(c.clone());
    let mut sent = 0u64;
    let full_after = loop {
        let t = Instant::now();
        match sender.send(&frame(sent)) {
            Ok(()) => sent += 1,
            Err(ChannelError::WindowFull { unacked, .. }) => {
                assert!(t.elapsed() >= c.send_timeout, "{:?}", t.elapsed());
                assert_eq!(unacked, 100);
                break sent;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 1_000, "the window never filled");
    };
    // The backup acked only what fits its buffer.
    assert!((100..=150).contains(&full_after), "{full_after}");
    let acked = sender.acked().unwrap();
    assert_eq!(acked, full_after - 101);
    assert_eq!(receiver.buffered(), 50);
    let lag = sender.lag();
    assert_eq!(lag.entries, 100);
    assert_eq!(lag.t_ns, frame(full_after - 1).t_ns - frame(acked).t_ns);
    assert!(
        sender.is_alive() && receiver.is_alive(),
        "a stall is not a failure"
    );

    // Drain: sending resumes and everything arrives in order.
    let total = full_after + 500;
    let backup = thread::spawn(move || {
        for i in 0..total {
            assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(i)));
        }
        receiver
    });
    for i in full_after..total {
        sender.send(&frame(i)).unwrap();
    }
    assert!(sender.wait_acked(total - 1, WAIT).unwrap());
    let _receiver = backup.join().unwrap();
    assert_eq!(sender.lag().entries, 0);
}

#[test]
fn lag_grows_while_the_backup_lags() {
    let c = ChannelConfig {
        max_buffered: 10,
        ..cfg()
    };
    let (sender, receiver) = pair(c);
    for i in 0..10 {
        sender.send(&frame(i)).unwrap();
    }
    assert!(sender.wait_acked(9, WAIT).unwrap());
    assert_eq!(sender.lag().entries, 0);
    // The backup's buffer is full; these stay unacknowledged.
    for i in 10..40 {
        sender.send(&frame(i)).unwrap();
    }
    thread::sleep(Duration::from_millis(200));
    let lag = sender.lag();
    assert_eq!(lag.entries, 30);
    assert_eq!(lag.t_ns, frame(39).t_ns - frame(9).t_ns);
    // The backup catches up: lag returns to zero.
    for i in 0..40 {
        assert_eq!(receiver.recv(WAIT).unwrap().unwrap().seq, i);
    }
    let ok = sender.wait_acked(39, WAIT).unwrap();
    assert!(
        ok,
        "acked {:?} last_received {:?} lag {:?}",
        sender.acked(),
        receiver.last_received(),
        sender.lag()
    );
    assert_eq!(sender.lag(), Default::default());
    assert_eq!(receiver.recv(Duration::from_millis(20)).unwrap(), None);
}

#[test]
fn idle_link_stays_alive_on_heartbeats() {
    let c = cfg();
    let (sender, receiver) = pair(c.clone());
    // Three peer timeouts, thirty heartbeat intervals.
    thread::sleep(c.peer_timeout * 3);
    assert!(sender.is_alive(), "{:?}", sender.error());
    assert!(receiver.is_alive(), "{:?}", receiver.error());
    sender.send(&frame(0)).unwrap();
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(0)));
    assert!(sender.wait_acked(0, WAIT).unwrap());
}

#[test]
fn closing_the_primary_fails_the_backup_after_it_drains() {
    let (sender, receiver) = pair(cfg());
    let primary = receiver.peer_addr();
    sender.send(&frame(0)).unwrap();
    sender.send(&frame(1)).unwrap();
    let t = Instant::now();
    drop(sender);
    // Entries received before the end are still delivered.
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(0)));
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(1)));
    let e = receiver.recv(WAIT).unwrap_err();
    assert!(t.elapsed() < cfg().peer_timeout + Duration::from_millis(500));
    assert!(matches!(e, ChannelError::Bye { .. }), "{e:?}");
    assert!(e.to_string().contains(&primary.to_string()), "{e}");
    assert!(!receiver.is_alive());
}

#[test]
fn closing_the_backup_fails_the_primary_promptly() {
    let (sender, receiver) = pair(cfg());
    let backup = sender.peer_addr();
    let t = Instant::now();
    drop(receiver);
    let e = sender.wait_acked(0, WAIT).unwrap_err();
    assert!(t.elapsed() < cfg().peer_timeout + Duration::from_millis(500));
    assert!(e.to_string().contains(&backup.to_string()), "{e}");
    let e2 = sender.send(&frame(0)).unwrap_err();
    assert_eq!(e.to_string(), e2.to_string());
    assert!(!sender.is_alive());
}

#[test]
fn a_silent_primary_times_out_on_the_backup() {
    let (_listener, mut s, _, receiver) = raw_link();
    let mut buf = Vec::new();
    assert_eq!(read_msg(&mut s, &mut buf), Message::Welcome { next_seq: 0 });
    let t = Instant::now();
    let e = receiver.recv(WAIT).unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ChannelError::PeerTimeout { .. }), "{e:?}");
    assert!(took >= cfg().peer_timeout && took < cfg().peer_timeout + Duration::from_millis(500));
    assert!(
        e.to_string().contains(&s.local_addr().unwrap().to_string()),
        "{e}"
    );
    // Meanwhile the backup heartbeated the (silent) primary.
    assert!(matches!(
        read_msg(&mut s, &mut buf),
        Message::Heartbeat { last_seq: None, .. }
    ));
}

#[test]
fn a_silent_backup_times_out_on_the_primary() {
    // Welcome, then silence, with the socket open.
    let (addr, backup) = fake_backup(0, |s, _| {
        thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let sender = LogSender::connect(addr, hello(), cfg()).unwrap();
    sender.send(&frame(0)).unwrap();
    let t = Instant::now();
    let e = sender.wait_acked(0, WAIT).unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ChannelError::PeerTimeout { .. }), "{e:?}");
    assert!(
        took < cfg().peer_timeout + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    drop(sender);
    backup.join().unwrap();
}

#[test]
fn welcome_for_another_seq_is_an_error() {
    let (addr, backup) = fake_backup(7, |mut s, mut buf| read_msg(&mut s, &mut buf));
    let e = LogSender::connect(addr, hello(), cfg()).unwrap_err();
    assert!(
        matches!(
            e,
            ChannelError::WelcomeMismatch {
                first_seq: 0,
                next_seq: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(backup.join().unwrap(), Message::Bye { .. }));
}

fn seq_error_case(seqs: &[u64]) -> (ChannelError, u64, Vec<Frame>) {
    let (_listener, mut s, mut offset, receiver) = raw_link();
    let mut bad_at = 0;
    let mut stream = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        if i == seqs.len() - 1 {
            bad_at = offset;
        }
        let b = msg_bytes(&Message::Entry(frame(seq)));
        offset += b.len() as u64;
        stream.extend_from_slice(&b);
    }
    s.write_all(&stream).unwrap();
    let mut got = Vec::new();
    let e = loop {
        match receiver.recv(WAIT) {
            Ok(Some(f)) => got.push(f),
            Ok(None) => panic!("no error"),
            Err(e) => break e,
        }
    };
    (e, bad_at, got)
}

#[test]
fn seq_gap_and_duplicate_are_detected() {
    let (e, at, got) = seq_error_case(&[0, 1, 3]);
    assert_eq!(got, vec![frame(0), frame(1)]);
    assert!(
        matches!(e, ChannelError::SeqGap { expected: 2, found: 3, offset, .. } if offset == at),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("seq 3") && text.contains("seq 2"), "{text}");

    let (e, at, _) = seq_error_case(&[0, 1, 1]);
    assert!(
        matches!(e, ChannelError::SeqGap { expected: 2, found: 1, offset, .. } if offset == at),
        "{e:?}"
    );

    // Starting anywhere but the welcomed seq is a gap too.
    let (e, _, _) = seq_error_case(&[1]);
    assert!(
        matches!(
            e,
            ChannelError::SeqGap {
                expected: 0,
                found: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_corrupted_frame_is_detected_with_its_offset() {
    let (_listener, mut s, start, receiver) = raw_link();
    let mut stream = Vec::new();
    let mut offsets = Vec::new();
    for i in 0..5 {
        offsets.push(start + stream.len() as u64);
        encode_message(&Message::Entry(frame(i)), &mut stream);
    }
    // One bit in the body of entry 3 (after its 8-byte envelope).
    let at = (offsets[3] - start) as usize + 20;
    stream[at] ^= 0x10;
    s.write_all(&stream).unwrap();
    for i in 0..3 {
        assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(i)));
    }
    let e = receiver.recv(WAIT).unwrap_err();
    assert!(
        matches!(e, ChannelError::Corrupt { source: CodecError::Crc { offset, .. }, .. } if offset == offsets[3]),
        "{e:?}"
    );
    assert_eq!(e.offset(), Some(offsets[3]));
    assert!(
        e.to_string().contains(&format!("byte {}", offsets[3])),
        "{e}"
    );
}

#[test]
fn an_oversized_length_is_refused_before_reading_the_body() {
    let (_listener, mut s, start, receiver) = raw_link();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    s.write_all(&[0; 4]).unwrap();
    let e = receiver.recv(WAIT).unwrap_err();
    assert!(
        matches!(e, ChannelError::Corrupt { source: CodecError::FrameTooLarge { offset, .. }, .. } if offset == start),
        "{e:?}"
    );
}

#[test]
fn sends_must_be_consecutive() {
    let (sender, _receiver) = pair(cfg());
    sender.send(&frame(0)).unwrap();
    let e = sender.send(&frame(2)).unwrap_err();
    assert!(
        matches!(
            e,
            ChannelError::OutOfOrder {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{e:?}"
    );
    // A caller bug, not a broken link.
    assert!(sender.is_alive());
    sender.send(&frame(1)).unwrap();
    assert!(sender.wait_acked(1, WAIT).unwrap());
}

#[test]
fn net_frames_stream_and_an_invalid_one_is_refused_at_send() {
    let (sender, receiver) = pair(cfg());
    let net = |seq: u64, frame: Vec<u8>| Frame {
        seq,
        t_ns: seq,
        state_check: 0,
        entry: if seq.is_multiple_of(2) {
            Entry::NetRx {
                pos: Position::AtExit { exits: seq },
                frame,
            }
        } else {
            Entry::NetTx {
                pos: Position::AtExit { exits: seq },
                frame,
            }
        },
    };
    let sent = [net(0, vec![0xff; 60]), net(1, vec![0x11; 1514])];
    for f in &sent {
        sender.send(f).unwrap();
    }
    let e = sender
        .send(&net(2, vec![0; logging_channel::MAX_NET_FRAME + 1]))
        .unwrap_err();
    assert!(
        matches!(e, ChannelError::InvalidEntry { seq: 2, ref what, .. }
            if what == "net-rx frame of 65536 bytes is longer than the maximum of 65535"),
        "{e:?}"
    );
    // A caller bug, not a broken link: the seq is still free.
    assert!(sender.is_alive());
    sender.send(&net(2, vec![0x22; 14])).unwrap();
    assert!(sender.wait_acked(2, WAIT).unwrap());
    for want in sent.iter().chain([&net(2, vec![0x22; 14])]) {
        assert_eq!(&receiver.recv(WAIT).unwrap().unwrap(), want);
    }
}

#[test]
fn entry_payload_is_the_log_entry_body() {
    for i in 0..12 {
        let f = frame(i);
        let mut log = Vec::new();
        encode_frame(&f, &mut log);
        let wire = msg_bytes(&Message::Entry(f.clone()));
        assert_eq!(wire[8], 4, "Entry message type");
        assert_eq!(&wire[9..], &log[8..]);
        let (m, n) = decode_message(&wire, 0).unwrap().unwrap();
        assert_eq!((m, n), (Message::Entry(f), wire.len()));
    }
}

#[test]
fn every_message_round_trips_and_partial_input_waits() {
    let msgs = vec![
        Message::Hello(hello()),
        Message::Welcome { next_seq: 42 },
        Message::Refuse {
            reason: "no".into(),
        },
        Message::Entry(frame(3)),
        Message::Ack { seq: 9 },
        Message::Heartbeat {
            t_ns: 5,
            last_seq: Some(4),
        },
        Message::Heartbeat {
            t_ns: 0,
            last_seq: None,
        },
        Message::Bye {
            reason: "done".into(),
        },
        Message::StateOffer {
            hello: hello(),
            mem_bytes: 64 << 20,
        },
        Message::StatePages {
            records: vec![1, 2, 3],
        },
        Message::StateFinal { blob: vec![9; 100] },
        Message::StateInstalled { next_seq: 77 },
        Message::Released { bytes: 1 << 40 },
        Message::Replayed { seq: 12, t_ns: 34 },
    ];
    for m in msgs {
        let b = msg_bytes(&m);
        for cut in 0..b.len() {
            assert_eq!(decode_message(&b[..cut], 0).unwrap(), None);
        }
        assert_eq!(decode_message(&b, 0).unwrap(), Some((m, b.len())));
    }
}

#[test]
fn the_backup_hears_how_much_output_the_primary_released() {
    let (sender, receiver) = pair(cfg());
    assert_eq!(receiver.released(), 0);
    sender.send(&frame(0)).unwrap();
    sender.released(120);
    sender.released(300);
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.released() < 300 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(receiver.released(), 300);
    // Not an entry: the stream's entries are untouched.
    assert_eq!(
        receiver.recv(Duration::from_secs(1)).unwrap(),
        Some(frame(0))
    );
    assert_eq!(receiver.recv(Duration::from_millis(50)).unwrap(), None);
}

/// Long enough that a report in these tests is never stale.
const QUIET: Duration = Duration::from_secs(60);

#[test]
fn the_primary_waits_while_the_backups_replay_lags() {
    let (sender, receiver) = pair(cfg());
    let max = Lag {
        entries: 3,
        t_ns: u64::MAX,
    };
    for i in 0..10 {
        sender.send(&frame(i)).unwrap();
    }
    // No report yet: nothing to hold the primary back with.
    assert_eq!(sender.replay_lag(), None);
    assert_eq!(sender.replay_backlog(), None);
    assert!(
        sender
            .wait_replay_within(max, QUIET, Duration::ZERO)
            .unwrap()
    );
    receiver.replayed(2, frame(2).t_ns).unwrap();
    let lagging = Lag {
        entries: 7,
        t_ns: frame(9).t_ns - frame(2).t_ns,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while (sender.replay_lag() != Some(lagging) || sender.acked() != Some(9))
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sender.replay_lag(), Some(lagging));
    // Everything sent was received: the backlog is the whole lag but for the stretch the replay
    // is working through (from entry 2 to entry 3).
    assert_eq!(
        sender.replay_backlog(),
        Some(Lag {
            entries: 6,
            t_ns: frame(9).t_ns - frame(3).t_ns,
        })
    );
    assert!(
        !sender
            .wait_replay_within(max, QUIET, Duration::from_millis(50))
            .unwrap()
    );
    // The replay catches up while the primary waits: the wait ends early.
    let catch_up = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        receiver.replayed(7, frame(7).t_ns).unwrap();
        receiver
    });
    let started = Instant::now();
    assert!(
        sender
            .wait_replay_within(max, QUIET, Duration::from_secs(5))
            .unwrap()
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(sender.replay_lag().map(|l| l.entries), Some(2));
    let receiver = catch_up.join().unwrap();
    // A backup that stops reporting is not waited for once it has been quiet that long.
    for i in 10..20 {
        sender.send(&frame(i)).unwrap();
    }
    let started = Instant::now();
    assert!(
        sender
            .wait_replay_within(max, Duration::from_millis(200), Duration::from_secs(5))
            .unwrap()
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    drop(receiver);
}

#[test]
fn the_stretch_a_replay_is_working_through_is_not_held_against_it() {
    // A guest that logs rarely: entries a second of recorded time apart.
    let spaced = |i: u64| Frame {
        t_ns: 1_000_000_000 * i,
        ..frame(i)
    };
    let (sender, receiver) = pair(cfg());
    let max = Lag {
        entries: 1024,
        t_ns: 40_000_000,
    };
    sender.send(&spaced(0)).unwrap();
    sender.send(&spaced(1)).unwrap();
    receiver.replayed(0, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while (sender.acked() != Some(1) || sender.replay_backlog().is_none())
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    // The replay is a second behind, but it cannot be anywhere but between entries 0 and 1
    // until entry 2 exists: the primary does not wait.
    assert_eq!(sender.replay_lag().map(|l| l.t_ns), Some(1_000_000_000));
    assert_eq!(sender.replay_backlog(), Some(Lag::default()));
    assert!(
        sender
            .wait_replay_within(max, QUIET, Duration::ZERO)
            .unwrap()
    );
    // A second stretch received and not begun is a backlog: the primary waits for it.
    sender.send(&spaced(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sender.acked() != Some(2) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        sender.replay_backlog(),
        Some(Lag {
            entries: 1,
            t_ns: 1_000_000_000,
        })
    );
    assert!(
        !sender
            .wait_replay_within(max, QUIET, Duration::from_millis(20))
            .unwrap()
    );
    // Reaching entry 1 leaves only the stretch toward entry 2.
    receiver.replayed(1, spaced(1).t_ns).unwrap();
    assert!(
        sender
            .wait_replay_within(max, QUIET, Duration::from_secs(5))
            .unwrap()
    );
    assert_eq!(sender.replay_backlog(), Some(Lag::default()));
}

#[test]
fn a_replay_report_beyond_what_was_sent_is_an_error() {
    let (addr, backup) = fake_backup(0, |mut s, mut buf| {
        read_msg(&mut s, &mut buf);
        s.write_all(&msg_bytes(&Message::Replayed { seq: 5, t_ns: 0 }))
            .unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let sender = LogSender::connect(addr, hello(), cfg()).unwrap();
    sender.send(&frame(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sender.is_alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let e = sender.error().expect("the channel failed");
    assert!(
        matches!(
            e,
            ChannelError::BadReplayed {
                seq: 5,
                sent: Some(0),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("replayed"), "{e}");
    backup.join().unwrap();
}

#[test]
fn a_backup_that_stops_receiving_acks_nothing_more_but_keeps_what_it_has() {
    let (sender, receiver) = pair(cfg());
    for i in 0..5 {
        sender.send(&frame(i)).unwrap();
    }
    assert!(sender.wait_acked(4, WAIT).unwrap());
    receiver.stop_receiving("view 7 names this node primary");
    // Sent after the stop: never acknowledged, never received.
    let _ = sender.send(&frame(5));
    assert!(matches!(
        sender.wait_acked(5, WAIT),
        Err(ChannelError::Bye { ref reason, .. }) if reason.contains("view 7")
    ));
    assert_eq!(sender.acked(), Some(4));
    for i in 0..5 {
        assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(i)));
    }
    let e = receiver.recv(WAIT).unwrap_err();
    assert!(
        matches!(e, ChannelError::Stopped { ref reason, .. } if reason.contains("view 7")),
        "{e:?}"
    );
}

#[test]
fn an_entry_followed_by_a_heartbeat_is_still_acked() {
    let (_listener, mut s, _, receiver) = raw_link();
    let mut buf = Vec::new();
    assert_eq!(read_msg(&mut s, &mut buf), Message::Welcome { next_seq: 0 });
    // One write, so the backup sees both in one read: the entry is not the
    // last buffered message, yet it must be acknowledged.
    let mut bytes = msg_bytes(&Message::Entry(frame(0)));
    bytes.extend(msg_bytes(&Message::Heartbeat {
        t_ns: 0,
        last_seq: Some(0),
    }));
    s.write_all(&bytes).unwrap();
    loop {
        match read_msg(&mut s, &mut buf) {
            Message::Ack { seq } => {
                assert_eq!(seq, 0);
                break;
            }
            Message::Heartbeat { .. } => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(0)));
}

#[test]
fn a_backup_that_vanishes_without_bye_fails_the_primary() {
    let (addr, backup) = fake_backup(0, |s, _| {
        thread::sleep(Duration::from_millis(100));
        // Dropped like a killed process: FIN, no Bye.
        drop(s);
    });
    let sender = LogSender::connect(addr, hello(), cfg()).unwrap();
    backup.join().unwrap();
    let t = Instant::now();
    let e = sender.wait_acked(0, WAIT).unwrap_err();
    assert!(t.elapsed() < cfg().peer_timeout, "{:?}", t.elapsed());
    // FIN, or RST if our heartbeats were still unread in its socket (met by the reader, or by
    // the writer's next heartbeat).
    assert!(
        matches!(
            e,
            ChannelError::PeerClosed { .. }
                | ChannelError::Read { .. }
                | ChannelError::Write { .. }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert!(sender.send(&frame(0)).is_err());
}

#[test]
fn a_primary_that_vanishes_mid_frame_is_reported_as_truncated() {
    let (_listener, mut s, start, receiver) = raw_link();
    let whole = msg_bytes(&Message::Entry(frame(0)));
    let partial = msg_bytes(&Message::Entry(frame(1)));
    s.write_all(&whole).unwrap();
    s.write_all(&partial[..10]).unwrap();
    // Half-close: a full close with the backup's heartbeats unread would
    // be a reset, which Linux may report before the data.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(receiver.recv(WAIT).unwrap(), Some(frame(0)));
    let e = receiver.recv(WAIT).unwrap_err();
    assert!(
        matches!(e, ChannelError::Truncated { offset, have: 10, .. } if offset == start + whole.len() as u64),
        "{e:?}"
    );
}

/// A whole state transfer over loopback: offer, pages, final state, install, then the log
/// stream continues on the same connection from the state's next entry.
#[test]
fn state_transfer_then_stream_on_the_same_connection() {
    state_transfer_then_stream(b"machine".to_vec());
}

/// A machine state larger than a frame (a long-lived guest's console history) goes in pieces
/// and arrives whole, whatever its size against the piece size (it once failed every transfer
/// after a megabyte of console output, leaving the primary holding its output for good).
#[test]
fn a_state_larger_than_a_frame_arrives_whole() {
    let pattern = |n: usize| {
        (0..n)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect::<Vec<u8>>()
    };
    for len in [3 * STATE_PIECE + 17, 2 * STATE_PIECE, STATE_PIECE + 1, 0] {
        state_transfer_then_stream(pattern(len));
    }
}

fn state_transfer_then_stream(state: Vec<u8>) {
    let listener = listen();
    let addr = listener.local_addr();
    let backup = thread::spawn(move || {
        let exp = expected();
        let mut rx = listener
            .accept_transfer(
                |h, mem| {
                    exp.check(h)?;
                    if mem == 8 * PAGE_SIZE as u64 {
                        Ok(())
                    } else {
                        Err(format!("memory {mem}"))
                    }
                },
                cfg(),
                Some(WAIT),
            )
            .unwrap();
        let mut memory = vec![0xeeu8; 8 * PAGE_SIZE];
        let blob = loop {
            match rx.next_part().unwrap() {
                StatePart::Pages(records) => {
                    for (i, page) in decode_pages(&records, 8).unwrap() {
                        let at = i as usize * PAGE_SIZE;
                        match page {
                            Some(p) => memory[at..at + PAGE_SIZE].copy_from_slice(p),
                            None => memory[at..at + PAGE_SIZE].fill(0),
                        }
                    }
                }
                StatePart::Final(blob) => break blob,
            }
        };
        let exp = expected();
        let log = rx.installed(40, |h| exp.check(h)).unwrap();
        let got: Vec<Frame> = (0..3).map(|_| log.recv(WAIT).unwrap().unwrap()).collect();
        // The receiver lives on (in the join handle) until the primary has seen the acks:
        // dropping it here would send a Bye that may overtake the last ack.
        (memory, blob, got, log)
    });
    let mut tx = StateSender::connect(addr, hello(), 8 * PAGE_SIZE as u64, cfg()).unwrap();
    let mut expect = vec![0u8; 8 * PAGE_SIZE];
    let mut records = Vec::new();
    for i in 0..8u32 {
        let page = if i % 3 == 0 {
            vec![0u8; PAGE_SIZE]
        } else {
            vec![i as u8; PAGE_SIZE]
        };
        expect[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE].copy_from_slice(&page);
        encode_page(&mut records, i, &page);
    }
    tx.send_pages(records).unwrap();
    let first = Frame {
        seq: 40,
        ..frame(40)
    };
    let sender = tx
        .finish(state.clone(), Hello::new(IMAGE, VIEW, "alpha", 40), WAIT)
        .unwrap();
    for i in 40..43 {
        sender.send(&Frame { seq: i, ..frame(i) }).unwrap();
    }
    assert!(sender.wait_acked(42, WAIT).unwrap());
    let (memory, blob, got, _log) = backup.join().unwrap();
    assert_eq!(memory, expect, "zero pages overwrite, data pages copy");
    assert!(
        blob == state,
        "the state arrived as {} bytes of {}",
        blob.len(),
        state.len()
    );
    assert_eq!(got[0], first);
    assert_eq!(
        got.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![40, 41, 42]
    );
}

/// A state offer from a node that is not the view's primary is refused with the reason, and
/// a plain Hello where a state offer is due is refused too (a new backup needs state first).
#[test]
fn state_transfer_refusals() {
    let listener = listen();
    let addr = listener.local_addr();
    let backup = thread::spawn(move || {
        let a = accept_offer(&listener, cfg(), WAIT).err().unwrap();
        let b = accept_offer(&listener, cfg(), WAIT).err().unwrap();
        (a, b)
    });
    let wrong = Hello::new(IMAGE, VIEW, "mallory", 0);
    match StateSender::connect(addr, wrong, 4096, cfg()) {
        Err(ChannelError::Refused { reason, .. }) => {
            assert!(reason.contains("mallory"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match LogSender::connect(addr, hello(), cfg()) {
        Err(ChannelError::Refused { reason, .. }) => {
            assert!(reason.contains("StateOffer"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (a, b) = backup.join().unwrap();
    assert!(matches!(a, ChannelError::RefusedPrimary { .. }), "{a:?}");
    assert!(b.to_string().contains("Hello"), "{b}");
}

// ---- The accept path: junk connections are read concurrently, within the handshake deadline.

/// A connection that is not a primary, as any open port gets them.
struct Junk {
    kind: &'static str,
    /// `None` once reset by this end (nothing left to observe).
    stream: Option<TcpStream>,
    opened: Instant,
    /// What the listener's refusal must say, if it is certain to arrive (a
    /// trickler's unread bytes may turn the listener's close into a reset
    /// that overtakes it).
    reason: Option<&'static str>,
    writer: Option<thread::JoinHandle<()>>,
}

/// Silent, trickling or partial: each holds a handshake until its deadline.
const SLOW_JUNK: usize = 14;
const JUNK: usize = SLOW_JUNK + 6;

/// `JUNK` junk connections to `addr`, of every kind; the slow ones first.
fn open_junk(addr: SocketAddr) -> Vec<Junk> {
    let deadline = Some("handshake deadline");
    let open = |kind, bytes: &[u8], reason| {
        let mut s = TcpStream::connect(addr).unwrap();
        let opened = Instant::now();
        s.write_all(bytes).unwrap();
        Junk {
            kind,
            stream: Some(s),
            opened,
            reason,
            writer: None,
        }
    };
    let mut junk = Vec::new();
    for _ in 0..8 {
        junk.push(open("silent", b"", deadline));
    }
    for _ in 0..2 {
        // Half a frame header, then nothing, like a peer that vanished mid-send.
        junk.push(open("half a header", &[100, 0], deadline));
    }
    for _ in 0..4 {
        // A plausible header, then one byte every 100 ms: never whole in time.
        let mut j = open("trickle", &100u32.to_le_bytes(), None);
        let mut w = j.stream.as_ref().unwrap().try_clone().unwrap();
        j.writer = Some(thread::spawn(move || {
            for _ in 0..30 {
                thread::sleep(Duration::from_millis(100));
                if w.write_all(&[0]).is_err() {
                    return;
                }
            }
        }));
        junk.push(j);
    }
    for _ in 0..2 {
        junk.push(open(
            "http",
            b"GET / HTTP/1.1\r\nHost: backup\r\n\r\n",
            Some("exceeds"),
        ));
    }
    for _ in 0..2 {
        // The start of a TLS ClientHello.
        let tls = [0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3];
        junk.push(open("tls", &tls, Some("exceeds")));
    }
    // Part of a Hello, then a half-close: the listener sees the end mid-message.
    let hello_part = &msg_bytes(&Message::Hello(hello()))[..20];
    let j = open("half-closed", hello_part, Some("inside a message"));
    let s = j.stream.as_ref().unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    junk.push(j);
    // Part of a Hello, then a reset.
    let mut j = open("reset", hello_part, None);
    reset(j.stream.take().unwrap());
    junk.push(j);
    assert_eq!(junk.len(), JUNK);
    let slow = junk
        .iter()
        .filter(|j| j.kind == "silent" || j.kind == "half a header" || j.kind == "trickle");
    assert_eq!(slow.count(), SLOW_JUNK);
    junk
}

/// Closes `s` with a reset rather than a FIN, as a crashed host's kernel answers.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `s` owns an open socket for the whole call, and the option value points to an
    // initialised `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Every junk connection was closed by the listener within `within` of being opened, after a
/// refusal saying why where one is certain to arrive.
fn assert_junk_closed(junk: Vec<Junk>, within: Duration) {
    for j in junk {
        let Some(mut s) = j.stream else { continue };
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        j.opened.elapsed() < within,
                        "{} connection still open after {:?}",
                        j.kind,
                        j.opened.elapsed()
                    );
                }
                Err(_) => break, // reset: closed too
            }
        }
        let closed_after = j.opened.elapsed();
        assert!(
            closed_after < within,
            "{} connection closed after {closed_after:?}",
            j.kind
        );
        if let Some(why) = j.reason {
            match decode_message(&got, 0) {
                Ok(Some((Message::Refuse { reason }, _))) => {
                    assert!(reason.contains(why), "{}: {reason}", j.kind)
                }
                other => panic!("{}: expected a refusal, got {other:?}", j.kind),
            }
        }
        if let Some(w) = j.writer {
            w.join().unwrap();
        }
    }
}

/// How a node's backup takes connections: short waits in a loop.
fn take_offer(l: &Listener) -> Result<StateReceiver, ChannelError> {
    accept_offer(l, cfg(), Duration::from_millis(50))
}

fn take_hello(l: &Listener) -> Result<LogReceiver, ChannelError> {
    accept_with(l, cfg(), Duration::from_millis(50))
}

/// Opens `JUNK` junk connections, then times `connect` (a real primary's) against a backup
/// that runs `take` in a loop, as a node does (on errors too: junk may cause them).
fn behind_junk<R: Send + 'static>(
    take: fn(&Listener) -> Result<R, ChannelError>,
    connect: impl FnOnce(SocketAddr),
) -> (Duration, Listener, Vec<Junk>) {
    let listener = listen();
    let addr = listener.local_addr();
    let junk = open_junk(addr);
    let backup = thread::spawn(move || {
        let give_up = Instant::now() + 3 * WAIT;
        loop {
            match take(&listener) {
                Ok(r) => return (listener, r),
                Err(e) => assert!(Instant::now() < give_up, "no primary taken: {e}"),
            }
        }
    });
    let t = Instant::now();
    connect(addr);
    let took = t.elapsed();
    let (listener, _taken) = backup.join().unwrap();
    (took, listener, junk)
}

/// Generous for a slow machine, yet far below what reading the junk one by one costs
/// (`SLOW_JUNK` × the deadline: 7 s).
const PROMPTLY: Duration = Duration::from_secs(2);

/// A primary that waits as long as a serial accept path would make it.
fn patient() -> ChannelConfig {
    ChannelConfig {
        peer_timeout: 3 * WAIT,
        ..cfg()
    }
}

fn assert_junk_counted(listener: &Listener) {
    let deadline = Instant::now() + WAIT;
    let mut stats = listener.stats();
    while stats.timed_out + stats.rejected < JUNK as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        stats = listener.stats();
    }
    let want = AcceptStats {
        connections: JUNK as u64 + 1,
        rejected: (JUNK - SLOW_JUNK) as u64,
        timed_out: SLOW_JUNK as u64,
        dropped: 0,
        handed_over: 1,
    };
    assert_eq!(stats, want);
}

#[test]
fn junk_connections_do_not_delay_a_state_offer() {
    let (took, listener, junk) = behind_junk(take_offer, |addr| {
        let tx = StateSender::connect(addr, hello(), 4096, patient()).unwrap();
        drop(tx);
    });
    eprintln!("state offer accepted behind {JUNK} junk connections in {took:?}");
    assert!(took < PROMPTLY, "the offer waited {took:?} behind junk");
    assert_junk_closed(junk, cfg().handshake_timeout + Duration::from_secs(1));
    assert_junk_counted(&listener);
}

#[test]
fn junk_connections_do_not_delay_a_hello() {
    let (took, listener, junk) = behind_junk(take_hello, |addr| {
        let tx = LogSender::connect(addr, hello(), patient()).unwrap();
        drop(tx);
    });
    eprintln!("hello accepted behind {JUNK} junk connections in {took:?}");
    assert!(took < PROMPTLY, "the Hello waited {took:?} behind junk");
    assert_junk_closed(junk, cfg().handshake_timeout + Duration::from_secs(1));
    assert_junk_counted(&listener);
}

#[test]
fn only_junk_is_an_accept_timeout() {
    let listener = listen();
    let junk = open_junk(listener.local_addr());
    let wait = Duration::from_secs(1);
    let t = Instant::now();
    let e = accept_offer(&listener, cfg(), wait).err().unwrap();
    let took = t.elapsed();
    assert!(matches!(e, ChannelError::AcceptTimeout { .. }), "{e:?}");
    assert!(
        took >= wait && took < wait + Duration::from_millis(500),
        "{took:?}"
    );
    assert_junk_closed(junk, cfg().handshake_timeout + Duration::from_secs(1));
}

/// Raw primaries whose `Hello`s arrive in this order, while nobody accepts.
fn queue_hellos(listener: &Listener, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let before = listener.stats().connections;
            let (s, _) = raw_primary(listener);
            // One at a time, so the queue's order is known.
            let deadline = Instant::now() + WAIT;
            while listener.stats().connections == before && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(Duration::from_millis(20));
            s
        })
        .collect()
}

fn expect_refusal(s: &mut TcpStream, why: &str) {
    match read_msg(s, &mut Vec::new()) {
        Message::Refuse { reason } => assert!(reason.contains(why), "{reason}"),
        m => panic!("expected a refusal ({why}), got {m:?}"),
    }
}

/// While nobody accepts (a backup busy replaying), at most `MAX_QUEUED` connections wait: the
/// oldest are refused as busy; the rest are taken oldest first; one that waited too long is
/// refused as stale.
#[test]
fn connections_queue_while_nobody_accepts_but_not_many_nor_long() {
    let c = ChannelConfig {
        peer_timeout: Duration::from_secs(5),
        ..cfg()
    };
    let listener = Listener::bind_with("127.0.0.1:0", &c).unwrap();
    let mut primaries = queue_hellos(&listener, MAX_QUEUED + 2);
    for s in &mut primaries[..2] {
        expect_refusal(s, "backup busy");
    }
    for s in &mut primaries[2..] {
        let rx = accept_with(&listener, c.clone(), WAIT).unwrap();
        assert_eq!(rx.peer_addr(), s.local_addr().unwrap(), "oldest first");
        assert_eq!(
            read_msg(s, &mut Vec::new()),
            Message::Welcome { next_seq: 0 }
        );
    }
    let stats = listener.stats();
    assert_eq!(
        (stats.dropped, stats.handed_over),
        (2, MAX_QUEUED as u64),
        "{stats:?}"
    );

    // Taken up later than half the peer timeout: its primary has (nearly) given up.
    let quick = ChannelConfig {
        peer_timeout: Duration::from_millis(200),
        ..cfg()
    };
    let mut late = queue_hellos(&listener, 1).pop().unwrap();
    thread::sleep(quick.peer_timeout);
    let e = accept_with(&listener, quick, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, ChannelError::AcceptTimeout { .. }), "{e:?}");
    expect_refusal(&mut late, "stale");
    assert_eq!(listener.stats().dropped, 3);
}

/// More silent connections than handshakes are read at once: the oldest are dropped, so a
/// primary still gets in; dropping the listener closes the rest and the port.
#[test]
fn a_flood_of_silent_connections_cannot_lock_out_a_primary() {
    let c = ChannelConfig {
        handshake_timeout: 3 * WAIT,
        ..cfg()
    };
    let listener = Listener::bind_with("127.0.0.1:0", &c).unwrap();
    let addr = listener.local_addr();
    let extra = 10;
    let mut flood: Vec<TcpStream> = (0..MAX_HANDSHAKES + extra)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let deadline = Instant::now() + WAIT;
    while listener.stats().dropped < extra as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let backup = thread::spawn(move || {
        let rx = accept_with(&listener, c, WAIT);
        (listener, rx)
    });
    let t = Instant::now();
    let sender = LogSender::connect(addr, hello(), cfg()).unwrap();
    assert!(t.elapsed() < PROMPTLY, "{:?}", t.elapsed());
    let (listener, rx) = backup.join().unwrap();
    rx.unwrap();
    // The primary's connection pushed out one more.
    let closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        !matches!(s.read(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    for (i, s) in flood.iter_mut().enumerate() {
        assert_eq!(closed(s), i <= extra, "connection {i}");
    }
    let stats = listener.stats();
    assert_eq!(
        (stats.dropped, stats.timed_out),
        (extra as u64 + 1, 0),
        "{stats:?}"
    );
    drop(listener);
    for (i, s) in flood.iter_mut().enumerate() {
        assert!(closed(s), "connection {i} outlived the listener");
    }
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port outlived the listener"
    );
    drop(sender);
}
