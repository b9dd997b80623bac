//! The pieces of AWS's protocols the Bedrock adapter needs, each sans-IO.
//!
//! - [`eventstream`] — the `application/vnd.amazon.eventstream` binary
//!   framing, decoded incrementally (any chunk boundary, both CRCs checked).
//! - [`sigv4`]       — Signature Version 4 request signing, time passed in.
//! - [`regions`]     — AWS regions: the jurisdiction and coordinates a
//!   deployment in each gets by default, and cross-region inference profiles.

pub mod eventstream;
pub mod regions;
pub mod sigv4;

/// CRC-32 (IEEE 802.3, the zlib/gzip one), as event stream frames carry it.
/// Table-driven and built at compile time: 1 KiB of table instead of a
/// dependency.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

/// Continues a CRC-32 over more bytes (`crc32_update(crc32(a), b)` is the
/// CRC of `a` followed by `b`).
pub fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// The reflected polynomial 0xEDB88320, one entry per byte value.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The catalogued check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }
}
