//! The cheapest proxy-wasm HTTP filter that still looks at the request: it reads one header
//! (`authorization`) with one host call and continues. `make bench` measures okta-dcr-auth
//! against it, so that the fixed cost every proxy-wasm filter pays in the host (creating the
//! HTTP context, crossing into the VM for each callback) is not counted against our own work.
//!
//! With a plugin configuration it is a probe of what some host calls cost instead (`make bench`'s
//! host call phase), each on top of that one read:
//! - `bulk`: all request headers in one call (`get_header_map_pairs`) instead of the one read;
//! - `targeted`: two more single-header reads (the names okta-dcr-auth must check for spoofing);
//! - `replace`: two headers that are not there set with `replace_header_map_value`;
//! - `add`: the same two with `add_header_map_value`.
//!
//! Built for wasm32-wasip1 by `bench/run.sh`:
//! `cargo build --release --target wasm32-wasip1 -p bench-empty-filter`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::<Root>::default() });
}}

/// What each request does (see the crate's documentation).
#[derive(Clone, Copy, Default)]
enum Probe {
    #[default]
    Read,
    Bulk,
    Targeted,
    Replace,
    Add,
}

#[derive(Default)]
struct Root {
    probe: Probe,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.probe = match config.as_slice() {
            b"" => Probe::Read,
            b"bulk" => Probe::Bulk,
            b"targeted" => Probe::Targeted,
            b"replace" => Probe::Replace,
            b"add" => Probe::Add,
            _ => return false,
        };
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Empty { probe: self.probe }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Empty {
    probe: Probe,
}

impl Context for Empty {}

const HEADERS: MapType = MapType::HttpRequestHeaders;

impl HttpContext for Empty {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Probe::Bulk = self.probe {
            std::hint::black_box(hostcalls::get_map_bytes(HEADERS).ok());
            return Action::Continue;
        }
        // Read the header for real (the host copies it into the VM), then ignore it.
        let authorization = hostcalls::get_map_value(HEADERS, "authorization");
        std::hint::black_box(&authorization);
        let (identity, scope) = ("x-credential-identifier", "x-authenticated-scope");
        match self.probe {
            Probe::Read | Probe::Bulk => {}
            Probe::Targeted => {
                std::hint::black_box(hostcalls::get_map_value(HEADERS, identity).ok());
                std::hint::black_box(hostcalls::get_map_value(HEADERS, scope).ok());
            }
            Probe::Replace => {
                let _ = hostcalls::set_map_value(HEADERS, identity, Some("0oa6demoDcrClient4kong"));
                let _ = hostcalls::set_map_value(HEADERS, scope, Some("api:read"));
            }
            Probe::Add => {
                let _ = hostcalls::add_map_value(HEADERS, identity, "0oa6demoDcrClient4kong");
                let _ = hostcalls::add_map_value(HEADERS, scope, "api:read");
            }
        }
        Action::Continue
    }
}
