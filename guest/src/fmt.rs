//! Fixed-size, allocation-free line formatting. Writes past the end are
//! dropped rather than panicking because this runs in interrupt handlers.

pub const LINE_CAP: usize = 192;

#[derive(Debug)]
pub struct LineBuf {
    buf: [u8; LINE_CAP],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuf {
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_CAP],
            len: 0,
        }
    }

    pub fn byte(&mut self, b: u8) -> &mut Self {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
        self
    }

    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            self.byte(b);
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            if let Some(d) = digits.get_mut(n) {
                *d = b'0' + (v % 10) as u8;
            }
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            self.byte(digits.get(i).copied().unwrap_or(b'?'));
        }
        self
    }

    /// `0x` followed by the minimal number of hex digits.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        let digits = (16 - (v.leading_zeros() / 4) as usize).max(1);
        self.hex_digits(v, digits)
    }

    /// `0x` followed by exactly 16 hex digits, so columns line up.
    pub fn hex16(&mut self, v: u64) -> &mut Self {
        self.hex_digits(v, 16)
    }

    fn hex_digits(&mut self, v: u64, digits: usize) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.str("0x");
        for i in (0..digits).rev() {
            self.byte(HEX[((v >> (i * 4)) & 0xf) as usize]);
        }
        self
    }

    /// Terminates the line, sacrificing the last character if the buffer is
    /// full so the console never loses line structure.
    pub fn newline(&mut self) -> &mut Self {
        if self.len == LINE_CAP {
            self.len -= 1;
        }
        self.byte(b'\n')
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl core::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.str(s);
        Ok(())
    }
}
