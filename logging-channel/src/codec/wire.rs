//! Little-endian primitives. Decoding goes through a cursor that knows its
//! absolute offset, so every error can say where it happened.

use super::CodecError;
use crate::format::Regs;

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// LEB128: seven bits per byte, least significant first, the top bit set on every byte but
/// the last. 1 byte below 128, 5 below 2^35 (34 s in ns), 10 at most.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// Lengths saturate instead of wrapping: an oversized item then produces an
/// oversized frame, which the writer refuses (see `MAX_FRAME_LEN`), rather
/// than a short length that would silently desynchronise the stream.
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    put_len(out, v.len());
    out.extend_from_slice(v);
}

pub(crate) fn put_str(out: &mut Vec<u8>, v: &str) {
    put_bytes(out, v.as_bytes());
}

pub(crate) fn put_strs(out: &mut Vec<u8>, v: &[String]) {
    put_len(out, v.len());
    for s in v {
        put_str(out, s);
    }
}

pub(crate) fn put_regs(out: &mut Vec<u8>, regs: &Regs) {
    for r in regs.to_array() {
        put_u64(out, r);
    }
}

/// Bounds-checked reader over one frame body.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    /// `base` is the absolute offset of `buf[0]`.
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Self {
        Self { buf, pos: 0, base }
    }

    /// Absolute offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn malformed(&self, what: impl Into<String>) -> CodecError {
        CodecError::Malformed {
            offset: self.offset(),
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            return Err(self.malformed(format!(
                "frame body ends inside {what} (needs {n} bytes, {remaining} left)"
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, CodecError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, CodecError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A LEB128 varint (see [`put_varint`]), strictly: a value that does not fit in 64 bits, or
    /// one written longer than it needs (a last byte of zero after the first), is malformed.
    /// Each value has exactly one encoding, so equal entries are equal bytes.
    pub(crate) fn varint(&mut self, what: &str) -> Result<u64, CodecError> {
        let at = self.offset();
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(CodecError::Malformed {
                    offset: at,
                    what: format!("{what} does not fit in 64 bits"),
                });
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(CodecError::Malformed {
                        offset: at,
                        what: format!("{what} is encoded in more bytes than it needs"),
                    });
                }
                return Ok(v);
            }
        }
        Err(CodecError::Malformed {
            offset: at,
            what: format!("{what} does not fit in 64 bits"),
        })
    }

    pub(crate) fn sha256(&mut self, what: &str) -> Result<[u8; 32], CodecError> {
        self.array(what)
    }

    pub(crate) fn bool(&mut self, what: &str) -> Result<bool, CodecError> {
        let at = self.offset();
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(CodecError::Malformed {
                offset: at,
                what: format!("{what} is {v:#04x}, not a bool (0 or 1)"),
            }),
        }
    }

    /// The length is checked against the remaining body before anything is
    /// allocated, so a bad length cannot cause a huge allocation.
    pub(crate) fn bytes(&mut self, what: &str) -> Result<Vec<u8>, CodecError> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| self.malformed(format!("{what} too long")))?;
        Ok(self.take(len, what)?.to_vec())
    }

    /// `n` bytes without a length field (the caller read and checked it).
    pub(crate) fn raw(&mut self, n: usize, what: &str) -> Result<Vec<u8>, CodecError> {
        Ok(self.take(n, what)?.to_vec())
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String, CodecError> {
        let at = self.offset();
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes).map_err(|e| CodecError::Malformed {
            offset: at + 4 + e.utf8_error().valid_up_to() as u64,
            what: format!("{what} is not valid UTF-8"),
        })
    }

    /// Each item consumes at least its 4-byte length, so a bogus count fails
    /// on the body's end instead of looping or allocating.
    pub(crate) fn strings(&mut self, what: &str) -> Result<Vec<String>, CodecError> {
        let count = self.u32(what)?;
        let mut v = Vec::new();
        for i in 0..count {
            v.push(self.string(&format!("{what}[{i}]"))?);
        }
        Ok(v)
    }

    pub(crate) fn regs(&mut self, what: &str) -> Result<Regs, CodecError> {
        let mut a = [0u64; Regs::COUNT];
        for r in &mut a {
            *r = self.u64(what)?;
        }
        Ok(Regs::from_array(a))
    }

    /// Strictness: a body must be consumed exactly, so an encoder bug or a
    /// mismatched version cannot hide behind a valid-looking prefix.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        let trailing = self.buf.len() - self.pos;
        if trailing == 0 {
            Ok(())
        } else {
            Err(self.malformed(format!(
                "{trailing} trailing bytes after the end of the frame body"
            )))
        }
    }
}
