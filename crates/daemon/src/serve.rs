//! `sandboxd serve`: opens the store, reconciles sandboxes left from a previous run, builds
//! missing templates in the background and serves the API.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sandboxd_api::AppState;
use sandboxd_engine::{Engine, EngineConfig, Templates};
use sandboxd_meta::{MetaStore, SqliteStore};
use sandboxd_metrics::{Hub, SampleStore};
use sandboxd_runtime::{Gvisor, GvisorConfig};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SANDBOXD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where state lives: SQLite, sandboxes, runsc state, admin.key.
    #[arg(long, env = "SANDBOXD_DATA_DIR", default_value = "/var/lib/sandboxd")]
    pub data_dir: PathBuf,
    /// Template root filesystems (default: `<data-dir>/templates`).
    #[arg(long, env = "SANDBOXD_TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,
    /// URL clients reach this server at (default: `http://<listen>`).
    #[arg(long, env = "SANDBOXD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Serve preview URLs as `<token>.<domain>` (a wildcard DNS name pointing here, or e.g.
    /// `preview.localhost`, which browsers resolve to loopback) instead of `/p/<token>/`.
    #[arg(long, env = "SANDBOXD_PREVIEW_DOMAIN")]
    pub preview_domain: Option<String>,
    /// Serve sandbox hosts under this domain (the Leap0 SDK's `sandbox_domain`):
    /// `<sandbox-id>.<domain>` is the sandbox's code interpreter, `<sandbox-id>-<port>.<domain>`
    /// its ports. A wildcard DNS name pointing here (`*.<domain>`); may carry a port
    /// (`sbx.localhost:8443`), which is what clients put after the host.
    #[arg(long, env = "SANDBOXD_SANDBOX_DOMAIN")]
    pub sandbox_domain: Option<String>,
    /// HTTPS listener for sandbox hosts (and the whole API); needs --sandbox-domain.
    #[arg(long, env = "SANDBOXD_SANDBOX_LISTEN")]
    pub sandbox_listen: Option<SocketAddr>,
    /// PEM certificate chain (a wildcard for `*.<domain>`) for --sandbox-listen. Without it the
    /// node CA (`<data-dir>/egress-ca.pem`) issues one, for local use and tests.
    #[arg(long, env = "SANDBOXD_SANDBOX_TLS_CERT", requires = "sandbox_tls_key")]
    pub sandbox_tls_cert: Option<PathBuf>,
    #[arg(long, env = "SANDBOXD_SANDBOX_TLS_KEY", requires = "sandbox_tls_cert")]
    pub sandbox_tls_key: Option<PathBuf>,
    /// SSH gateway listener (Leap0 `ssh/access` logins: user = credential id); also enables
    /// the NeevCloud `/v1/ssh` tunnel. Off unless given.
    #[arg(long, env = "SANDBOXD_SSH_LISTEN")]
    pub ssh_listen: Option<SocketAddr>,
    /// Host name put in `ssh_command` (default: the --ssh-listen address).
    #[arg(long, env = "SANDBOXD_SSH_HOST")]
    pub ssh_host: Option<String>,
    /// Connections the API listener serves at once (more wait in the backlog).
    #[arg(long, env = "SANDBOXD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's head before its connection is closed.
    #[arg(long, env = "SANDBOXD_HEADER_READ_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,
    /// The region this node serves.
    #[arg(long, env = "SANDBOXD_REGION", default_value = "local")]
    pub region: String,
    /// Most sandboxes one org may hold.
    #[arg(long, env = "SANDBOXD_MAX_SANDBOXES_PER_ORG", default_value_t = 100)]
    pub max_sandboxes_per_org: u64,
    /// Memory (MiB) the node may commit to sandboxes (default: 90% of physical memory).
    #[arg(long, env = "SANDBOXD_NODE_MEMORY_MIB")]
    pub node_memory_mib: Option<u64>,
    /// CPU (thousandths of a core) the node may commit to sandboxes (default: 8 × this host's
    /// CPUs, i.e. 8:1 overcommit of the measured core count).
    #[arg(long, env = "SANDBOXD_NODE_CPU_MILLIS")]
    pub node_cpu_millis: Option<u64>,
    /// How often run-time limits (Leap0 `timeout`) are enforced, in milliseconds.
    #[arg(long, env = "SANDBOXD_LIFETIME_CHECK_MS", default_value_t = 1000)]
    pub lifetime_check_ms: u64,
    /// The static agent binary (default: `sandboxd-agent` beside this executable).
    #[arg(long, env = "SANDBOXD_AGENT")]
    pub agent_binary: Option<PathBuf>,
    #[arg(long, env = "SANDBOXD_RUNSC", default_value = "runsc")]
    pub runsc: PathBuf,
    /// Second octet of the sandbox subnet 10.X.0.0/16; daemons sharing a host need distinct ones.
    #[arg(long, env = "SANDBOXD_SUBNET_OCTET", default_value_t = 200)]
    pub subnet_octet: u8,
    /// Delete stale sandbox veths (`s-*`) of other data dirs found in this daemon's subnet
    /// instead of refusing to start (for hosts where earlier daemons died with their sandboxes).
    #[arg(long, env = "SANDBOXD_RECLAIM_SUBNET")]
    pub reclaim_subnet: bool,
    /// Compression of memory checkpoints (snapshots with memory, pause): `none` is several
    /// times faster to write and to restore; `flate-best-speed` makes smaller images.
    #[arg(long, env = "SANDBOXD_CHECKPOINT_COMPRESSION", default_value = "none",
          value_parser = ["none", "flate-best-speed"])]
    pub checkpoint_compression: String,
    /// How often expired snapshots are deleted, in seconds.
    #[arg(long, env = "SANDBOXD_SNAPSHOT_REAPER_SECS", default_value_t = 3600)]
    pub snapshot_reaper_secs: u64,
    /// How often the snapshot scheduler checks `snapshot_mode: automatic` sandboxes, in seconds.
    #[arg(long, env = "SANDBOXD_SNAPSHOT_SCHEDULE_SECS", default_value_t = 10)]
    pub snapshot_schedule_secs: u64,
    /// Destinations any sandbox of this node may ever reach, comma-separated IPv4 CIDRs or
    /// `public` (the public internet: no private, shared, benchmarking, documentation or
    /// reserved range); every egress policy (allow-all included) is clamped to them. Pass
    /// `0.0.0.0/0` to let policies admit the networks around the host too.
    #[arg(long, env = "SANDBOXD_EGRESS_CEILING", default_value = "public", value_parser = parse_ceiling)]
    pub egress_ceiling: Ceiling,
    /// Upstream DNS resolver (`ip` or `ip:port`) for the node's egress resolver. Given, the
    /// node runs the resolver and the SNI/Host proxy that enforce domain rules; absent,
    /// domain rules are refused.
    #[arg(long, env = "SANDBOXD_EGRESS_DNS_UPSTREAM")]
    pub egress_dns_upstream: Option<String>,
    /// Port of the egress resolver on the host (0 = any free port).
    #[arg(long, env = "SANDBOXD_EGRESS_DNS_PORT", default_value_t = 0)]
    pub egress_dns_port: u16,
    /// Port of the egress proxy on the host (0 = any free port).
    #[arg(long, env = "SANDBOXD_EGRESS_PROXY_PORT", default_value_t = 0)]
    pub egress_proxy_port: u16,
    /// PEM bundle the egress proxy verifies upstream servers against when it applies
    /// transforms.
    #[arg(
        long,
        env = "SANDBOXD_EGRESS_UPSTREAM_CA",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub egress_upstream_ca: PathBuf,
    /// Do not build missing templates at start.
    #[arg(long)]
    pub no_template_build: bool,
    /// How often every sandbox's health metrics are sampled, in seconds.
    #[arg(long, env = "SANDBOXD_METRICS_INTERVAL_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metrics_interval_secs: u64,
    /// How long raw metric samples are kept, in hours.
    #[arg(long, env = "SANDBOXD_METRICS_RETENTION_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub metrics_retention_hours: u64,
    /// Serve the platform's Prometheus metrics at `http://ADDR/metrics` (off by default).
    #[arg(long, env = "SANDBOXD_PROMETHEUS_LISTEN")]
    pub prometheus_listen: Option<SocketAddr>,
    /// Allow --prometheus-listen on a non-loopback address (the endpoint has no auth).
    #[arg(long)]
    pub prometheus_public: bool,
    /// Serve the web dashboard at `http://ADDR/ui/` (off by default). It gets a listener of
    /// its own, so that path-form preview URLs (`/p/<token>/`, sandbox-controlled pages)
    /// never share its origin.
    #[arg(long, env = "SANDBOXD_DASHBOARD_LISTEN")]
    pub dashboard_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Ceiling(pub Vec<sandboxd_egress::Net4>);

