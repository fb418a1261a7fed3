//! The proxy-wasm host calls on requests, whose SDK wrappers panic on a status they do not
//! expect (a panic aborts the VM, and with it every request): a request that went away, or a
//! host that does things its own way, must not take the filter down. Here each returns whether
//! the host said Ok. Signatures are proxy-wasm ABI 0.2.1, as the SDK declares them.
//!
//! The other host calls stay with the SDK: Envoy and ngx_wasm_module answer them only with the
//! statuses its wrappers handle (shared data, IdP calls, metrics, time, plugin configuration),
//! and the glue reads a call's answer only when there is one.

const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const STREAM_HTTP_REQUEST: u32 = 0;
const STATUS_OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

// SAFETY (every call below): the pointers are to live slices whose lengths go with them, and the
// host only reads them during the call.

pub fn set_request_header(name: &str, value: &str) -> bool {
    let status = unsafe {
        proxy_replace_header_map_value(
            MAP_HTTP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    status == STATUS_OK
}

pub fn remove_request_header(name: &str) -> bool {
    let status = unsafe {
        proxy_remove_header_map_value(MAP_HTTP_REQUEST_HEADERS, name.as_ptr(), name.len())
    };
    status == STATUS_OK
}

pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let headers = serialize_map(headers);
    let status = unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    status == STATUS_OK
}

pub fn continue_request() -> bool {
    unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) == STATUS_OK }
}

/// Makes `ctx` the context later host calls act on; false if the host refused.
pub fn set_effective_context(ctx: u32) -> bool {
    unsafe { proxy_set_effective_context(ctx) == STATUS_OK }
}

/// The host's log level, `None` if it would not say (the SDK's wrapper panics then). Call it
/// only on a host known to implement it: ngx_wasm_module traps.
pub fn log_level() -> Option<proxy_wasm::types::LogLevel> {
    use proxy_wasm::types::LogLevel;
    let mut level = 0u32;
    if unsafe { proxy_get_log_level(&mut level) } != STATUS_OK {
        return None;
    }
    Some(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    })
}

/// The ABI's header map encoding: a count, each pair's sizes, then each name and value with a
/// NUL after it.
fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (name, value) in map {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in map {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}
