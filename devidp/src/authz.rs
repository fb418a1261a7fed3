//! `okta-dev-idp authz --listen ADDR`: the benchmark's ext_authz peer. An HTTP/1.1 server that
//! answers every request `200` with an empty body at once, reading nothing but what hyper must
//! parse: the lowest cost an Envoy `ext_authz` (HTTP service) deployment can have, whatever
//! decides behind it (oauth2-proxy, OPA, Authorino). It never logs.
//!
//! One thread, one current-thread tokio runtime, one task per keep-alive connection, Nagle off:
//! `make bench` pins it to the core of the Envoy under test and counts its CPU time.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Binds `listen`, calls `ready` with the bound address, then serves until `stop` resolves.
pub fn run(
    listen: &str,
    ready: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        ready(listener.local_addr()?);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let _ = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service_fn(allow))
                                .await;
                        });
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                },
            }
        }
    })
}

async fn allow(_req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    Ok(Response::new(Empty::new()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Read, Write};

    #[test]
    fn answers_200_on_one_keep_alive_connection() {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            super::run("127.0.0.1:0", |a| addr_tx.send(a).unwrap(), async {
                let _ = stop_rx.await;
            })
        });
        let addr = addr_rx.recv().unwrap();
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        for path in ["/authz/", "/authz/x?y=1"] {
            write!(
                conn,
                "GET {path} HTTP/1.1\r\nhost: a\r\nauthorization: Basic eA==\r\ncontent-length: 0\r\n\r\n"
            )
            .unwrap();
            let mut buf = [0u8; 512];
            let n = conn.read(&mut buf).unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(answer.starts_with("http/1.1 200 ok\r\n"), "{answer}");
            assert!(answer.contains("content-length: 0\r\n"), "{answer}");
        }
        stop_tx.send(()).unwrap();
        server.join().unwrap().unwrap();
    }
}
