//! TXT values: joining entries into one value that fits a record, and splitting
//! it into the 255-byte character-strings the wire format allows.
//!
//! Fly's clients concatenate every character-string of a TXT record, so a long
//! value stays one record made of several strings rather than several records
//! (whose order caches do not keep).

use tracing::warn;

/// Longest character-string the wire format allows (its length is one byte).
pub(crate) const MAX_CHARACTER_STRING: usize = 255;

/// Longest value one record may carry. A record's data and the whole TCP message
/// are both limited to 65,535 bytes; this leaves room for the length bytes of
/// the strings, the question, the header and an OPT record.
pub(crate) const MAX_VALUE_BYTES: usize = 64_000;

/// Joins `entries` with `separator`, stopping before the first entry that would
/// make the value longer than [`MAX_VALUE_BYTES`], so a value never ends in half
/// an entry. `name` is the DNS name the value is for, for the warning when entries are left out.
pub(crate) fn join_capped<I, S>(name: &str, entries: I, separator: char) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut value = String::new();
    let mut dropped = 0usize;
    for entry in entries {
        let entry = entry.as_ref();
        let needed = entry.len() + if value.is_empty() { 0 } else { 1 };
        if dropped > 0 || value.len() + needed > MAX_VALUE_BYTES {
            dropped += 1;
            continue;
        }
        if !value.is_empty() {
            value.push(separator);
        }
        value.push_str(entry);
    }
    if dropped > 0 {
        warn!(
            name,
            dropped, "TXT value too long for one record, entries left out"
        );
    }
    value
}

/// The character-strings of one TXT record carrying `value`.
pub(crate) fn character_strings(value: &str) -> Vec<&[u8]> {
    value.as_bytes().chunks(MAX_CHARACTER_STRING).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_one_string() {
        assert_eq!(character_strings("a,b"), vec![b"a,b".as_slice()]);
    }

    #[test]
    fn long_values_are_split_every_255_bytes_and_concatenate_back() {
        let value = "x".repeat(600);
        let strings = character_strings(&value);
        let lengths: Vec<usize> = strings.iter().map(|s| s.len()).collect();
        assert_eq!(lengths, vec![255, 255, 90]);
        assert_eq!(strings.concat(), value.as_bytes());
    }

    #[test]
    fn a_value_of_exactly_255_bytes_is_not_split() {
        assert_eq!(character_strings(&"y".repeat(255)).len(), 1);
    }

    #[test]
    fn joining_stops_at_whole_entries_under_the_cap() {
        let entry = "e".repeat(1000);
        let value = join_capped("test", std::iter::repeat_n(entry.as_str(), 100), ';');
        assert!(value.len() <= MAX_VALUE_BYTES);
        assert!(value.split(';').all(|part| part == entry));
        // 63 entries and 62 separators fit in 64,000 bytes; a 64th does not.
        assert_eq!(value.split(';').count(), 63);
    }

    #[test]
    fn joining_uses_the_separator_between_entries_only() {
        assert_eq!(join_capped("test", ["a", "b", "c"], ','), "a,b,c");
        assert_eq!(join_capped("test", Vec::<String>::new(), ','), "");
    }
}
