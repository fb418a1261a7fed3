#![no_main]
//! `cargo fuzz run form_decode`: the input format and the properties are in `src/form_decode.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::form_decode::check(data));
