//! An HTTPS listener for the same router (sandbox hosts): TLS with rustls, then HTTP/1.1 with
//! upgrades (WebSocket), one task per connection so a slow handshake holds up no one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tracing::debug;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves `app` over TLS in the background; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    mut cfg: rustls::ServerConfig,
    app: Router,
) -> std::io::Result<SocketAddr> {
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "sandbox host accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(t)) => t,
                    _ => {
                        debug!(%peer, "sandbox host TLS handshake failed");
                        return;
                    }
                };
                let svc = TowerToHyperService::new(app);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await
                {
                    debug!(%peer, error = %e, "sandbox host connection");
                }
            });
        }
    });
    Ok(local)
}