fn parse_ceiling(s: &str) -> Result<Ceiling, String> {
    let mut out = Vec::new();
    for c in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if c == "public" {
            out.extend(sandboxd_egress::policy::public_internet());
            continue;
        }
        let (a, l) = c.split_once('/').unwrap_or((c, "32"));
        let ip: std::net::Ipv4Addr = a.parse().map_err(|_| format!("{c}: not an IPv4 CIDR"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{c}: bad prefix length"))?;
        out.push(sandboxd_egress::Net4::new(ip, len));
    }
    Ok(Ceiling(out))
}

fn physical_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(8 * 1024)
}

fn default_agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("sandboxd-agent");
    anyhow::ensure!(
        p.is_file(),
        "no agent binary at {} (pass --agent-binary)",
        p.display()
    );
    Ok(p)
}

/// Makes sure an admin key exists: `SANDBOXD_ADMIN_KEY` if set, else on first start a new key
/// written to `<data-dir>/admin.key` (mode 0600). The key is never logged.
fn ensure_admin_key(meta: &dyn MetaStore, data_dir: &Path) -> anyhow::Result<()> {
    if let Ok(k) = std::env::var("SANDBOXD_ADMIN_KEY") {
        let k = SecretString::from(k);
        sandboxd_engine::keys::import(meta, &k, "default", Some("default"))
            .map_err(|e| anyhow::anyhow!("SANDBOXD_ADMIN_KEY: {e}"))?;
        return Ok(());
    }
    if meta.count_keys()? > 0 {
        return Ok(());
    }
    let key = sandboxd_engine::keys::create(meta, "default", Some("default"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = data_dir.join("admin.key");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "{}", key.expose_secret())?;
    info!(path = %path.display(), "wrote the admin key for org default, project default");
    Ok(())
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDBOXD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()?;
    rt.block_on(serve(a))
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    if let Some(addr) = a.prometheus_listen {
        crate::prometheus::check_listen(addr, a.prometheus_public)?;
    }
    sandboxd_core::NetSlot::set_subnet_octet(a.subnet_octet);
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("create {}", a.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&a.data_dir)?;
    let meta: Arc<dyn MetaStore> =
        Arc::new(SqliteStore::open(&data_dir.join("meta.db")).context("open metadata store")?);
    ensure_admin_key(meta.as_ref(), &data_dir)?;

    let agent = match a.agent_binary {
        Some(p) => p,
        None => default_agent()?,
    };
    sandboxd_runtime::netns::install_host_firewall().context("install host firewall")?;
    sandboxd_runtime::reaper::start().context("become the subreaper of sandbox processes")?;
    let secrets = Arc::new(
        sandboxd_egress::secrets::SecretStore::open(&data_dir)
            .context("open the egress secret store")?,
    );
    let egress_node = match &a.egress_dns_upstream {
        Some(u) => {
            let up: SocketAddr = u
                .parse()
                .or_else(|_| {
                    u.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .with_context(|| format!("--egress-dns-upstream {u}"))?;
            let tls = match (
                sandboxd_egress::tls::Ca::load_or_create(&data_dir),
                sandboxd_egress::tls::client_config(&a.egress_upstream_ca),
            ) {
                (Ok(ca), Ok(client)) => {
                    let store = secrets.clone();
                    Some(sandboxd_egress::node::NodeTls {
                        ca: Arc::new(ca),
                        client,
                        secrets: Arc::new(move |id: &str| store.open_secret(id)),
                    })
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "egress transforms are off: no CA or upstream trust");
                    None
                }
            };
            Some(
                sandboxd_egress::Node::start(
                    up,
                    a.egress_ceiling.0.clone(),
                    a.egress_dns_port,
                    a.egress_proxy_port,
                    tls,
                )
                .await
                .context("start the egress resolver and proxy")?,
            )
        }
        None => None,
    };
    let runtime = Arc::new(Gvisor::new(GvisorConfig {
        data_dir: data_dir.clone(),
        agent_binary: std::fs::canonicalize(agent)?,
        runsc: a.runsc,
        platform: "systrap".into(),
        checkpoint_compression: a.checkpoint_compression.clone(),
        egress_ceiling: a.egress_ceiling.0.clone(),
        egress_node,
    })?);
    let templates_dir = a
        .templates_dir
        .unwrap_or_else(|| data_dir.join("templates"));
    std::fs::create_dir_all(&templates_dir)?;
    let cfg = EngineConfig {
        region: a.region,
        max_sandboxes_per_org: a.max_sandboxes_per_org,
        node_memory_mib: a
            .node_memory_mib
            .unwrap_or_else(|| physical_memory_mib() * 9 / 10),
        node_cpu_millis: a.node_cpu_millis.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            cpus * 1000 * 8
        }),
        ..EngineConfig::default()
    };
    let engine = Arc::new(
        Engine::new(
            cfg,
            meta,
            runtime,
            Templates::new(std::fs::canonicalize(&templates_dir)?),
        )
        .with_egress_secrets(secrets)
        .with_snapshot_store(Arc::new(
            sandboxd_snapshot::LocalStore::open(data_dir.join("store"))
                .context("open the snapshot store")?
                // The archiver is the store's only writer and runs gc itself, between two
                // archives: no put is ever in flight during a gc, so no grace is needed.
                .with_gc_grace(Duration::ZERO),
        )),
    );
    engine
        .reconcile()
        .await
        .map_err(|e| anyhow::anyhow!("reconcile: {e} ({e:?})"))?;
    // After reconciliation: the sandboxes left in the store are the only rightful holders of
    // addresses in this daemon's subnet.
    let own: Vec<String> = engine
        .meta()
        .all_sandboxes()?
        .iter()
        .map(|s| s.id.to_string())
        .collect();
    sandboxd_runtime::netns::claim_subnet(a.subnet_octet, &own, a.reclaim_subnet)?;
    engine.reapply_egress().await;
    tokio::spawn(engine.clone().watch(Duration::from_secs(2)));
    {
        // The shared nftables table: re-installed when `nft monitor` reports it (or a base
        // object) gone, and checked every 30 s in case an event was missed.
        let e = engine.clone();
        let lost = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(sandboxd_egress::nft::watch_base(lost.clone()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = lost.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                e.reconcile_egress().await;
            }
        });
        let e = engine.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                // Denied packets, logged at most once per 10 s per sandbox.
                e.log_egress_denials(&mut seen).await;
            }
        });
    }
    tokio::spawn(
        engine
            .clone()
            .watch_lifetimes(Duration::from_millis(a.lifetime_check_ms.max(100))),
    );
    tokio::spawn(engine.clone().archive_snapshots(Duration::from_secs(60)));
    tokio::spawn(
        engine
            .clone()
            .reap_snapshots(Duration::from_secs(a.snapshot_reaper_secs.max(1))),
    );
    tokio::spawn(
        engine
            .clone()
            .schedule_snapshots(Duration::from_secs(a.snapshot_schedule_secs.max(1))),
    );
    let hub = Arc::new(Hub {
        store: SampleStore::open(&data_dir.join("metrics.db")).context("open metrics store")?,
        registry: Default::default(),
        interval: Duration::from_secs(a.metrics_interval_secs),
        retention: Duration::from_secs(a.metrics_retention_hours * 3600),
    });
    crate::sampler::Sampler::new(engine.clone(), hub.clone())
        .spawn()
        .context("start the metrics sampler")?;
    if let Some(addr) = a.prometheus_listen {
        let local = crate::prometheus::serve(addr, engine.clone(), hub.clone(), data_dir.clone())
            .await
            .with_context(|| format!("listen on {addr} (--prometheus-listen)"))?;
        info!(%local, "prometheus metrics at /metrics");
        println!("prometheus on {local}");
    }
    if !a.no_template_build {
        let e = engine.clone();
        tokio::spawn(async move { e.templates.build_missing().await });
    }

    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listen on {}", a.listen))?;
    let local = listener.local_addr()?;
    let public_url = a.public_url.unwrap_or_else(|| format!("http://{local}"));
    let sandbox_domain = a
        .sandbox_domain
        .as_deref()
        .map(sandboxd_api::sandbox_host::domain_host)
        .filter(|d| !d.is_empty());
    let ssh = match a.ssh_listen {
        None => None,
        Some(addr) => {
            let key =
                sandboxd_sshgw::load_or_create_host_key(&data_dir.join("ssh_host_ed25519_key"))
                    .context("SSH host key")?;
            let secret = load_or_create_secret(&data_dir.join("ssh-host-secret"))?;
            let backend = Arc::new(sandboxd_api::ssh::SshBackend::new(engine.clone()));
            let gateway = Arc::new(sandboxd_sshgw::Gateway::new(backend, key));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr} (--ssh-listen)"))?;
            let local = listener.local_addr()?;
            tokio::spawn(gateway.clone().serve_tcp(listener));
            info!(%local, "SSH gateway");
            println!("ssh on {local}");
            Some(Arc::new(sandboxd_api::ssh::SshNode {
                gateway,
                secret,
                host: a.ssh_host.clone().unwrap_or_else(|| local.ip().to_string()),
                port: local.port(),
            }))
        }
    };
    let dashboard_preview_domain = a.preview_domain.clone();
    let app = sandboxd_api::router(AppState {
        ssh,
        engine: engine.clone(),
        public_url: public_url.clone(),
        preview_domain: a
            .preview_domain
            .map(|d| d.trim_matches('.').to_ascii_lowercase()),
        sandbox_domain: sandbox_domain.clone(),
    });
    if let Some(addr) = a.dashboard_listen {
        let local = serve_dashboard(
            addr,
            engine.clone(),
            hub.clone(),
            &public_url,
            dashboard_preview_domain.as_deref(),
        )
        .await
        .with_context(|| format!("listen on {addr} (--dashboard-listen)"))?;
        info!(%local, "dashboard at /ui/");
        println!("dashboard on http://{local}/ui/");
    }
    let app = sandboxd_api::with_metrics(app, hub);
    if let Some(addr) = a.sandbox_listen {
        let domain = sandbox_domain
            .clone()
            .context("--sandbox-listen needs --sandbox-domain")?;
        let cfg = match (&a.sandbox_tls_cert, &a.sandbox_tls_key) {
            (Some(c), Some(k)) => sandboxd_egress::tls::server_config_from_pem(c, k),
            _ => sandboxd_egress::tls::Ca::load_or_create(&data_dir)
                .and_then(|ca| ca.issue(&[format!("*.{domain}"), domain.clone()])),
        }
        .map_err(|e| anyhow::anyhow!("sandbox host TLS: {e}"))?;
        let local = crate::tls_serve::spawn(addr, cfg, app.clone())
            .await
            .with_context(|| format!("listen on {addr} (--sandbox-listen)"))?;
        info!(%local, %domain, "sandbox hosts over HTTPS");
        println!("sandbox hosts on {local}");
    }
    info!(%local, %public_url, "sandboxd listening");
    // Machine-readable line for scripts and tests that start us on port 0.
    println!("listening on {local}");
    // Small response frames (an exec's exit line) must not wait for the client's delayed ACK:
    // the server sets TCP_NODELAY on every connection.
    crate::http_serve::serve(
        listener,
        app,
        crate::http_serve::Limits {
            max_connections: a.max_connections,
            header_read_timeout: Duration::from_secs(a.header_read_timeout_secs),
            drain: Duration::from_secs(30),
        },
        async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        },
    )
    .await;
    engine.close();
    Ok(())
}

/// Starts the dashboard on a listener of its own; returns the address it got.
async fn serve_dashboard(
    addr: SocketAddr,
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    public_url: &str,
    preview_domain: Option<&str>,
) -> anyhow::Result<SocketAddr> {
    let cfg = sandboxd_dashboard::Config {
        api_url: public_url.to_string(),
        preview_domain: preview_domain.map(|d| d.trim_matches('.').to_ascii_lowercase()),
        ..Default::default()
    };
    let app =
        sandboxd_dashboard::standalone(sandboxd_dashboard::Dashboard::new(engine, Some(hub), cfg));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let svc = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, svc).await {
            warn!(error = %e, "dashboard listener ended");
        }
    });
    Ok(local)
}

/// 32 random bytes kept in `path` (0600), created on first use: the seed of per-sandbox SSH
/// host keys.
fn load_or_create_secret(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::File::open(path) {
        let mut b = [0u8; 32];
        f.read_exact(&mut b)
            .with_context(|| format!("read {}", path.display()))?;
        return Ok(b);
    }
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(&b)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(b)
}
