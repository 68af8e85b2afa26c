//! chokepoint's own credential handles: the opaque strings the broker hands
//! to the LLM in place of real tokens.
//!
//! Format (modelled on GitHub's 2021 token format):
//!
//! ```text
//! cph_ <43 base62 chars of randomness> <6 base62 chars of CRC32>
//! ```
//!
//! * `cph_` is a fixed prefix, so a scanner finds handles by a literal.
//! * 43 base62 characters hold the caller's 256 random bits whole
//!   (62^43 > 2^256, so the encoding is one-to-one: no bit is dropped).
//! * the last 6 characters are the CRC-32 (IEEE) of the 43 random characters
//!   (as ASCII), written in base62, most significant digit first, zero padded
//!   (62^6 > 2^32). A random 49-character string passes the check with
//!   probability 2^-32, so the scrubber's handle rule has almost no false
//!   positives.
//!
//! This module is pure: it never draws randomness itself. The caller (the
//! broker) passes 32 bytes from a CSPRNG to [`generate`].
//!
//! It must never: log a handle, or accept a handle whose checksum is wrong.

/// The fixed prefix of every handle.
pub const PREFIX: &str = "cph_";
/// Number of base62 characters of randomness.
pub const RANDOM_LEN: usize = 43;
/// Number of base62 characters of checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a handle, prefix included.
pub const HANDLE_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bitwise: handles
/// are 43 bytes, speed is irrelevant.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xFFFF_FFFF;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn base62_char(digit: u32) -> char {
    ALPHABET
        .get(digit as usize % 62)
        .map_or('0', |&b| char::from(b))
}

fn checksum_chars(random: &str) -> String {
    let mut value = crc32(random.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = base62_char(value % 62) as u8;
        value /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Build a handle from 32 caller-supplied random bytes (use a CSPRNG).
///
/// The 256-bit input is read as a big-endian integer and written as 43
/// base62 digits (62^43 > 2^256: every input bit is kept, no bias).
#[must_use]
pub fn generate(random: &[u8; 32]) -> String {
    let mut num = *random;
    let mut digits = [b'0'; RANDOM_LEN];
    for slot in digits.iter_mut().rev() {
        // Long division of the 256-bit number by 62.
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*byte);
            *byte = (cur / 62) as u8;
            rem = cur % 62;
        }
        *slot = base62_char(rem) as u8;
    }
    let random_part: String = digits.iter().map(|&b| char::from(b)).collect();
    let mut handle = String::with_capacity(HANDLE_LEN);
    handle.push_str(PREFIX);
    handle.push_str(&random_part);
    handle.push_str(&checksum_chars(&random_part));
    handle
}

/// Does `s` have the handle format and a correct checksum?
#[must_use]
pub fn is_valid(s: &str) -> bool {
    let Some(body) = s.strip_prefix(PREFIX) else {
        return false;
    };
    if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (Some(random), Some(check)) = (body.get(..RANDOM_LEN), body.get(RANDOM_LEN..)) else {
        return false;
    };
    checksum_chars(random) == check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn generated_handles_are_valid_and_distinct() {
        let a = generate(&[7u8; 32]);
        let b = generate(&[8u8; 32]);
        assert_eq!(a.len(), HANDLE_LEN);
        assert!(a.starts_with(PREFIX));
        assert!(is_valid(&a) && is_valid(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn every_random_bit_is_kept() {
        // Flipping any one of the 256 input bits changes the handle: no bit
        // is dropped by the encoding (30 digits used to drop the top 77).
        let base = [0u8; 32];
        let h0 = generate(&base);
        for bit in 0..256 {
            let mut r = base;
            r[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(generate(&r), h0, "bit {bit} is lost");
        }
        // The largest input still fits: 62^43 > 2^256.
        assert!(is_valid(&generate(&[0xFF; 32])));
    }

    #[test]
    fn corrupted_handles_are_invalid() {
        let h = generate(&[42u8; 32]);
        let mut bytes = h.clone().into_bytes();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        assert!(!is_valid(&String::from_utf8(bytes).unwrap()));
        assert!(!is_valid(&h[..HANDLE_LEN - 1]));
        assert!(!is_valid(&format!("{h}x")));
        assert!(!is_valid("cph_"));
        assert!(!is_valid(&h.replace("cph_", "cpx_")));
    }
}
