//! The proxy-wasm host calls on requests, whose SDK wrappers panic on a status they do not
//! expect (a panic aborts the VM, and with it every request): a request that went away, or a
//! host that does things its own way, must not take the filter down. Here each returns whether
//! the host said Ok. Signatures are proxy-wasm ABI 0.2.1, as the SDK declares them.
//!
//! Every host call the filter makes goes through here, statuses as numbers, except
//! `dispatch_http_call`, which must go through the SDK so that its dispatcher knows the call's
//! token when the answer comes (its wrapper panics only on a status neither host returns).

const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
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
    fn proxy_add_header_map_value(
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
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn environ_sizes_get(count: *mut usize, buf_size: *mut usize) -> u16;
    fn environ_get(environ: *mut *mut u8, environ_buf: *mut u8) -> u16;
}

/// The VM's environment variable `name` (Envoy's `vm_config.environment_variables`), read
/// straight from WASI: `std::env` would bring about 35 KB of code into the module for this one
/// read at configuration time. `None` when absent or not UTF-8.
pub fn env_var(name: &str) -> Option<String> {
    let (mut count, mut size) = (0usize, 0usize);
    // SAFETY: WASI writes two integers to the pointers given.
    if unsafe { environ_sizes_get(&mut count, &mut size) } != 0 {
        return None;
    }
    let mut pointers = vec![std::ptr::null_mut::<u8>(); count];
    let mut entries = vec![0u8; size];
    // SAFETY: `pointers` has room for `count` pointers and `entries` for `size` bytes, as WASI
    // said just before; it writes `KEY=VALUE\0` entries and pointers into them.
    if unsafe { environ_get(pointers.as_mut_ptr(), entries.as_mut_ptr()) } != 0 {
        return None;
    }
    entries.split(|b| *b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(value.to_vec()).ok()
    })
}

// SAFETY (every call below): the pointers are to live slices whose lengths go with them, and the
// host only reads them during the call.

/// `proxy_replace_header_map_value` or `proxy_add_header_map_value`.
type HeaderWrite = unsafe extern "C" fn(u32, *const u8, usize, *const u8, usize) -> u32;

fn write_request_header(write: HeaderWrite, name: &str, value: &str) -> bool {
    let status = unsafe {
        write(
            MAP_HTTP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    status == STATUS_OK
}

pub fn set_request_header(name: &str, value: &str) -> bool {
    write_request_header(proxy_replace_header_map_value, name, value)
}

/// Adds a request header that is known to be absent: cheaper than a replace, which looks for
/// the name first.
pub fn add_request_header(name: &str, value: &str) -> bool {
    write_request_header(proxy_add_header_map_value, name, value)
}

fn drop_request_header(name: &str) -> bool {
    let status = unsafe {
        proxy_remove_header_map_value(MAP_HTTP_REQUEST_HEADERS, name.as_ptr(), name.len())
    };
    status == STATUS_OK
}

pub use okta_dcr_auth_core::header_map::HeaderPair;

/// The request's headers, as the host spells them.
pub fn request_headers() -> Vec<HeaderPair> {
    header_map(MAP_HTTP_REQUEST_HEADERS)
}

/// The headers of an IdP call's answer, in the callback that delivers it.
pub fn call_response_headers() -> Vec<HeaderPair> {
    header_map(MAP_HTTP_CALL_RESPONSE_HEADERS)
}

/// A header map read as bytes; empty when the host has none or refused. The SDK's own getters
/// unwrap a UTF-8 conversion of every name (and panic on the first that is not): never used.
fn header_map(map_type: u32) -> Vec<HeaderPair> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if status != STATUS_OK || data.is_null() {
        return Vec::new();
    }
    // SAFETY: as in `property`: the host filled `data` through the module's allocator and
    // hands it over.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    okta_dcr_auth_core::header_map::decode(&bytes).unwrap_or_default()
}

/// Removes a request header so that no value of it goes upstream, on either host.
///
/// ngx_wasm_module (9136e463) "removes" a request header by zeroing the hash of its entry in
/// nginx's `headers_in` list: the filter no longer sees it, but nginx's proxy module forwards
/// every entry of that list whatever its hash, so the value still goes upstream. An entry is
/// only ever changed for real by a replace while it is still visible, which overwrites its
/// value in place. So a header that is there is first replaced by an empty value, then
/// removed: Envoy drops it; nginx forwards at most the empty value. A header that is not there
/// is left alone (a replace would create it).
pub fn remove_request_header(name: &str) -> bool {
    let present = request_headers()
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()));
    if present {
        set_request_header(name, "");
    }
    drop_request_header(name)
}

