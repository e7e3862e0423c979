//! The API's plain-HTTP listener: HTTP/1.1 with upgrades, a cap on concurrent connections, a
//! deadline for a request's head (a client that trickles headers cannot hold a connection),
//! and a graceful stop: at SIGTERM it stops accepting and lets requests in flight finish (up
//! to a bound). Sandboxes keep running either way.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's head.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish after the stop signal.
    pub drain: Duration,
}

/// Serves `app` on `listener` until `stop` resolves, then drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    // Tells every connection to finish its request in flight and close.
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = http
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        let mut stop_seen = stop_seen.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop_seen.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection");
            }
            drop(permit);
        });
    }
    drop(listener);
    warn!("shutting down; sandboxes keep running and are re-adopted at next start");
    let _ = stopping.send(true);
    // Every connection holds a slot until it is done: all slots back = nothing in flight.
    if tokio::time::timeout(limits.drain, slots.acquire_many(max as u32))
        .await
        .is_err()
    {
        warn!(
            "requests still in flight after {} s; stopping anyway",
            limits.drain.as_secs()
        );
    }
}
