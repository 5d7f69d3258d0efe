//! A one-line human decode of a logged network frame (`net-rx` / `net-tx` entries), for
//! `understudy log dump` and for replay's messages: source and destination MAC, ethertype,
//! ARP / RARP operation and addresses, IPv4 addresses and protocol, TCP ports, flags, seq/ack
//! and payload length, UDP ports and length, ICMP type.
//!
//! Total and pure: any bytes give a line and nothing panics. What it cannot follow to the end
//! it says plainly: `(truncated)` where the bytes stop inside a header, `ethertype 0x86dd` for a
//! protocol it does not decode. It describes; it never judges a frame (the log keeps frames the
//! guest or the wire produced, malformed or not).
//!
//! It lives here rather than in the command-line tool because the VMM names entries in its
//! replay errors too (a transmitted frame that differs is best shown decoded), and this crate
//! is the one both depend on.

use std::fmt::Write;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_RARP: u16 = 0x8035;

const IP_ICMP: u8 = 1;
const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;

const TRUNCATED: &str = "(truncated)";

/// One line describing `frame`, an Ethernet frame starting with its destination MAC, e.g.
/// `52:54:00:00:00:02 > 52:54:00:12:34:56 IPv4 10.0.0.1 > 10.0.0.10 TCP 51234 > 6379 [SYN]
/// seq 1000 len 0`. The size is not included (callers show it beside).
pub fn summary(frame: &[u8]) -> String {
    let (Some(dst), Some(src), Some(ethertype)) =
        (mac_at(frame, 0), mac_at(frame, 6), be16(frame, 12))
    else {
        return TRUNCATED.to_string();
    };
    let payload = frame.get(14..).unwrap_or_default();
    let mut out = format!("{src} > {dst} ");
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(&mut out, payload),
        ETHERTYPE_ARP => arp(&mut out, "ARP", payload),
        ETHERTYPE_RARP => arp(&mut out, "RARP", payload),
        other => {
            let _ = write!(out, "ethertype {other:#06x}");
        }
    }
    out
}

