//! proptest strategies for the format types.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::format::{
    CounterKind, Digest, EndReason, Entry, FORMAT_VERSION, Frame, Header, InputSource,
    MIN_NET_FRAME, Position, PositionSemantics, Regs,
};

pub(crate) fn regs() -> impl Strategy<Value = Regs> {
    proptest::array::uniform18(any::<u64>()).prop_map(Regs::from_array)
}

pub(crate) fn position() -> impl Strategy<Value = Position> {
    prop_oneof![
        any::<u64>().prop_map(|exits| Position::AtExit { exits }),
        (any::<u64>(), any::<u64>(), regs()).prop_map(|(exits, counter, regs)| {
            Position::Precise {
                exits,
                counter,
                regs,
            }
        }),
    ]
}

fn digest() -> impl Strategy<Value = Digest> {
    (regs(), proptest::array::uniform6(any::<u64>())).prop_map(
        |(regs, [cr0, cr3, cr4, efer, mem_hash, devices_hash])| Digest {
            regs,
            cr0,
            cr3,
            cr4,
            efer,
            mem_hash,
            devices_hash,
        },
    )
}

fn input_source() -> impl Strategy<Value = InputSource> {
    prop_oneof![Just(InputSource::Clock), Just(InputSource::WallClock)]
}

fn end_reason() -> impl Strategy<Value = EndReason> {
    prop_oneof![
        any::<u32>().prop_map(|code| EndReason::PowerOff { code }),
        Just(EndReason::Shutdown),
        Just(EndReason::Stopped),
        (any::<u16>(), any::<u8>()).prop_map(|(port, value)| EndReason::Reset { port, value }),
    ]
}

/// A network frame of a valid size: mostly short random ones, sometimes exactly the shortest
/// or a full-MTU one (a constant byte, so it costs no random bytes). The longest allowed,
/// `MAX_NET_FRAME`, has unit tests of its own: tests that cut every frame at every byte would
/// take minutes on it.
pub(crate) fn net_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), MIN_NET_FRAME..128),
        1 => vec(any::<u8>(), MIN_NET_FRAME..=MIN_NET_FRAME),
        1 => any::<u8>().prop_map(|b| vec![b; 1514]),
    ]
}

pub(crate) fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        (position(), input_source(), any::<u64>()).prop_map(|(pos, source, value)| Entry::Input {
            pos,
            source,
            value
        }),
        (position(), any::<u8>()).prop_map(|(pos, line)| Entry::Irq { pos, line }),
        (position(), any::<u8>()).prop_map(|(pos, vector)| Entry::Inject { pos, vector }),
        (position(), vec(any::<u8>(), 0..64))
            .prop_map(|(pos, bytes)| Entry::ConsoleInput { pos, bytes }),
        (position(), digest()).prop_map(|(pos, digest)| Entry::Digest { pos, digest }),
        (position(), end_reason()).prop_map(|(pos, reason)| Entry::End { pos, reason }),
        (position(), any::<u64>(), any::<u64>()).prop_map(|(pos, console_bytes, released)| {
            Entry::Output {
                pos,
                console_bytes,
                released,
            }
        }),
        (position(), net_frame()).prop_map(|(pos, frame)| Entry::NetRx { pos, frame }),
        (position(), net_frame()).prop_map(|(pos, frame)| Entry::NetTx { pos, frame }),
    ]
}

pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), any::<u64>(), any::<u64>(), entry()).prop_map(
        |(seq, t_ns, state_check, entry)| Frame {
            seq,
            t_ns,
            state_check,
            entry,
        },
    )
}

fn text() -> impl Strategy<Value = String> {
    // Non-ASCII included: lengths are byte lengths, not char counts.
    "\\PC{0,24}"
}

pub(crate) fn header() -> impl Strategy<Value = Header> {
    (
        any::<[u8; 32]>(),
        text(),
        vec(text(), 0..4),
        any::<u32>(),
        (
            prop_oneof![Just(CounterKind::None), Just(CounterKind::PvmInsnEmulation)],
            any::<bool>(),
            any::<bool>(),
            text(),
        ),
        any::<u32>(),
        any::<u64>(),
        (text(), proptest::option::of(any::<[u8; 6]>())),
    )
        .prop_map(
            |(
                guest_image_sha256,
                guest_name,
                guest_args,
                mem_mib,
                (counter, precise_cpl0, precise_cpl3, description),
                digest_interval_ms,
                recorded_at_unix_ms,
                (host, nic_mac),
            )| Header {
                format_version: FORMAT_VERSION,
                guest_image_sha256,
                guest_name,
                guest_args,
                mem_mib,
                position: PositionSemantics {
                    counter,
                    precise_cpl0,
                    precise_cpl3,
                    description,
                },
                digest_interval_ms,
                recorded_at_unix_ms,
                host,
                nic_mac,
            },
        )
}
