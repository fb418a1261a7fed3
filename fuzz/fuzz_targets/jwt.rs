#![no_main]
//! `cargo fuzz run jwt`: the input format and the properties are in `src/jwt.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::jwt::check(data));