/// Formatted MAC at `at`, if six bytes are there.
fn mac_at(b: &[u8], at: usize) -> Option<String> {
    let m = b.get(at..at.checked_add(6)?)?;
    Some(format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    ))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<String> {
    let a = b.get(at..at.checked_add(4)?)?;
    Some(format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// ARP and RARP (same layout). Only Ethernet/IPv4 bodies are decoded field by field.
fn arp(out: &mut String, name: &str, p: &[u8]) {
    out.push_str(name);
    let (Some(htype), Some(ptype), Some(&hlen), Some(&plen), Some(op)) =
        (be16(p, 0), be16(p, 2), p.get(4), p.get(5), be16(p, 6))
    else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    let op_name = match op {
        1 => "request".to_string(),
        2 => "reply".to_string(),
        3 => "reverse request".to_string(),
        4 => "reverse reply".to_string(),
        n => format!("op {n}"),
    };
    let _ = write!(out, " {op_name}");
    if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4) {
        let _ = write!(
            out,
            " (hardware type {htype}, protocol {ptype:#06x}: not decoded)"
        );
        return;
    }
    // sha 8..14, spa 14..18, tha 18..24, tpa 24..28
    let (Some(sha), Some(spa), Some(tha), Some(tpa)) =
        (mac_at(p, 8), ipv4_at(p, 14), mac_at(p, 18), ipv4_at(p, 24))
    else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    if name == "RARP" {
        // A RARP announcement (what a VMM sends for a migrated guest) carries only MACs.
        let _ = write!(out, " sender {sha} ({spa}) target {tha} ({tpa})");
    } else {
        let _ = write!(out, " sender {spa} target {tpa}");
    }
}

fn ipv4(out: &mut String, p: &[u8]) {
    out.push_str("IPv4");
    let (Some(&vihl), Some(total_len), Some(frag), Some(&proto), Some(src), Some(dst)) = (
        p.first(),
        be16(p, 2),
        be16(p, 6),
        p.get(9),
        ipv4_at(p, 12),
        ipv4_at(p, 16),
    ) else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    let version = vihl >> 4;
    if version != 4 {
        let _ = write!(out, " (version field {version})");
        return;
    }
    let _ = write!(out, " {src} > {dst}");
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total_len = usize::from(total_len);
    if ihl < 20 {
        let _ = write!(out, " (bad header length {ihl})");
        return;
    }
    if total_len < ihl {
        let _ = write!(out, " (bad total length {total_len})");
        return;
    }
    // The IP length, not the frame's, bounds the datagram: short frames are padded to 60 bytes.
    let truncated = total_len > p.len();
    let Some(l4) = p.get(ihl..total_len.min(p.len())) else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    let offset = usize::from(frag & 0x1fff) * 8;
    let more_fragments = frag & 0x2000 != 0;
    if offset != 0 || more_fragments {
        let _ = write!(
            out,
            " {} fragment at offset {offset}, {} bytes",
            proto_name(proto),
            total_len - ihl
        );
    } else {
        match proto {
            IP_TCP => tcp(out, l4),
            IP_UDP => udp(out, l4),
            IP_ICMP => icmp(out, l4),
            other => {
                let _ = write!(out, " {}, {} bytes", proto_name(other), l4.len());
            }
        }
    }
    if truncated && !out.ends_with(TRUNCATED) {
        let _ = write!(out, " {TRUNCATED}");
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        IP_ICMP => "ICMP".to_string(),
        IP_TCP => "TCP".to_string(),
        IP_UDP => "UDP".to_string(),
        n => format!("protocol {n}"),
    }
}

/// Flag names in bit order, so the usual pairs read `SYN,ACK`, `PSH,ACK`, `FIN,ACK`.
const TCP_FLAGS: [(u8, &str); 8] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

fn tcp(out: &mut String, l4: &[u8]) {
    out.push_str(" TCP");
    let (Some(sport), Some(dport)) = (be16(l4, 0), be16(l4, 2)) else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    let _ = write!(out, " {sport} > {dport}");
    let (Some(seq), Some(ack), Some(&off), Some(&flags)) =
        (be32(l4, 4), be32(l4, 8), l4.get(12), l4.get(13))
    else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    let names: Vec<&str> = TCP_FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    let names = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(",")
    };
    let _ = write!(out, " [{names}] seq {seq}");
    if flags & 0x10 != 0 {
        let _ = write!(out, " ack {ack}");
    }
    let header = usize::from(off >> 4) * 4;
    if header < 20 {
        let _ = write!(out, " (bad data offset {header})");
    } else if header > l4.len() {
        let _ = write!(out, " {TRUNCATED}");
    } else {
        let _ = write!(out, " len {}", l4.len() - header);
    }
}

fn udp(out: &mut String, l4: &[u8]) {
    out.push_str(" UDP");
    let (Some(sport), Some(dport), Some(len)) = (be16(l4, 0), be16(l4, 2), be16(l4, 4)) else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    let len = usize::from(len);
    if len < 8 {
        let _ = write!(out, " {sport} > {dport} (bad length {len})");
    } else {
        let _ = write!(out, " {sport} > {dport} len {}", len - 8);
        if len > l4.len() {
            let _ = write!(out, " {TRUNCATED}");
        }
    }
}

