//! `bench-pacer`: the open-loop load generator of `make bench`'s latency runs.
//!
//! Request `i` has an intended send time `t0 + i / rate`, evenly spaced (at 10,000 rps: one every
//! 100 us, never a burst). One thread sends each request at its intended time on an idle
//! keep-alive connection (HTTP/1.1, one request in flight per connection) and measures its
//! latency from the intended time to the last byte of the answer, so a late send or a wait for a
//! free connection counts against the server (no coordinated omission). Between sends it sleeps
//! in `ppoll` (timer slack 1 ns) until 30 us before the next intended time, then polls the
//! connections without sleeping until that time: wake-up jitter does not delay a send.
//!
//! Prints one JSON object: latency percentiles, and how even the sending was: `send_lag_us`, how
//! late a send left against its intended time when a connection was free (the pacer's own
//! precision), `backlogged`, the requests that had to wait for a free connection (the server's
//! doing), and `send_gap_us`, the gaps between consecutive sends. Only `libc` besides the standard
//! library; Linux only.
//!
//! ```text
//! bench-pacer --addr 127.0.0.1:8080 --rate 10000 --seconds 4 [--warmup 0.5] [--connections 32]
//!             [--path /] [-H 'name: value']...
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long before an intended send time the loop stops sleeping and polls without sleeping.
const SPIN_NS: u64 = 30_000;
/// How long to wait, after the last intended send, for the answers still out: at least 2 s, and
/// the run's length (a server at a third of the rate drains its queue in that time).
fn drain_ns(seconds: f64) -> u64 {
    (seconds.max(1.0) * 2e9) as u64
}

struct Args {
    addr: SocketAddr,
    rate: f64,
    seconds: f64,
    warmup: f64,
    connections: usize,
    path: String,
    headers: Vec<String>,
}

const USAGE: &str = "usage: bench-pacer --addr HOST:PORT --rate RPS --seconds S [--warmup S] \
[--connections N] [--path /] [-H 'name: value']...";

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut rate = None;
    let mut seconds = None;
    let mut warmup = 0.5;
    let mut connections = 32;
    let mut path = "/".to_string();
    let mut headers = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                addr = Some(
                    v.parse()
                        .map_err(|_| format!("--addr: not HOST:PORT: {v}"))?,
                );
            }
            "--rate" => rate = Some(num(value()?)?),
            "--seconds" => seconds = Some(num(value()?)?),
            "--warmup" => warmup = num(value()?)?,
            "--connections" => connections = num(value()?)? as usize,
            "--path" => path = value()?,
            "-H" | "--header" => headers.push(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    let (Some(addr), Some(rate), Some(seconds)) = (addr, rate, seconds) else {
        return Err(format!("--addr, --rate and --seconds are needed\n{USAGE}"));
    };
    if !(rate > 0.0 && seconds > 0.0 && warmup >= 0.0 && connections >= 1) {
        return Err("--rate, --seconds and --connections must be positive".into());
    }
    Ok(Args {
        addr,
        rate,
        seconds,
        warmup,
        connections,
        path,
        headers,
    })
}

struct Conn {
    stream: TcpStream,
    /// Intended send time (ns after t0) of the request in flight, if any.
    in_flight: Option<u64>,
    buf: Vec<u8>,
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A complete answer at the start of `buf`: (status, its length in bytes).
fn parse_answer(buf: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {head:.80}"))?;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| format!("bad content-length: {value}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not supported".into());
        }
    }
    let total = end + 4 + length;
    Ok((buf.len() >= total).then_some((status, total)))
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn us(ns: f64) -> String {
    if ns.is_nan() {
        "null".into()
    } else {
        format!("{:.1}", ns / 1000.0)
    }
}

fn summary(values: &mut [u64], qs: &[(&str, f64)]) -> String {
    values.sort_unstable();
    let mut parts: Vec<String> = qs
        .iter()
        .map(|(name, q)| format!("\"{name}\": {}", us(percentile(values, *q))))
        .collect();
    let mean = if values.is_empty() {
        f64::NAN
    } else {
        values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64
    };
    parts.push(format!("\"mean\": {}", us(mean)));
    parts.push(format!(
        "\"max\": {}",
        us(values.last().map_or(f64::NAN, |&v| v as f64))
    ));
    format!("{{{}}}", parts.join(", "))
}

