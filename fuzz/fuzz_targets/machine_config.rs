//! Machine configs and create bodies as the API reads them: parsing never
//! panics, and what parses serializes to JSON that parses to the same value
//! (unknown fields included) and passes or fails validation the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_types::{CreateMachineRequest, MachineConfig};
use serde_json::Value;

fn check_config(config: &MachineConfig) {
    let json = serde_json::to_vec(config).expect("a parsed config serializes");
    let reparsed: MachineConfig = serde_json::from_slice(&json).unwrap_or_else(|err| {
        panic!(
            "serialized config does not parse: {err}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(&reparsed, config, "config changed through JSON");
    let json_again = serde_json::to_vec(&reparsed).expect("a parsed config serializes");
    assert_eq!(json_again, json, "serializing is not stable");
    assert_eq!(reparsed.validate(), config.validate());
    // What the agent derives from a config must not panic either.
    let _ = (
        config.restart_policy(),
        config.stop_signal(),
        config.stop_timeout(),
        config.guest_or_default().millicpus(),
    );
    for mount in &config.mounts {
        let _ = mount.auto_extend();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<MachineConfig>(data) {
        check_config(&config);
    }
    if let Ok(request) = serde_json::from_slice::<CreateMachineRequest>(data) {
        let value = serde_json::to_value(&request).expect("a parsed request serializes");
        let reparsed: CreateMachineRequest = serde_json::from_value(value.clone())
            .unwrap_or_else(|err| panic!("serialized request does not parse: {err}\n{value}"));
        let value_again: Value =
            serde_json::to_value(&reparsed).expect("a parsed request serializes");
        assert_eq!(value_again, value, "request changed through JSON");
        if let Some(config) = &request.config {
            check_config(config);
        }
    }
});
