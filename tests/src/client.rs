//! A deliberately small HTTP/1.1 client over a raw `TcpStream`.
//!
//! The tests must send what well-behaved clients never do: the same header twice, names in odd
//! case, tabs and other bytes in values. A real client library normalises those away, so this
//! writes the request bytes itself, one request per connection (`connection: close`), and parses
//! the answer (content-length, chunked, or read-to-close).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a request may take before the client gives up. Longer than any wait a test provokes
/// (IdP delays, discovery retries), short enough that a request left paused fails the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// An HTTP answer as received: status, every header line in order (names lowercased), body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// All `WWW-Authenticate` challenges, whether sent as several header lines or one.
    pub fn www_authenticate(&self) -> Vec<&str> {
        self.header_all("www-authenticate")
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {}, body {:?}",
                self.status, self.body
            )
        })
    }

    /// The `message` of a local reply's JSON body; panics when there is none.
    pub fn message(&self) -> String {
        match self.json().get("message") {
            Some(serde_json::Value::String(m)) => m.clone(),
            other => panic!(
                "no string `message` in the body (got {other:?}): status {}, body {:?}",
                self.status, self.body
            ),
        }
    }
}

/// Sends one request and reads the whole answer.
///
/// `headers` are written exactly as given, in order, duplicates included. A `host` header is added
/// unless one is present; `connection: close` is always added (one request per connection).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Response> {
    let mut req = Vec::new();
    write!(req, "{method} {path} HTTP/1.1\r\n")?;
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.extend_from_slice(b"host: localhost\r\n");
    }
    for (name, value) in headers {
        write!(req, "{name}: {value}\r\n")?;
    }
    req.extend_from_slice(b"connection: close\r\n\r\n");
    send_raw(addr, &req, timeout)
}

/// The bytes of one request: `headers` exactly as given, a `host` header unless one is present,
/// then `connection: close` unless `keep_alive`.
pub fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    keep_alive: bool,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.extend_from_slice(b"host: localhost\r\n");
    }
    for (name, value) in headers {
        req.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !keep_alive {
        req.extend_from_slice(b"connection: close\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Sends `first` (a keep-alive request), reads its answer, then sends `second` on the same
/// connection and reads that answer: `second` is not the first request on its connection.
pub fn send_after(
    addr: SocketAddr,
    first: &[u8],
    second: &[u8],
    timeout: Duration,
) -> io::Result<(Response, Response)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut answers = Vec::with_capacity(2);
    for request in [first, second] {
        stream.write_all(request)?;
        stream.flush()?;
        let mut raw = Vec::new();
        read_answer(&mut stream, &mut raw)?;
        answers.push(parse(&raw)?);
    }
    let second = answers.pop();
    match (answers.pop(), second) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(io::Error::other("two answers expected")),
    }
}

/// Sends the given bytes as they are (a complete request, ideally with `connection: close`) and
/// parses the answer.
pub fn send_raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    read_answer(&mut stream, &mut raw)?;
    parse(&raw)
}

/// Reads until the answer is complete: the peer closed, or the headers and body announced by
/// content-length / chunked encoding are all in.
fn read_answer(stream: &mut TcpStream, raw: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if answer_complete(raw) {
            return Ok(());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !raw.is_empty() => {
                return Ok(())
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (after {} bytes of answer: {:?})",
                        raw.len(),
                        String::from_utf8_lossy(raw)
                    ),
                ))
            }
        }
    }
}

fn answer_complete(raw: &[u8]) -> bool {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(split_header)
        .collect();
    if header_is(&headers, "transfer-encoding", "chunked") {
        return decode_chunked(body).is_some();
    }
    match content_length(&headers) {
        Some(len) => body.len() >= len,
        None => {
            // No framing: only the close of the connection ends the body, except for answers
            // that never have one.
            let status = status_code(&head).unwrap_or(0);
            status == 204 || status == 304 || (100..200).contains(&status)
        }
    }
}