fn run(a: &Args) -> Result<String, String> {
    // Precise wake-ups from ppoll: the default timer slack is 50 us.
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and changes only this thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", a.path, a.addr);
    for h in &a.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request = request.into_bytes();

    let mut conns = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        let stream = connect(a.addr).map_err(|e| format!("connect {}: {e}", a.addr))?;
        conns.push(Conn {
            stream,
            in_flight: None,
            buf: Vec::with_capacity(4096),
        });
    }
    let mut idle: Vec<usize> = (0..a.connections).rev().collect();
    let mut backlog: VecDeque<u64> = VecDeque::new();

    let period = 1e9 / a.rate;
    let total = ((a.warmup + a.seconds) * a.rate).round() as u64;
    let warmup_ns = (a.warmup * 1e9) as u64;
    let intended = |i: u64| (i as f64 * period) as u64;

    let mut latencies: Vec<u64> = Vec::with_capacity((a.seconds * a.rate) as usize + 16);
    let mut lags: Vec<u64> = Vec::with_capacity(total as usize);
    let mut send_times: Vec<u64> = Vec::with_capacity(total as usize);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let (mut errors, mut backlogged, mut in_flight, mut next) = (0u64, 0u64, 0usize, 0u64);
    let (mut unanswered, mut answered) = (0u64, 0u64);
    let mut first_measured: Option<u64> = None;
    let mut last_done = 0u64;
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(a.connections);
    let mut busy: Vec<usize> = Vec::with_capacity(a.connections);
    let mut chunk = [0u8; 16384];

    let t0 = Instant::now() + Duration::from_millis(5);
    let ns = |t0: Instant| Instant::now().saturating_duration_since(t0).as_nanos() as u64;

    // `lags`: how late a send left when a connection was free at its intended time (the pacer's
    // own lateness); None for a request that had to wait for a free connection (the server's).
    let send =
        |c: &mut Conn, t: u64, now: u64, lags: Option<&mut Vec<u64>>, times: &mut Vec<u64>| {
            let r = c.stream.write(&request);
            if let Some(lags) = lags {
                lags.push(now.saturating_sub(t));
            }
            times.push(now);
            c.in_flight = Some(t);
            match r {
                Ok(n) if n == request.len() => Ok(()),
                Ok(n) => Err(format!("short write ({n} of {} bytes)", request.len())),
                Err(e) => Err(format!("write: {e}")),
            }
        };

    loop {
        let now = ns(t0);
        while next < total && intended(next) <= now {
            let t = intended(next);
            next += 1;
            if let Some(k) = idle.pop() {
                send(&mut conns[k], t, now, Some(&mut lags), &mut send_times)?;
                in_flight += 1;
            } else {
                backlog.push_back(t);
                backlogged += 1;
            }
        }
        if next >= total {
            if in_flight == 0 && backlog.is_empty() {
                break;
            }
            if now > intended(total) + drain_ns(a.seconds) {
                // Still unanswered: counted, and in the percentiles with the time waited so far
                // (a lower bound), so that a server that fell behind does not look faster.
                for t in conns
                    .iter()
                    .filter_map(|c| c.in_flight)
                    .chain(backlog.iter().copied())
                {
                    unanswered += 1;
                    if t >= warmup_ns {
                        latencies.push(now.saturating_sub(t));
                    }
                }
                break;
            }
        }
        // Sleep until SPIN_NS before the next send, or poll without sleeping when that is near.
        let due = if next < total {
            intended(next)
        } else {
            now + 1_000_000
        };
        let wait = due.saturating_sub(now);
        let sleep = wait.saturating_sub(SPIN_NS);
        pollfds.clear();
        busy.clear();
        for (k, c) in conns.iter().enumerate() {
            if c.in_flight.is_some() {
                pollfds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                busy.push(k);
            }
        }
        let ts = libc::timespec {
            tv_sec: (sleep / 1_000_000_000) as libc::time_t,
            tv_nsec: (sleep % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: pollfds is a valid array of pollfds.len() entries; ts outlives the call.
        let ready = unsafe {
            libc::ppoll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("ppoll: {e}"));
        }
        if ready == 0 {
            continue;
        }
        for (p, &k) in pollfds.iter().zip(busy.iter()) {
            if p.revents == 0 {
                continue;
            }
            let c = &mut conns[k];
            let closed = loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break true,
                }
            };
            let done_at = ns(t0);
            match parse_answer(&c.buf)? {
                Some((status, len)) => {
                    c.buf.drain(..len);
                    let t = c.in_flight.take().unwrap_or(0);
                    in_flight -= 1;
                    *statuses.entry(status).or_default() += 1;
                    if t >= warmup_ns {
                        latencies.push(done_at.saturating_sub(t));
                        answered += 1;
                        first_measured.get_or_insert(t);
                        last_done = done_at;
                    }
                }
                None if closed => {
                    c.in_flight = None;
                    in_flight -= 1;
                    errors += 1;
                }
                None => continue,
            }
            if closed {
                c.stream = connect(a.addr).map_err(|e| format!("reconnect: {e}"))?;
                c.buf.clear();
            }
            if let Some(t) = backlog.pop_front() {
                send(c, t, done_at, None, &mut send_times)?;
                in_flight += 1;
            } else {
                idle.push(k);
            }
        }
    }

    let measured = latencies.len() as u64;
    // Answers per second over the measured part (from its first intended send to its last answer).
    let window = last_done.saturating_sub(first_measured.unwrap_or(last_done)) as f64 / 1e9;
    let achieved = if window > 0.0 {
        answered as f64 / window
    } else {
        0.0
    };
    let mut gaps: Vec<u64> = send_times.windows(2).map(|w| w[1] - w[0]).collect();
    let status_json: Vec<String> = statuses
        .iter()
        .map(|(s, n)| format!("\"{s}\": {n}"))
        .collect();
    let qs = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];
    Ok(format!(
        "{{\"rate\": {}, \"seconds\": {}, \"warmup_s\": {}, \"connections\": {}, \"sent\": {}, \
         \"measured\": {measured}, \"achieved_rps\": {achieved:.1}, \"statuses\": {{{}}}, \
         \"errors\": {errors}, \"unanswered\": {unanswered}, \"backlogged\": {backlogged}, \"period_us\": {:.2}, \
         \"latency_us\": {}, \"send_lag_us\": {}, \"send_gap_us\": {}}}",
        a.rate,
        a.seconds,
        a.warmup,
        a.connections,
        send_times.len(),
        status_json.join(", "),
        period / 1000.0,
        summary(&mut latencies, &qs),
        summary(&mut lags, &[("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)]),
        summary(&mut gaps, &[("p1", 1.0), ("p50", 50.0), ("p99", 99.0)]),
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-pacer: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-pacer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nserver: envoy\r\n\r\nok\n";
        assert_eq!(parse_answer(a), Ok(Some((200, a.len()))));
        assert_eq!(parse_answer(&a[..a.len() - 1]), Ok(None));
        assert_eq!(parse_answer(b"HTTP/1.1 401 Unauthorized\r\n"), Ok(None));
        let b = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_answer(b), Ok(Some((204, b.len()))));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
