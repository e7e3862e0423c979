//! The content hash of blobs and manifests: BLAKE3, 32 bytes, lowercase hex.

/// Length of a hash in hex characters.
pub(crate) const HASH_HEX_LEN: usize = 64;

/// Lowercase hex BLAKE3 of `data`: the name of the blob holding `data`.
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Whether `s` is a well-formed blob hash (64 lowercase hex chars). Hashes become file
/// names, so anything else is refused before it reaches a path.
pub(crate) fn is_valid_hash(s: &str) -> bool {
    s.len() == HASH_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_validation() {
        // BLAKE3 of the empty input, from the reference test vectors.
        assert_eq!(
            blake3_hex(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let h = blake3_hex(b"abc");
        assert!(is_valid_hash(&h));
        assert!(!is_valid_hash(&h.to_uppercase()));
        assert!(!is_valid_hash(&h[1..]));
        assert!(!is_valid_hash("../../../../etc/passwd"));
    }
}