fn parse(raw: &[u8]) -> io::Result<Response> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("answer without a complete head"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = status_code(&head).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(split_header)
        .collect();
    let rest = &raw[head_end + 4..];
    let body = if header_is(&headers, "transfer-encoding", "chunked") {
        decode_chunked(rest).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(len) = content_length(&headers) {
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn status_code(head: &str) -> Option<u16> {
    let line = head.split("\r\n").next()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn split_header(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
}

fn header_is(headers: &[(String, String)], name: &str, value: &str) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == name && v.to_ascii_lowercase().contains(value))
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
}

/// The decoded body, or None while it is incomplete or malformed.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line.
            return find(data, b"\r\n").map(|_| out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A keep-alive HTTP/1.1 connection to Envoy for floods (the harness client opens one
/// connection per request). Reconnects when Envoy closed the connection.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None }
    }

    /// `GET path` with this `Authorization`; the answer's status.
    pub fn get(&mut self, path: &str, authorization: &str) -> io::Result<u16> {
        let reused = self.conn.is_some();
        match self.try_get(path, authorization) {
            Ok(status) => Ok(status),
            // An idle connection Envoy closed just as we reused it: once more on a new one.
            Err(_) if reused => {
                self.conn = None;
                self.try_get(path, authorization)
            }
            Err(e) => Err(e),
        }
    }

    fn try_get(&mut self, path: &str, authorization: &str) -> io::Result<u16> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, DEFAULT_TIMEOUT)?;
            stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
            stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let result = self.exchange(path, authorization);
        if !matches!(result, Ok((_, true))) {
            self.conn = None;
        }
        result.map(|(status, _)| status)
    }

    /// One request and its answer; the status, and whether the connection stays usable.
    fn exchange(&mut self, path: &str, authorization: &str) -> io::Result<(u16, bool)> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| bad("no connection".into()))?;
        write!(
            conn.get_mut(),
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: {authorization}\r\n\r\n"
        )?;
        conn.get_mut().flush()?;
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before an answer",
            ));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut keep = true;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                return Err(bad("connection closed inside the head".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                let (name, value) = (name.trim(), value.trim());
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<u64>().ok();
                } else if name.eq_ignore_ascii_case("connection")
                    && value.eq_ignore_ascii_case("close")
                {
                    keep = false;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad(format!("unexpected {l:?}")));
                }
            }
        }
        let length = length.ok_or_else(|| bad("answer without content-length".into()))?;
        io::copy(&mut conn.by_ref().take(length), &mut io::sink())?;
        Ok((status, keep))
    }
}

/// Sends `authorization(thread, i)` requests (`GET /`) on `threads` keep-alive connections, as
/// fast as the server answers, while `more(i)` says so; the count of each status, 0 for a
/// request that got no answer (the connection closed).
pub fn flood(
    addr: SocketAddr,
    threads: usize,
    more: impl Fn(usize) -> bool + Sync,
    authorization: impl Fn(usize, usize) -> String + Sync,
) -> std::collections::BTreeMap<u16, u64> {
    let (more, authorization) = (&more, &authorization);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut conn = KeepAlive::new(addr);
                    let mut statuses = std::collections::BTreeMap::new();
                    let mut i = 0;
                    while more(i) {
                        let status = conn.get("/", &authorization(t, i)).unwrap_or(0);
                        *statuses.entry(status).or_insert(0u64) += 1;
                        i += 1;
                    }
                    statuses
                })
            })
            .collect();
        let mut total = std::collections::BTreeMap::new();
        for h in handles {
            // A thread that panicked counted nothing: the caller's assertions see the shortfall.
            for (status, n) in h.join().unwrap_or_default() {
                *total.entry(status).or_insert(0) += n;
            }
        }
        total
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_answers() {
        let r = parse(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"api\"\r\nwww-authenticate: Bearer realm=\"api\"\r\ncontent-length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.www_authenticate(),
            vec!["Basic realm=\"api\"", "Bearer realm=\"api\""]
        );
        assert_eq!(r.body, "hello");
    }

    #[test]
    fn parses_chunked_answers() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert!(answer_complete(raw));
        assert!(!answer_complete(&raw[..raw.len() - 2]));
        assert_eq!(parse(raw).unwrap().body, "abcde");
    }
}
