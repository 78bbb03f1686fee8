//! Unique resource prefixes, so every test's host resources can be told
//! apart, checked and removed.

use rand::Rng;
use rand::distr::Alphanumeric;

/// A short prefix ("mgt" + 3 random lowercase letters or digits) that names every host
/// resource one test creates, so leaks can be traced and cleaned.
pub fn unique_prefix() -> String {
    let suffix: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .map(|byte| (byte as char).to_ascii_lowercase())
        .take(3)
        .collect();
    format!("mgt{suffix}")
}

/// A dev cluster's prefix: one character shorter, since each host's
/// resource prefix is the cluster's plus the host's number.
pub fn unique_cluster_prefix() -> String {
    let mut prefix = unique_prefix();
    prefix.truncate(5);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_lowercase_and_vary() {
        let prefix = unique_prefix();
        assert_eq!(prefix.len(), 6);
        assert!(prefix.starts_with("mgt"));
        assert!(
            prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let distinct: std::collections::HashSet<String> =
            (0..50).map(|_| unique_prefix()).collect();
        assert!(distinct.len() > 40);
    }
}
