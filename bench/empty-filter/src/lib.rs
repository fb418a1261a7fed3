//! The cheapest proxy-wasm HTTP filter that still looks at the request: it reads one header
//! (`authorization`) with one host call and continues. `make bench` measures okta-dcr-auth
//! against it, so that the fixed cost every proxy-wasm filter pays in the host (creating the
//! HTTP context, crossing into the VM for each callback) is not counted against our own work.
//!
//! Built for wasm32-wasip1 by `bench/run.sh`:
//! `cargo build --release --target wasm32-wasip1 -p bench-empty-filter`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Empty))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Empty;

impl Context for Empty {}

impl HttpContext for Empty {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Read the header for real (the host copies it into the VM), then ignore it.
        let authorization = hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization");
        std::hint::black_box(&authorization);
        Action::Continue
    }
}
