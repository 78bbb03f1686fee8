//! Token secrets: generated at random, shown once, stored only as a hash.

use rand::Rng;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "midge_";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
/// 32 base32 characters: 160 random bits.
const SECRET_LEN: usize = 32;

pub fn new_token() -> String {
    let mut rng = rand::rng();
    let secret: String = (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{TOKEN_PREFIX}{secret}")
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
