//! The `tessera` binary: a thin shell over the crates. Each subcommand parses
//! its flags, sets up logging, and calls into a library; logic lives there.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_proto::tls::{self, Role};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a distributed file and object store"
)]
struct Cli {
    /// Log level or RUST_LOG-style filter (default: RUST_LOG, else info).
    #[arg(long, global = true, env = "TESSERA_LOG")]
    log_level: Option<String>,
    /// Log one JSON object per line.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a chunkserver: keep pieces on local disks and serve them.
    Chunk {
        /// The chunkserver's TOML configuration (see deploy/chunk.example.toml).
        #[arg(long, env = "TESSERA_CHUNK_CONFIG")]
        config: PathBuf,
        /// Override any configuration key: --set listen=127.0.0.1:7401
        /// --set scrub.rate_mb_per_s=10 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Manage the cluster certificate authority and node certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a cluster CA and the capability-token key in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for a node or client, signed by the CA in DIR.
    Issue {
        /// meta, chunk, client or gateway.
        #[arg(long)]
        role: String,
        /// Node name: 1 to 63 of a-z, 0-9 and '-'. Files are NAME.crt and NAME.key.
        #[arg(long)]
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn run_chunk(
    config: PathBuf,
    overrides: Vec<String>,
    cli_log: Option<&str>,
    cli_json: bool,
) -> Result<()> {
    let config: tessera_chunk::ChunkConfig = tessera_proto::config::load(Some(&config), &overrides)
        .with_context(|| format!("load chunkserver config {}", config.display()))?;
    let level = cli_log
        .map(str::to_string)
        .or(config.node.log.level.clone());
    tessera_proto::obs::init_tracing(level.as_deref(), cli_json || config.node.log.json)?;
    runtime()?.block_on(async {
        let registry = prometheus::Registry::new();
        let server = tessera_chunk::ChunkServer::start(config, &registry)
            .await
            .context("start the chunkserver")?;
        println!("chunkserver listening on {}", server.addr());
        stop_signal().await;
        tracing::info!("stop requested; shutting down");
        server.shutdown().await;
        Ok(())
    })
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Chunk { config, overrides } = cli.command {
        return run_chunk(config, overrides, cli.log_level.as_deref(), cli.log_json);
    }
    tessera_proto::obs::init_tracing(cli.log_level.as_deref(), cli.log_json)?;
    match cli.command {
        Command::Chunk { .. } => unreachable!("handled above"),
        Command::Ca { command } => match command {
            CaCommand::Init { dir } => {
                tls::ca_init(&dir).context("create the cluster CA")?;
                println!("created cluster CA in {}", dir.display());
                println!(
                    "  {}  CA certificate (give it to every node)",
                    dir.join(tls::CA_CERT_FILE).display()
                );
                println!(
                    "  {}  CA private key (keep it off the nodes)",
                    dir.join(tls::CA_KEY_FILE).display()
                );
                println!(
                    "  {}  token key (metaservers and chunkservers only)",
                    dir.join(tls::TOKEN_KEY_FILE).display()
                );
                println!(
                    "next: tessera ca issue --dir {} --role meta --name meta-1",
                    dir.display()
                );
            }
            CaCommand::Issue { role, name, dir } => {
                let role: Role = role.parse()?;
                let paths = tls::ca_issue(&dir, role, &name).context("issue the certificate")?;
                println!("issued {role} certificate for {name}");
                println!("  {}", paths.cert.display());
                println!("  {}", paths.key.display());
            }
        },
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
