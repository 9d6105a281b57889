//! Lower-case Crockford base32, the text form of ids and generated keys.
//!
//! Bits are taken most significant first, so for inputs of one length the encoded strings sort
//! like the bytes do. That keeps UUIDv7-based ids ordered by creation time as text.

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Encodes `bytes`, padding the last group with zero bits.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let mut buffer: u16 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[usize::from((buffer >> bits) & 0x1f)] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[usize::from((buffer << (5 - bits)) & 0x1f)] as char);
    }
    out
}

/// Decodes exactly `N` bytes. Upper case is accepted; the letters Crockford excludes are not,
/// and neither is a non-zero padding tail (so each value has one spelling).
pub(crate) fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != (N * 8).div_ceil(5) {
        return None;
    }
    let mut out = [0u8; N];
    let mut buffer: u16 = 0;
    let mut bits = 0;
    let mut filled = 0;
    for ch in text.bytes() {
        let value = ALPHABET
            .iter()
            .position(|&a| a == ch.to_ascii_lowercase())? as u16;
        buffer = ((buffer << 5) | value) & 0x1fff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            if filled == N {
                return None;
            }
            out[filled] = (buffer >> bits) as u8;
            filled += 1;
        }
    }
    let leftover_mask = (1u16 << bits) - 1;
    (filled == N && buffer & leftover_mask == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_order() {
        let samples: [[u8; 16]; 4] = [[0; 16], [1; 16], [0x7f; 16], [0xff; 16]];
        let mut previous = String::new();
        for sample in samples {
            let text = encode(&sample);
            assert_eq!(text.len(), 26);
            assert!(text > previous, "{text} should sort after {previous}");
            assert_eq!(decode::<16>(&text), Some(sample));
            previous = text;
        }
    }

    #[test]
    fn rejects_bad_text() {
        let good = encode(&[0xab; 16]);
        assert_eq!(decode::<16>(&good.to_uppercase()), Some([0xab; 16]));
        assert_eq!(decode::<16>(&good[1..]), None, "too short");
        assert_eq!(decode::<16>(&format!("{good}0")), None, "too long");
        assert_eq!(
            decode::<16>(&format!("u{}", &good[1..])),
            None,
            "excluded letter"
        );
        let mut bad_padding = good.into_bytes();
        *bad_padding.last_mut().unwrap() = b'z';
        assert_eq!(
            decode::<16>(std::str::from_utf8(&bad_padding).unwrap()),
            None
        );
    }
}
