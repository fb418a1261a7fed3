#![no_main]
//! `cargo fuzz run config`: the input format and the properties are in `src/config.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::config::check(data));
