//! The HTTP/1.1 serving loop shared by the IdP and the echo server: one thread, one current-thread
//! tokio runtime, one task per connection. A handler can ask for its connection to be reset
//! (`Err(ResetConnection)`): hyper then drops the connection without writing an answer, and the
//! socket is closed with `SO_LINGER` 0, so the peer sees a TCP RST.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What every handler answers with.
pub(crate) type Resp = Response<Full<Bytes>>;

/// Largest request body read; a longer one is cut off (and then answered as a bad request).
pub(crate) const MAX_BODY: usize = 1 << 20;

/// A handler's way to say: drop this TCP connection without any HTTP answer.
#[derive(Debug)]
pub(crate) struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault injection")
    }
}

impl std::error::Error for ResetConnection {}

/// Reads a whole request body (at most [`MAX_BODY`] bytes). `None` when the body could not be
/// read (peer gone, too long).
pub(crate) async fn read_body(body: Incoming) -> Option<Bytes> {
    read_body_up_to(body, MAX_BODY).await
}

/// [`read_body`] with another limit.
pub(crate) async fn read_body_up_to(body: Incoming, limit: usize) -> Option<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Some(collected.to_bytes()),
        Err(_) => None,
    }
}

/// A running server: its address, and what it takes to stop it. Dropping it stops the server
/// (the accept loop ends and every open connection is closed).
pub(crate) struct ServerThread {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `listen` (`"127.0.0.1:0"` picks a free port), so the caller learns bind errors and the
/// real address before the server starts.
pub(crate) fn bind(listen: &str) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `listener` on a new thread with `handler`.
pub(crate) fn spawn<H, Fut>(
    listener: std::net::TcpListener,
    name: &str,
    handler: H,
) -> io::Result<ServerThread>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ResetConnection>> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(listener)?
    };
    let (tx, rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            runtime.block_on(accept_loop(listener, handler, rx));
            // Dropping the runtime here cancels every connection task still running.
            drop(runtime);
        })?;
    Ok(ServerThread {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

async fn accept_loop<H, Fut>(listener: TcpListener, handler: H, mut shutdown: oneshot::Receiver<()>)
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ResetConnection>> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, handler.clone()));
                }
                // Out of file descriptors and the like: back off a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

async fn serve_connection<H, Fut>(stream: TcpStream, handler: H)
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ResetConnection>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream {
        inner: stream,
        reset: reset.clone(),
    });
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let reset = reset.clone();
        async move {
            match handler(req).await {
                Ok(resp) => Ok::<_, ResetConnection>(resp),
                Err(e) => {
                    reset.store(true, Ordering::SeqCst);
                    Err(e)
                }
            }
        }
    });
    // A service error makes hyper abandon the connection without writing anything; the
    // stream is then dropped, with SO_LINGER 0 (see ResettableStream).
    // No header read timeout: hyper would also apply it to idle keep-alive connections and close
    // them after 30 s, racing with a proxy (Envoy) that reuses the connection at that moment.
    // A header line that is not HTTP (a name with bytes outside a token, which nginx forwards
    // with `ignore_invalid_headers off`) is skipped instead of failing the request with 400, so
    // that the echo records the request, as a lenient upstream would take it.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .ignore_invalid_headers(true)
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

/// A TCP stream that closes with a RST instead of a FIN when its flag is set.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reset.load(Ordering::SeqCst) {
            // Never let anything out once a reset was asked for.
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // No orderly FIN either: the drop sends the RST.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
