//! The routing config validator: any document is accepted or refused with
//! path-named errors, never a panic; an accepted one serialises and parses
//! back to itself.
#![no_main]

use edge_llm_gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    match Config::from_json(&text) {
        Ok(config) => {
            let again = serde_json::to_string(&config).expect("a config serialises");
            let back = Config::from_json(&again).expect("a serialised config is valid");
            assert_eq!(back, config, "serialise -> parse changed the config");
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
