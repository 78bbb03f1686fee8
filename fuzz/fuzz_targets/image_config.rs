//! The image JSON the store reads: OCI/Docker image configs, manifests and
//! indexes (from registries, archives and peers), its own image records,
//! digests and references. Parsing never panics; what parses round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_image::ImageConfig;
use midge_image::fuzzing::{self, OciImageIndex, OciImageManifest};
use serde_json::Value;

fn check_image_config(bytes: &[u8]) {
    let Ok(config) = ImageConfig::from_oci_json(bytes) else {
        return;
    };
    let blob = config.to_oci_json(&["sha256:00".to_string()]);
    let back = ImageConfig::from_oci_json(&blob).expect("a written config blob parses");
    assert_eq!(back, config, "image config changed through its OCI form");
    // The store keeps the config in its image records in serde's form.
    let stored = serde_json::to_vec(&config).expect("an image config serializes");
    let back: ImageConfig = serde_json::from_slice(&stored).expect("a stored config parses");
    assert_eq!(back, config, "image config changed through the record form");
}

/// Parses as `T`, serializes, parses again: the JSON values must agree.
fn check_json_round_trip<T>(bytes: &[u8], what: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let Ok(parsed) = serde_json::from_slice::<T>(bytes) else {
        return;
    };
    let value = serde_json::to_value(&parsed).expect("a parsed document serializes");
    let reparsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("serialized {what} does not parse: {err}\n{value}"));
    let value_again = serde_json::to_value(&reparsed).expect("a parsed document serializes");
    assert_eq!(value_again, value, "{what} changed through JSON");
}

fn check_digests(document: &Value) {
    for digest in fuzzing::digests_named_in(document) {
        if let Ok(hex) = fuzzing::sha256_hex(&digest) {
            // Digests become file names: nothing but 64 lowercase hex digits.
            assert_eq!(hex.len(), 64);
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }
}

fn check_reference(text: &str) {
    let Ok(normalized) = fuzzing::normalized_reference(text) else {
        return;
    };
    let again = fuzzing::normalized_reference(&normalized)
        .unwrap_or_else(|err| panic!("{text:?} normalized to {normalized:?}, which fails: {err}"));
    assert_eq!(again, normalized, "normalizing {text:?} is not idempotent");
}

fn check_image_record(bytes: &[u8]) {
    let Ok(written) = fuzzing::reencode_image_record(bytes) else {
        return;
    };
    let rewritten = fuzzing::reencode_image_record(&written).expect("a written record parses");
    assert_eq!(rewritten, written, "image record changed through JSON");
}

fuzz_target!(|data: &[u8]| {
    check_image_config(data);
    check_json_round_trip::<OciImageManifest>(data, "manifest");
    check_json_round_trip::<OciImageIndex>(data, "index");
    check_image_record(data);
    if let Ok(document) = serde_json::from_slice::<Value>(data) {
        check_digests(&document);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_reference(text);
        let _ = fuzzing::sha256_hex(text);
    }
});