fn icmp(out: &mut String, l4: &[u8]) {
    out.push_str(" ICMP");
    let (Some(&ty), Some(&code)) = (l4.first(), l4.get(1)) else {
        let _ = write!(out, " {TRUNCATED}");
        return;
    };
    match (ty, code) {
        (0, 0) => out.push_str(" echo reply"),
        (8, 0) => out.push_str(" echo request"),
        (3, c) => {
            let _ = write!(out, " destination unreachable (code {c})");
        }
        (11, c) => {
            let _ = write!(out, " time exceeded (code {c})");
        }
        (t, c) => {
            let _ = write!(out, " type {t} code {c}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GUEST: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
    const GUEST_IP: [u8; 4] = [10, 0, 0, 10];
    const PEER_IP: [u8; 4] = [10, 0, 0, 1];

    fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 header (no options, checksum left 0: the decoder does not check it) + `l4`.
    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + l4.len()).unwrap();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[5 << 4, flags]);
        t.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]); // window, checksum, urgent
        t.extend_from_slice(payload);
        t
    }

    /// Pads to the 60-byte Ethernet minimum, as a NIC does.
    fn padded(mut f: Vec<u8>) -> Vec<u8> {
        f.resize(f.len().max(60), 0);
        f
    }

    #[test]
    fn arp_request() {
        let mut body = vec![0, 1, 8, 0, 6, 4, 0, 1];
        body.extend_from_slice(&GUEST);
        body.extend_from_slice(&GUEST_IP);
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&PEER_IP);
        let f = padded(ether([0xff; 6], GUEST, ETHERTYPE_ARP, &body));
        assert_eq!(
            summary(&f),
            "52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff ARP request sender 10.0.0.10 target 10.0.0.1"
        );
    }

    #[test]
    fn rarp_announcement() {
        let mut body = vec![0, 1, 8, 0, 6, 4, 0, 3];
        body.extend_from_slice(&GUEST);
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&GUEST);
        body.extend_from_slice(&[0; 4]);
        let f = padded(ether([0xff; 6], GUEST, ETHERTYPE_RARP, &body));
        assert_eq!(
            summary(&f),
            "52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff RARP reverse request sender 52:54:00:12:34:56 (0.0.0.0) target 52:54:00:12:34:56 (0.0.0.0)"
        );
    }

    #[test]
    fn tcp_syn_padded_to_the_minimum() {
        let seg = tcp(51234, 6379, 1000, 0, 0x02, &[]);
        let f = padded(ether(
            GUEST,
            PEER,
            ETHERTYPE_IPV4,
            &ipv4(6, PEER_IP, GUEST_IP, &seg),
        ));
        assert_eq!(f.len(), 60, "padding must not count as payload");
        assert_eq!(
            summary(&f),
            "52:54:00:00:00:02 > 52:54:00:12:34:56 IPv4 10.0.0.1 > 10.0.0.10 TCP 51234 > 6379 [SYN] seq 1000 len 0"
        );
    }

    #[test]
    fn tcp_syn_ack() {
        let seg = tcp(6379, 51234, 7, 1001, 0x12, &[]);
        let f = padded(ether(
            PEER,
            GUEST,
            ETHERTYPE_IPV4,
            &ipv4(6, GUEST_IP, PEER_IP, &seg),
        ));
        assert!(
            summary(&f).ends_with("TCP 6379 > 51234 [SYN,ACK] seq 7 ack 1001 len 0"),
            "{}",
            summary(&f)
        );
    }

    #[test]
    fn tcp_segment_with_payload() {
        let seg = tcp(6379, 51234, 8, 1015, 0x18, b"+OK\r\n");
        let f = ether(
            PEER,
            GUEST,
            ETHERTYPE_IPV4,
            &ipv4(6, GUEST_IP, PEER_IP, &seg),
        );
        assert_eq!(
            summary(&f),
            "52:54:00:12:34:56 > 52:54:00:00:00:02 IPv4 10.0.0.10 > 10.0.0.1 TCP 6379 > 51234 [PSH,ACK] seq 8 ack 1015 len 5"
        );
    }

    #[test]
    fn udp_datagram() {
        let mut d = Vec::new();
        d.extend_from_slice(&5353u16.to_be_bytes());
        d.extend_from_slice(&53u16.to_be_bytes());
        d.extend_from_slice(&(8u16 + 12).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&[0xab; 12]);
        let f = padded(ether(
            PEER,
            GUEST,
            ETHERTYPE_IPV4,
            &ipv4(17, GUEST_IP, PEER_IP, &d),
        ));
        assert_eq!(
            summary(&f),
            "52:54:00:12:34:56 > 52:54:00:00:00:02 IPv4 10.0.0.10 > 10.0.0.1 UDP 5353 > 53 len 12"
        );
    }

    #[test]
    fn icmp_echo() {
        let f = padded(ether(
            PEER,
            GUEST,
            ETHERTYPE_IPV4,
            &ipv4(1, GUEST_IP, PEER_IP, &[8, 0, 0, 0, 0, 1, 0, 1]),
        ));
        assert!(summary(&f).ends_with("IPv4 10.0.0.10 > 10.0.0.1 ICMP echo request"));
    }

    #[test]
    fn undecoded_ethertype_is_named() {
        let f = ether(PEER, GUEST, 0x86dd, &[0x60; 40]);
        assert_eq!(
            summary(&f),
            "52:54:00:12:34:56 > 52:54:00:00:00:02 ethertype 0x86dd"
        );
    }

    #[test]
    fn runt_is_truncated() {
        assert_eq!(summary(&[]), "(truncated)");
        assert_eq!(summary(&GUEST), "(truncated)");
        assert_eq!(summary(&[0xff; 13]), "(truncated)");
    }

    #[test]
    fn cut_headers_say_truncated() {
        let seg = tcp(51234, 6379, 1000, 0, 0x02, &[]);
        let full = ether(
            GUEST,
            PEER,
            ETHERTYPE_IPV4,
            &ipv4(6, PEER_IP, GUEST_IP, &seg),
        );
        // Inside the IP header.
        assert!(summary(&full[..14 + 10]).ends_with("IPv4 (truncated)"));
        // Inside the TCP header: ports are there, the rest is not.
        let s = summary(&full[..14 + 20 + 6]);
        assert!(
            s.ends_with("IPv4 10.0.0.1 > 10.0.0.10 TCP 51234 > 6379 (truncated)"),
            "{s}"
        );
        // ARP cut after its op.
        let arp = ether(
            [0xff; 6],
            GUEST,
            ETHERTYPE_ARP,
            &[0, 1, 8, 0, 6, 4, 0, 1, 0x52],
        );
        assert!(summary(&arp).ends_with("ARP request (truncated)"));
    }

    #[test]
    fn garbage_headers_are_described_not_trusted() {
        // IPv4 ethertype over bytes that are not IPv4.
        let f = ether(PEER, GUEST, ETHERTYPE_IPV4, &[0xff; 40]);
        assert!(summary(&f).ends_with("IPv4 (version field 15)"));
        // A header length below the minimum.
        let mut ip = ipv4(6, GUEST_IP, PEER_IP, &[0; 20]);
        ip[0] = 0x41;
        assert!(
            summary(&ether(PEER, GUEST, ETHERTYPE_IPV4, &ip)).ends_with("(bad header length 4)")
        );
        // A TCP data offset pointing past the segment.
        let mut seg = tcp(1, 2, 3, 4, 0x10, &[]);
        seg[12] = 0xf0;
        let s = summary(&ether(
            PEER,
            GUEST,
            ETHERTYPE_IPV4,
            &ipv4(6, GUEST_IP, PEER_IP, &seg),
        ));
        assert!(s.ends_with("[ACK] seq 3 ack 4 (truncated)"), "{s}");
        // A UDP length below its own header.
        let s = summary(&ether(
            PEER,
            GUEST,
            ETHERTYPE_IPV4,
            &ipv4(17, GUEST_IP, PEER_IP, &[0, 1, 0, 2, 0, 3, 0, 0]),
        ));
        assert!(s.ends_with("UDP 1 > 2 (bad length 3)"), "{s}");
    }

    #[test]
    fn fragments_are_not_decoded_as_segments() {
        let mut ip = ipv4(6, GUEST_IP, PEER_IP, &[0xaa; 16]);
        ip[6] = 0x00;
        ip[7] = 0x10; // offset 16 units = 128 bytes
        let s = summary(&ether(PEER, GUEST, ETHERTYPE_IPV4, &ip));
        assert!(s.ends_with("TCP fragment at offset 128, 16 bytes"), "{s}");
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = summary(&bytes);
        }

        #[test]
        fn never_panics_under_a_plausible_header(
            ethertype in prop_oneof![Just(ETHERTYPE_IPV4), Just(ETHERTYPE_ARP), Just(ETHERTYPE_RARP)],
            vihl in prop_oneof![Just(0x45u8), any::<u8>()],
            proto in prop_oneof![Just(6u8), Just(17u8), Just(1u8), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut p = vec![vihl];
            p.extend_from_slice(&rest);
            if p.len() > 9 {
                p[9] = proto;
            }
            let _ = summary(&ether(PEER, GUEST, ethertype, &p));
        }
    }
}
