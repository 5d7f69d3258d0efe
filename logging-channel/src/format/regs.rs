//! The general-purpose registers a position or a digest holds. They are listed once, in
//! [`with_regs!`](crate::with_regs): the struct, its names, its on-disk order and the VMM's
//! conversion from KVM all expand from that list, so none can fall out of step with the others
//! or with the format (docs/log-format.md, "Regs").

use serde::Serialize;

/// Hands the register names, in on-disk order, to the macro `$callback`, after the tokens in
/// its parentheses: `with_regs!(m!(a, b))` expands to `m! { (a, b) rax rbx … rip rflags }`.
/// Code that needs every register writes such a callback rather than another list of them.
#[macro_export]
macro_rules! with_regs {
    ($callback:ident ! ($($args:tt)*)) => {
        $callback! {
            ($($args)*)
            rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags
        }
    };
}

macro_rules! define_regs {
    (() $($reg:ident)*) => {
        /// The 18 architectural registers that identify an instruction instance.
        /// Field order is the on-disk order.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct Regs {
            $(
                #[doc = concat!("`", stringify!($reg), "`, as KVM reports it.")]
                pub $reg: u64,
            )*
        }

        impl Regs {
            /// Register names, in the same (on-disk) order as [`Regs::to_array`].
            pub const NAMES: [&'static str; Self::COUNT] = [$(stringify!($reg)),*];

            /// The registers in on-disk order.
            pub fn to_array(&self) -> [u64; Self::COUNT] {
                [$(self.$reg),*]
            }

            /// Inverse of [`Regs::to_array`].
            pub fn from_array(values: [u64; Self::COUNT]) -> Self {
                let [$($reg),*] = values;
                Self { $($reg),* }
            }
        }
    };
}

with_regs!(define_regs!());

impl Regs {
    /// Number of registers; each is encoded as a u64. A list of another length does not
    /// compile (`NAMES` has this length).
    pub const COUNT: usize = 18;

    /// Each register with its name, in on-disk order: what reports print and compare.
    pub fn named(&self) -> [(&'static str, u64); Self::COUNT] {
        let values = self.to_array();
        std::array::from_fn(|i| (Self::NAMES[i], values[i]))
    }

    /// One line per register that differs, `self` being the recorded side. Empty when equal.
    pub fn differences(&self, replayed: &Self) -> Vec<String> {
        self.named()
            .iter()
            .zip(replayed.named().iter())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| format!("{}: recorded {:#x}, replayed {:#x}", a.0, a.1, b.1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_fields_in_on_disk_order() {
        let r = Regs {
            rax: 1,
            rcx: 3,
            r8: 9,
            rflags: 18,
            ..Regs::default()
        };
        let named = r.named();
        assert_eq!(named[0], ("rax", 1));
        assert_eq!(named[2], ("rcx", 3));
        assert_eq!(named[8], ("r8", 9));
        assert_eq!(named[17], ("rflags", 18));
        assert_eq!(Regs::from_array(r.to_array()), r);
    }

    #[test]
    fn differences_name_each_changed_register() {
        let a = Regs::default();
        assert!(a.differences(&a).is_empty());
        let b = Regs {
            rsi: 0x10,
            rip: 0x20,
            ..a
        };
        assert_eq!(
            a.differences(&b),
            vec![
                "rsi: recorded 0x0, replayed 0x10".to_string(),
                "rip: recorded 0x0, replayed 0x20".to_string()
            ]
        );
    }
}
