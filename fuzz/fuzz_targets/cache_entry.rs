#![no_main]
//! `cargo fuzz run cache_entry`: the input format and the properties are in `src/cache_entry.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| okta_dcr_auth_fuzz::cache_entry::check(data));