/// Takes client-sent headers out of the request so that none of their values can reach the
/// upstream, on Envoy and on ngx_wasm_module alike. `names` are as the host spelled them (read
/// from its header map); those equal, ignoring ASCII case, to one in `overwrite` stay, with an
/// empty value, for the caller to replace with its own (a replace on ngx_wasm_module only
/// changes an entry in place while it is visible: see [`remove_request_header`]); the others
/// are removed.
///
/// Returns false when that could not be done, and the request must not go upstream. On
/// ngx_wasm_module a replace overwrites the first entry of a name and hides every entry of it,
/// which nginx still forwards: several copies of one name cannot all be emptied. Nor can a
/// name nginx hashed without some of its characters (with `ignore_invalid_headers off`, a `.`
/// or, without `underscores_in_headers`, a `_`): the replace does not find it. Both show when
/// the header map is read again: each name must then be there exactly once, empty.
pub fn scrub_request_headers(names: &[&str], overwrite: &[&str]) -> bool {
    if names.is_empty() {
        return true;
    }
    // One replace per name, whatever its case: a second one would not find the entries the
    // first hid on ngx_wasm_module, and would add a new (empty, visible) one.
    let mut distinct: Vec<&str> = Vec::with_capacity(names.len());
    for name in names {
        if !distinct.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            distinct.push(name);
        }
    }
    let names = distinct;
    for name in &names {
        set_request_header(name, "");
    }
    let after = request_headers();
    let clean = names.iter().all(|name| {
        let mut values = after
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v);
        matches!((values.next(), values.next()), (Some(v), None) if v.is_empty())
    });
    for name in &names {
        if !overwrite.iter().any(|o| o.eq_ignore_ascii_case(name)) {
            drop_request_header(name);
        }
    }
    clean
}

pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let headers = okta_dcr_auth_core::header_map::encode(headers);
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

