//! Deserializing `null` as the empty value, as Fly's clients send it.

use serde::{Deserialize, Deserializer};

/// Clients (fly-go among them) send `null` for empty maps and lists; treat it as
/// the empty value rather than rejecting the whole body.
pub fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
