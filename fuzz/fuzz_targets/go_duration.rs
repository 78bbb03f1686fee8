//! Go durations from text and JSON: parsing never panics, and whatever parses
//! prints back to text that parses to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_types::GoDuration;

fn assert_display_round_trips(parsed: GoDuration, input: &str) {
    let shown = parsed.to_string();
    let reparsed: GoDuration = shown
        .parse()
        .unwrap_or_else(|err| panic!("{input:?} parsed, its display {shown:?} did not: {err}"));
    assert_eq!(reparsed, parsed, "{input:?} → {shown:?} changed the value");
    let json = serde_json::to_string(&parsed).expect("a duration serializes");
    let from_json: GoDuration = serde_json::from_str(&json)
        .unwrap_or_else(|err| panic!("{input:?} serialized as {json}, which did not parse: {err}"));
    assert_eq!(from_json, parsed, "{input:?} → {json} changed the value");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = text.parse::<GoDuration>() {
        assert_display_round_trips(parsed, text);
    }
    if let Ok(parsed) = GoDuration::parse_lenient(text) {
        assert_display_round_trips(parsed, text);
    }
    // As a JSON value: a string, a number of nanoseconds, or anything else.
    if let Ok(parsed) = serde_json::from_str::<GoDuration>(text) {
        assert_display_round_trips(parsed, text);
    }
    let quoted = serde_json::to_string(text).expect("a string serializes");
    if let Ok(parsed) = serde_json::from_str::<GoDuration>(&quoted) {
        assert_display_round_trips(parsed, text);
    }
});
