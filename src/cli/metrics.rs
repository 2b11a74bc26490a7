//! The program's HTTP endpoint: `GET`/`HEAD /metrics` (Prometheus text) and `/healthz`.
//!
//! Served by hyper, one task per client, so a slow or idle client never delays another's scrape.
//! Bounded: at most [`MAX_CLIENTS`] connections at once (a further one is closed at once), a
//! request head must arrive within [`HEADER_TIMEOUT`], and a connection lives at most
//! [`CLIENT_LIFETIME`] (a scraper that keeps it alive simply reconnects).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use peerwire::Network;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Clients connected at once; beyond it a new connection is closed right away.
const MAX_CLIENTS: usize = 64;
/// Time a client gets to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one client connection stays open.
const CLIENT_LIFETIME: Duration = Duration::from_secs(60);

/// Serves until `stop` is cancelled; then closes every client connection.
pub(crate) async fn serve(listener: TcpListener, net: Network<Bytes>, stop: CancellationToken) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            tracing::debug!("metrics endpoint: {MAX_CLIENTS} clients connected; closing a new one");
            continue;
        };
        let net = net.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let net = net.clone();
                async move { Ok::<_, Infallible>(route(&req, &net)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::time::timeout(CLIENT_LIFETIME, connection) => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The answer to one request. `HEAD` gets the same status and headers as `GET` (hyper leaves
/// the body out).
fn route(req: &Request<Incoming>, net: &Network<Bytes>) -> Response<Full<Bytes>> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, content_type, body) = match (req.uri().path(), readable) {
        ("/metrics", true) => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(net.metrics_text()),
        ),
        ("/healthz", true) => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"ok\n"),
        ),
        ("/metrics" | "/healthz", false) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"use GET or HEAD\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: try /metrics or /healthz\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
