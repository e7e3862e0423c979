//! The platform's Prometheus endpoint (`GET /metrics` on `--prometheus-listen`): request
//! counts and latencies (recorded by the API's middleware), snapshot operations, sampler
//! cost, and gauges read at scrape time: sandboxes by phase and bytes held by each store.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sandboxd_engine::Engine;
use sandboxd_metrics::catalogue::{phase_name, PHASES};
use sandboxd_metrics::Hub;

#[derive(Clone)]
struct Scrape {
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    data_dir: PathBuf,
}

/// Refuses a non-loopback address unless `public` (the endpoint has no authentication).
pub fn check_listen(addr: SocketAddr, public: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback() || public,
        "--prometheus-listen {addr} is not a loopback address; the Prometheus endpoint has no \
         authentication, so pass --prometheus-public to expose it anyway"
    );
    Ok(())
}

/// Bytes a file or tree occupies on disk (allocated blocks).
fn allocated(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => sandboxd_runtime::fsutil::dir_usage(p).allocated,
        Ok(m) => m.blocks() * 512,
        Err(_) => 0,
    }
}

async fn metrics(State(s): State<Scrape>) -> impl IntoResponse {
    let body =
        tokio::task::spawn_blocking(move || {
            let r = &s.hub.registry;
            if let Ok(all) = s.engine.observed_sandboxes() {
                let counts: Vec<(&str, f64)> = PHASES
                    .iter()
                    .map(|(p, _)| {
                        let n = all.iter().filter(|o| phase_name(o.state) == *p).count();
                        (*p, n as f64)
                    })
                    .collect();
                let labels: Vec<[(&str, &str); 1]> =
                    counts.iter().map(|(p, _)| [("phase", *p)]).collect();
                let values: Vec<(&[(&str, &str)], f64)> = labels
                    .iter()
                    .zip(&counts)
                    .map(|(l, (_, n))| (&l[..], *n))
                    .collect();
                r.set_gauges(
                    "sandboxd_sandboxes",
                    "Sandboxes on this node by NeevCloud phase.",
                    &values,
                );
            }
            let d = &s.data_dir;
            let meta = ["meta.db", "meta.db-wal", "meta.db-shm"]
                .iter()
                .map(|f| allocated(&d.join(f)))
                .sum::<u64>();
            let samples = s.hub.store.bytes().unwrap_or(0);
            r.set_gauges(
            "sandboxd_store_bytes",
            "Bytes held by each store: metadata (SQLite), metrics samples (SQLite), the sandbox \
             volume (layers and snapshot layers, allocated), memory images not yet archived \
             (and pause images), the content-addressed snapshot store (chunks and manifests).",
            &[
                (&[("store", "meta")], meta as f64),
                (&[("store", "metrics")], samples as f64),
                (&[("store", "volume")], allocated(&d.join("volume.img")) as f64),
                (&[("store", "images")], allocated(&d.join("images")) as f64),
                (&[("store", "snapshots")], allocated(&d.join("store")) as f64),
            ],
        );
            r.render()
        })
        .await
        .unwrap_or_default();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

/// Serves `/metrics` on `addr` until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    data_dir: PathBuf,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Scrape {
            engine,
            hub,
            data_dir,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "prometheus endpoint stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_need_the_flag() {
        assert!(check_listen("127.0.0.1:9090".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:9090".parse().unwrap(), false).is_ok());
        assert!(check_listen("0.0.0.0:9090".parse().unwrap(), false).is_err());
        assert!(check_listen("10.1.2.3:9090".parse().unwrap(), false).is_err());
        assert!(check_listen("0.0.0.0:9090".parse().unwrap(), true).is_ok());
    }
}
