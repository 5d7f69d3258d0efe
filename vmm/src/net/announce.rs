//! The frame a new primary sends so the network learns where the guest's MAC lives now.
//!
//! A bridge (or switch) keeps sending frames for the guest's MAC to the port it last saw it
//! on, which after a failover is the dead host's, for minutes (FDB ageing: 300 s). Any frame
//! from the new port with that source MAC moves the entry at once. Like QEMU's
//! `announce_self`, we send a RARP broadcast: it carries the MAC, asks nothing of anyone,
//! and no IP stack answers it.

/// A RARP "request reverse" broadcast from `mac`, padded to the 60-byte Ethernet minimum.
pub fn rarp_announce(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]); // to everyone
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes()); // RARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&3u16.to_be_bytes()); // request reverse
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&[0; 4]); // sender protocol address: unknown
    f.extend_from_slice(&mac); // target hardware address
    f.extend_from_slice(&[0; 4]); // target protocol address: unknown
    f.resize(60, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rarp_announcement_is_a_broadcast_from_the_guest_mac() {
        let mac = [0x02, 0x75, 0x73, 0, 0, 1];
        let f = rarp_announce(mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3], "request reverse");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[32..38], &mac);
        let summary = logging_channel::netframe::summary(&f);
        assert!(
            summary.contains("02:75:73:00:00:01 > ff:ff:ff:ff:ff:ff"),
            "{summary}"
        );
    }
}
