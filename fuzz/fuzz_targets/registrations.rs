#![no_main]
//! `cargo fuzz run registrations`: the input format and the properties are in `src/registrations.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::registrations::check(data));
