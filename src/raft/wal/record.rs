//! One record of a segment file:
//!
//! ```text
//! u32 LE length of the payload (never 0) | u32 LE CRC-32C | payload
//! ```
//!
//! The CRC-32C (Castagnoli) covers the four length bytes and then the payload, so a
//! flipped or torn length is caught as surely as a flipped payload byte. A zero length
//! (with a zero CRC) is no record: it is the zeroed space after the log's last record.

/// Bytes in front of every payload.
pub const HEADER: usize = 8;

/// The CRC of a record whose payload is `payload`.
fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Appends the record of `payload` to `out`. The caller checks that the payload is not
/// empty and fits a `u32` length (`fits`).
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Whether `payload` can be a record: not empty (a zero length ends the log) and at most
/// `u32::MAX` bytes.
pub fn fits(payload: &[u8]) -> bool {
    !payload.is_empty() && u32::try_from(payload.len()).is_ok()
}

/// What the bytes at some offset of a segment hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole record whose CRC matches: its payload.
    Record(&'a [u8]),
    /// No record: the end of the file, or zeroes (the space after the last record).
    End,
    /// Not a whole, intact record: a torn write, or a corrupt one.
    Invalid(&'static str),
}

/// Parses the record at the start of `buf` (which runs to the end of the file).
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    if buf.is_empty() {
        return Parsed::End;
    }
    let Some((header, rest)) = buf.split_first_chunk::<HEADER>() else {
        return if buf.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Invalid("a record header cut short by the end of the file")
        };
    };
    let (len_bytes, crc_bytes) = header.split_at(4);
    let len_bytes: [u8; 4] = [len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if len == 0 {
        return if crc == 0 {
            Parsed::End
        } else {
            Parsed::Invalid("a zero length with a non-zero checksum")
        };
    }
    let Some(payload) = rest.get(..len) else {
        return Parsed::Invalid("a record cut short by the end of the file");
    };
    if checksum(len_bytes, payload) != crc {
        return Parsed::Invalid("a checksum mismatch");
    }
    Parsed::Record(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, payload);
        out
    }

    #[test]
    fn a_record_reads_back_and_ends_where_zeroes_begin() {
        let mut buf = record(b"first");
        buf.extend(record(b"second entry"));
        buf.extend([0u8; 32]);
        let Parsed::Record(first) = parse(&buf) else { panic!("a record") };
        assert_eq!(first, b"first");
        let rest = &buf[HEADER + first.len()..];
        assert_eq!(parse(rest), Parsed::Record(&b"second entry"[..]));
        let after = &rest[HEADER + 12..];
        assert_eq!(parse(after), Parsed::End, "zeroes");
        assert_eq!(parse(&after[..3]), Parsed::End, "a few zeroes before the end of the file");
        assert_eq!(parse(&[]), Parsed::End, "the end of the file");
    }

    #[test]
    fn the_crc_covers_the_length_and_the_payload() {
        assert_eq!(record(b"abc")[4..8], crc32c::crc32c(&[3, 0, 0, 0, b'a', b'b', b'c']).to_le_bytes());
    }

    /// Every cut of a record (a torn write into zeroes, or the file ending early) and
    /// every flipped byte is invalid, never a record and never the clean end — except a
    /// cut before the first byte, which leaves zeroes.
    #[test]
    fn every_torn_or_flipped_record_is_invalid() {
        let whole = record(b"payload of a record");
        for cut in 1..whole.len() {
            let mut zeroed = whole.clone();
            zeroed[cut..].fill(0);
            assert!(matches!(parse(&zeroed), Parsed::Invalid(_)), "torn at {cut}: {:?}", parse(&zeroed));
            assert!(matches!(parse(&whole[..cut]), Parsed::Invalid(_)), "cut at {cut}");
        }
        for at in 0..whole.len() {
            for bit in 0..8 {
                let mut flipped = whole.clone();
                flipped[at] ^= 1 << bit;
                assert!(matches!(parse(&flipped), Parsed::Invalid(_)), "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn empty_and_oversized_payloads_do_not_fit() {
        assert!(!fits(b""));
        assert!(fits(b"x"));
    }
}
