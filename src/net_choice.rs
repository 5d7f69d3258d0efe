//! `--tap` and `--mac`: whether the guest gets a network card, and what it is plugged into.

use std::sync::Arc;

use vmm::net::tap::{Tap, TapError};

/// Why the network options could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `--mac` is not six hex bytes separated by colons, or not a unicast address.
    #[error("--mac {given}: {why} (expected six hex bytes like 02:75:73:00:00:01)")]
    BadMac {
        /// What was given.
        given: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The TAP device could not be opened or set up.
    #[error("--tap: {0}")]
    Tap(#[from] TapError),
}

/// The guest's network card (`--tap`, `--mac`), for `run` and `node`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Give the guest a virtio-net card backed by this TAP device in the current network
    /// namespace: opened if it exists (e.g. made with `ip tuntap add`; bring it up yourself),
    /// created and brought up otherwise (it then goes away when understudy exits).
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// The card's MAC address; every node of one guest must use the same one.
    #[arg(long, value_name = "MAC", default_value = "02:75:73:00:00:01")]
    pub mac: String,
}

impl NetArgs {
    /// The card's MAC, if the guest gets a card.
    pub fn mac(&self) -> Result<Option<[u8; 6]>, NetError> {
        if self.tap.is_none() {
            return Ok(None);
        }
        parse_mac(&self.mac).map(Some)
    }

    /// Opens the TAP (`--tap`) with its carrier on, bringing a device understudy created up.
    /// A device the user made and left down gets a warning: frames cannot pass until it is up.
    pub fn open(&self) -> Result<Option<Arc<Tap>>, NetError> {
        self.open_with(true)
    }

    /// [`NetArgs::open`] with the carrier off: a node's TAP stays silent (nothing queues on it,
    /// a bridge floods nothing to it) until the node becomes primary and turns it on.
    pub fn open_silent(&self) -> Result<Option<Arc<Tap>>, NetError> {
        self.open_with(false)
    }

    fn open_with(&self, carrier: bool) -> Result<Option<Arc<Tap>>, NetError> {
        let Some(name) = &self.tap else {
            return Ok(None);
        };
        let tap = if carrier {
            Tap::open(name)?
        } else {
            Tap::open_without_carrier(name)?
        };
        if tap.created() {
            tap.set_up()?;
        } else if !tap.is_up()? {
            eprintln!(
                "understudy: TAP {name} is down: no frame passes until `ip link set {name} up`"
            );
        }
        Ok(Some(Arc::new(tap)))
    }
}

/// `aa:bb:cc:dd:ee:ff` into six bytes; a multicast address is refused (no NIC may have one).
pub fn parse_mac(given: &str) -> Result<[u8; 6], NetError> {
    let bad = |why| NetError::BadMac {
        given: given.to_owned(),
        why,
    };
    let parts: Vec<&str> = given.split(':').collect();
    if parts.len() != 6 {
        return Err(bad("not six bytes"));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad("each byte is two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad("not hex"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(bad("a multicast address"));
    }
    Ok(mac)
}

/// Six bytes as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::devices::nic::DEFAULT_MAC;

    #[test]
    fn macs_parse_and_print_back() {
        assert_eq!(
            parse_mac("02:75:73:00:00:01").unwrap(),
            [0x02, 0x75, 0x73, 0, 0, 1]
        );
        assert_eq!(parse_mac("52:54:00:AB:cd:ef").unwrap()[3], 0xab);
        assert_eq!(format_mac(DEFAULT_MAC), "02:75:73:00:00:01");
        assert_eq!(
            format_mac(parse_mac("0a:0b:0c:0d:0e:0f").unwrap()),
            "0a:0b:0c:0d:0e:0f"
        );
    }

    #[test]
    fn bad_macs_say_why() {
        for (given, why) in [
            ("02:75:73:00:00", "not six bytes"),
            ("02:75:73:00:00:01:02", "not six bytes"),
            ("2:75:73:00:00:01", "two hex digits"),
            ("02:75:73:00:00:zz", "not hex"),
            ("01:00:5e:00:00:01", "multicast"),
        ] {
            let e = parse_mac(given).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(given), "{given}: {e}");
        }
    }

    #[test]
    fn the_default_mac_is_the_devices() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            net: NetArgs,
        }
        let parsed = Cli::parse_from(["x", "--tap", "t"]);
        assert_eq!(parsed.net.mac().unwrap(), Some(DEFAULT_MAC));
        let args = NetArgs {
            tap: Some("t".into()),
            mac: format_mac(DEFAULT_MAC),
        };
        assert_eq!(args.mac().unwrap(), Some(DEFAULT_MAC));
        let none = NetArgs {
            tap: None,
            mac: format_mac(DEFAULT_MAC),
        };
        assert_eq!(none.mac().unwrap(), None);
    }
}
