//! `sandboxd`: the daemon (`serve`), key management (`keys create`) and the benchmark (`bench`).

mod bench;
mod http_serve;
mod prometheus;
mod sampler;
mod serve;
mod tls_serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sandboxd",
    version,
    about = "Self-hosted sandboxes for AI agents, isolated by gVisor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server and the sandboxes it manages.
    Serve(Box<serve::ServeArgs>),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Measure sandbox latency and footprint against raw runsc.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key bound to an org (and optionally one project); prints it once.
    Create(KeyArgs),
}

#[derive(Args)]
struct KeyArgs {
    #[arg(long)]
    org: String,
    #[arg(long)]
    project: Option<String>,
    #[arg(long, env = "SANDBOXD_DATA_DIR", default_value = "/var/lib/sandboxd")]
    data_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => serve::run(*a),
        Cmd::Keys {
            cmd: KeysCmd::Create(a),
        } => {
            use secrecy::ExposeSecret;
            std::fs::create_dir_all(&a.data_dir)?;
            let meta = sandboxd_meta::SqliteStore::open(&a.data_dir.join("meta.db"))?;
            let key = sandboxd_engine::keys::create(&meta, &a.org, a.project.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", key.expose_secret());
            Ok(())
        }
        Cmd::Bench(a) => bench::run(a),
    }
}
