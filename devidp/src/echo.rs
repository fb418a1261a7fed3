//! The echo upstream: records every request and answers 200 with what it received.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};

use crate::serve::{self, ResetConnection, Resp, ServerThread};
use crate::util::json_response;

/// How many requests [`EchoHandle::requests`] keeps (the most recent ones); [`EchoHandle::count`]
/// counts them all.
pub const MAX_ECHO_RECORDS: usize = 10_000;

/// A request that reached the echo server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoRequest {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Every header: lowercase names, one entry per value (the values of one name in the order
    /// received).
    pub headers: Vec<(String, String)>,
}

impl EchoRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<VecDeque<EchoRequest>>,
    count: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<EchoRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running echo server. Dropping it stops the server.
pub struct EchoHandle {
    shared: Arc<Shared>,
    server: ServerThread,
}

impl EchoHandle {
    /// Starts an echo server on `listen` (`"127.0.0.1:0"` picks a port).
    pub fn spawn(listen: &str) -> io::Result<EchoHandle> {
        let listener = serve::bind(listen)?;
        let shared = Arc::new(Shared::default());
        let for_server = shared.clone();
        let server = serve::spawn(listener, "okta-dev-echo", move |req| {
            handle(for_server.clone(), req)
        })?;
        Ok(EchoHandle { shared, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The requests that reached it, oldest first (the most recent [`MAX_ECHO_RECORDS`]).
    pub fn requests(&self) -> Vec<EchoRequest> {
        self.shared.lock().iter().cloned().collect()
    }

    /// How many requests reached it.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Forgets the requests and zeroes the count.
    pub fn clear(&self) {
        let mut requests = self.shared.lock();
        requests.clear();
        self.shared.count.store(0, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for EchoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoHandle")
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, ResetConnection> {
    let (parts, body) = req.into_parts();
    // Drain the body so the connection can be reused.
    let _ = serve::read_body(body).await;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let record = EchoRequest {
        method: parts.method.as_str().to_string(),
        path,
        headers,
    };
    let body = echo_body(&record);
    {
        let mut requests = shared.lock();
        if requests.len() >= MAX_ECHO_RECORDS {
            requests.pop_front();
        }
        requests.push_back(record);
        shared.count.fetch_add(1, Ordering::SeqCst);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `{"method","path","headers":{name: value, or [values] when repeated}}`.
fn echo_body(record: &EchoRequest) -> Value {
    let mut headers = Map::new();
    for (name, value) in &record.headers {
        match headers.get_mut(name) {
            None => {
                headers.insert(name.clone(), Value::String(value.clone()));
            }
            Some(Value::Array(values)) => values.push(Value::String(value.clone())),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(value.clone())]);
            }
        }
    }
    json!({ "method": record.method, "path": record.path, "headers": headers })
}
