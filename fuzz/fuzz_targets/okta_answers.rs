#![no_main]
//! `cargo fuzz run okta_answers`: the input format and the properties are in `src/okta_answers.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::okta_answers::check(data));
