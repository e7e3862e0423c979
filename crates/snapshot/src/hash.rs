//! The content hash of blobs (SHA-256, lowercase hex).

use sha2::{Digest, Sha256};

/// Length of a hash in hex characters.
pub(crate) const HASH_HEX_LEN: usize = 64;

/// Lowercase hex SHA-256 of `data`: the name of the blob holding `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
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
        let h = sha256_hex(b"abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_valid_hash(&h));
        assert!(!is_valid_hash(&h.to_uppercase()));
        assert!(!is_valid_hash(&h[1..]));
        assert!(!is_valid_hash("../../../../etc/passwd"));
    }
}
