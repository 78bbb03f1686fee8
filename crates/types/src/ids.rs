//! Identifiers in Fly's formats.

use rand::Rng;

/// A machine id: 14 lowercase hex characters.
pub fn new_machine_id() -> String {
    random_hex(14)
}

pub fn is_machine_id(text: &str) -> bool {
    text.len() == 14
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A version, instance id or event id: a 26-character ULID.
pub fn new_ulid() -> String {
    ulid::Ulid::new().to_string()
}

/// A lease nonce: 12 lowercase hex characters.
pub fn new_nonce() -> String {
    random_hex(12)
}

/// An app id: 16 lowercase base32-ish characters.
pub fn new_app_id() -> String {
    random_from("abcdefghijklmnopqrstuvwxyz0123456789", 16)
}

/// A volume id: `vol_` and 16 lowercase base32 characters.
pub fn new_volume_id() -> String {
    format!(
        "vol_{}",
        random_from("abcdefghijklmnopqrstuvwxyz234567", 16)
    )
}

/// A volume snapshot id: `vs_` and 22 base62 characters.
pub fn new_snapshot_id() -> String {
    format!(
        "vs_{}",
        random_from(
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            22
        )
    )
}

pub fn random_hex(len: usize) -> String {
    random_from("0123456789abcdef", len)
}

fn random_from(alphabet: &str, len: usize) -> String {
    let alphabet = alphabet.as_bytes();
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

const ADJECTIVES: &[&str] = &[
    "ancient",
    "autumn",
    "billowing",
    "bitter",
    "black",
    "blue",
    "bold",
    "broad",
    "broken",
    "calm",
    "cold",
    "cool",
    "crimson",
    "curly",
    "damp",
    "dark",
    "dawn",
    "delicate",
    "divine",
    "dry",
    "empty",
    "falling",
    "fancy",
    "flat",
    "floral",
    "fragrant",
    "frosty",
    "gentle",
    "green",
    "hidden",
    "holy",
    "icy",
    "jolly",
    "late",
    "lingering",
    "little",
    "lively",
    "long",
    "lucky",
    "misty",
    "morning",
    "muddy",
    "nameless",
    "noisy",
    "old",
    "orange",
    "patient",
    "plain",
    "polished",
    "proud",
    "purple",
    "quiet",
    "rapid",
    "raspy",
    "red",
    "restless",
    "rough",
    "round",
    "royal",
    "shiny",
    "shrill",
    "shy",
    "silent",
    "small",
    "snowy",
    "soft",
    "solitary",
    "sparkling",
    "spring",
    "square",
    "steep",
    "still",
    "summer",
    "super",
    "sweet",
    "throbbing",
    "tight",
    "tiny",
    "twilight",
    "wandering",
    "weathered",
    "white",
    "wild",
    "winter",
    "wispy",
    "withered",
    "yellow",
    "young",
];

const NOUNS: &[&str] = &[
    "art",
    "band",
    "bar",
    "base",
    "bird",
    "block",
    "boat",
    "bonus",
    "bread",
    "breeze",
    "brook",
    "bush",
    "butterfly",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "credit",
    "darkness",
    "dawn",
    "dew",
    "disk",
    "dream",
    "dust",
    "feather",
    "field",
    "fire",
    "firefly",
    "flower",
    "fog",
    "forest",
    "frog",
    "frost",
    "glade",
    "glitter",
    "grass",
    "hall",
    "hat",
    "haze",
    "heart",
    "hill",
    "king",
    "lab",
    "lake",
    "leaf",
    "limit",
    "math",
    "meadow",
    "mode",
    "moon",
    "morning",
    "mountain",
    "mouse",
    "mud",
    "night",
    "paper",
    "pine",
    "poetry",
    "pond",
    "queen",
    "rain",
    "recipe",
    "resonance",
    "rice",
    "river",
    "salad",
    "scene",
    "sea",
    "shadow",
    "shape",
    "silence",
    "sky",
    "smoke",
    "snow",
    "snowflake",
    "sound",
    "star",
    "sun",
    "sunset",
    "surf",
    "term",
    "thunder",
    "tooth",
    "tree",
    "truth",
    "union",
    "unit",
    "violet",
    "voice",
    "water",
    "waterfall",
    "wave",
    "wildflower",
    "wind",
    "wood",
];

/// A machine name the way Fly makes one: `adjective-noun-NNNN`.
pub fn generate_name() -> String {
    let mut rng = rand::rng();
    format!(
        "{}-{}-{:04}",
        ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
        NOUNS[rng.random_range(0..NOUNS.len())],
        rng.random_range(0..10_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let id = new_machine_id();
        assert!(is_machine_id(&id), "{id}");
        assert!(!is_machine_id("XYZ"));
        assert_eq!(new_ulid().len(), 26);
        assert_eq!(new_nonce().len(), 12);
        assert!(new_volume_id().starts_with("vol_"));
        let name = generate_name();
        assert_eq!(name.split('-').count(), 3, "{name}");
    }
}
