#![no_main]
//! `cargo fuzz run authorization`: the input format and the properties are in `src/authorization.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::authorization::check(data));