/// A property's value; `None` when the host has none or refused. The path's parts are joined
/// by NUL bytes, as the ABI has it.
fn property(path: &[&str]) -> Option<Vec<u8>> {
    let path = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    if status != STATUS_OK || data.is_null() {
        return None;
    }
    // SAFETY: the host filled `data` through the module's `proxy_on_memory_allocate` (the SDK's,
    // a `Vec<u8>` of capacity `size`) and hands it over, as the SDK's `get_property` takes it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// ngx_wasm_module only: whether this request is the first one on its client connection
/// (nginx's `$connection_requests` is 1, read as the property `ngx.connection_requests`).
/// False when that cannot be read.
///
/// Only such a request may pause in `on_request_headers` there. ngx_wasm_module (9136e463)
/// runs that callback in nginx's rewrite phase, and a pause there leaves the request's write
/// handler at `ngx_http_core_run_phases` until the first IdP call's posted event has run
/// (`ngx_http_wasm_rewrite_handler` never marks the request as yielding). A write event on the
/// client connection in between, which epoll reports with the read event that brought the
/// request once the connection's write event is registered (after a request on it was proxied,
/// or a reply could not be written at once), runs the phases again: the paused step counts as
/// done, and nginx proxies the request as it is, before any IdP answer (kong/README.md, bug
/// report F). A connection's first request comes before any of that.
pub fn first_request_on_connection() -> bool {
    property(&["ngx", "connection_requests"]).is_some_and(|v| v == b"1")
}

/// ngx_wasm_module only: nginx closes the client connection after this request's answer, so
/// that no later request on it can be forwarded before its IdP answer (see
/// [`first_request_on_connection`]). A `Connection: close` request header makes ngx_wasm_module
/// clear the request's keep-alive; nginx's proxy sends the upstream its own `Connection`.
pub fn close_connection_after_request() -> bool {
    set_request_header("connection", "close")
}

/// Makes `ctx` the context later host calls act on; false if the host refused.
pub fn set_effective_context(ctx: u32) -> bool {
    unsafe { proxy_set_effective_context(ctx) == STATUS_OK }
}

const STATUS_CAS_MISMATCH: u32 = 8;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;
const METRIC_GAUGE: u32 = 1;
const METRIC_HISTOGRAM: u32 = 2;

/// A buffer the host fills through the module's allocator and hands over; `None` when it has
/// none or refused.
fn host_bytes(fill: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    if fill(&mut data, &mut size) != STATUS_OK || data.is_null() {
        return None;
    }
    // SAFETY: as in `property`: allocated by the module's `proxy_on_memory_allocate` for `size`.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A shared-data value and its CAS; `None` when there is none (or the host refused).
pub fn shared_get(key: &str) -> Option<(Vec<u8>, u32)> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    if status != STATUS_OK {
        return None;
    }
    let value = if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: as in `host_bytes`.
        unsafe { Vec::from_raw_parts(data, size, size) }
    };
    Some((value, cas))
}

/// Why a shared-data write did not happen.
pub enum SharedWrite {
    /// Another write came first (the CAS did not match).
    CasMismatch,
    /// Anything else the host said (its memory full, ...).
    Refused,
}

/// Writes a shared-data value if its CAS still is `cas` (0: see the hosts' rules).
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), SharedWrite> {
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        STATUS_OK => Ok(()),
        STATUS_CAS_MISMATCH => Err(SharedWrite::CasMismatch),
        _ => Err(SharedWrite::Refused),
    }
}

fn buffer(buffer_type: u32, max: usize) -> Vec<u8> {
    host_bytes(|data, size| unsafe { proxy_get_buffer_bytes(buffer_type, 0, max, data, size) })
        .unwrap_or_default()
}

/// The plugin's configuration (empty when the host has none).
pub fn plugin_configuration() -> Vec<u8> {
    buffer(BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
}

/// An IdP call's answer body, up to `max` bytes, in the callback that delivers it.
pub fn call_response_body(max: usize) -> Vec<u8> {
    buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, max)
}

/// Wall-clock time in ms since the epoch (0 when the host refused).
pub fn now_ms() -> u64 {
    let mut ns: u64 = 0;
    if unsafe { proxy_get_current_time_nanoseconds(&mut ns) } != STATUS_OK {
        return 0;
    }
    ns / 1_000_000
}

/// Asks for a tick every `ms`; false when the host refused (ngx_wasm_module sets it once).
pub fn set_tick_period_ms(ms: u32) -> bool {
    unsafe { proxy_set_tick_period_milliseconds(ms) == STATUS_OK }
}

fn define_metric(metric_type: u32, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    let status = unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) };
    (status == STATUS_OK).then_some(id)
}

pub fn define_counter(name: &str) -> Option<u32> {
    define_metric(METRIC_COUNTER, name)
}

pub fn define_gauge(name: &str) -> Option<u32> {
    define_metric(METRIC_GAUGE, name)
}

pub fn define_histogram(name: &str) -> Option<u32> {
    define_metric(METRIC_HISTOGRAM, name)
}

/// Adds to a counter; a refusal is ignored (a metric never decides anything).
pub fn increment_metric(id: u32, by: i64) {
    unsafe { proxy_increment_metric(id, by) };
}

/// Records a histogram value, or sets a gauge; a refusal is ignored.
pub fn record_metric(id: u32, value: u64) {
    unsafe { proxy_record_metric(id, value) };
}
