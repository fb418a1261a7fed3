//! A proxy-wasm HTTP filter that crashes its VM on demand, for the `failure_policy` tests in
//! `tests/tests/hostile.rs`: a request carrying `x-panic` makes `on_http_request_headers` panic
//! (with the workspace's `panic = "abort"` the VM traps); any other request continues untouched.
//! So a test can crash the VM once and then see what Envoy does with the next requests.
//!
//! Built for wasm32-wasip1:
//! `cargo build --release --target wasm32-wasip1 -p okta-dcr-auth-panic-filter`
//! (`target/wasm32-wasip1/release/panic_filter.wasm`).

#![allow(clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let _ = hostcalls::log(LogLevel::Info, "panic-filter: VM started");
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MaybePanic))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct MaybePanic;

impl Context for MaybePanic {}

impl HttpContext for MaybePanic {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let asked = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-panic")
            .ok()
            .flatten();
        if asked.is_some() {
            panic!("panic-filter: panicking on purpose (x-panic)");
        }
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            "x-panic-filter",
            Some("passed"),
        );
        Action::Continue
    }
}
