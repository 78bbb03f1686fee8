//! RFC 3339 timestamps in UTC without a calendar dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2024-01-02T03:04:05.006Z` for the given instant (times before the epoch
/// are clamped to it).
pub fn rfc3339_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let second_of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// The current time as [`rfc3339_millis`].
pub fn now_rfc3339() -> String {
    rfc3339_millis(SystemTime::now())
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    // Always 1..=31 and 1..=12.
    let day = u32::try_from(day_of_year - (153 * month_index + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    })
    .unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:58.123Z, a leap day.
        let leap = UNIX_EPOCH + Duration::from_millis(1_709_251_198_123);
        assert_eq!(rfc3339_millis(leap), "2024-02-29T23:59:58.123Z");
        let y2k = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(rfc3339_millis(y2k), "2000-01-01T00:00:00.000Z");
    }
}
