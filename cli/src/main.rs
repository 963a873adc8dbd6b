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
    /// Run a metaserver; `tessera meta init` bootstraps a new group first.
    Meta {
        #[command(subcommand)]
        action: Option<MetaAction>,
        /// The metaserver's TOML configuration (see deploy/meta.example.toml).
        #[arg(long, env = "TESSERA_META_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Override any configuration key (repeatable): --set raft.heartbeat_ms=100
        #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
        overrides: Vec<String>,
    },
    /// Cluster administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage the cluster certificate authority and node certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum MetaAction {
    /// Start this member as the first voter of a new group, then keep running.
    Init,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Members, leader, term and commit index, live chunkservers with free space.
    Status {
        /// Client configuration (client.toml) naming the metaservers.
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Metaserver group membership (needs a metaserver certificate).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add a metaserver: it joins as a learner, catches up (from a snapshot if
    /// needed), then becomes a voter unless --learner.
    Add {
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        node: u64,
        #[arg(long)]
        address: String,
        #[arg(long)]
        learner: bool,
    },
    /// Remove a metaserver from the group.
    Remove {
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        node: u64,
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

fn run_meta(
    config: PathBuf,
    overrides: Vec<String>,
    bootstrap: bool,
    cli_log: Option<&str>,
    cli_json: bool,
) -> Result<()> {
    let config: tessera_meta::MetaConfig =
        tessera_proto::config::load(Some(&config), &overrides)
            .with_context(|| format!("load metaserver config {}", config.display()))?;
    let level = cli_log
        .map(str::to_string)
        .or(config.node.log.level.clone());
    tessera_proto::obs::init_tracing(level.as_deref(), cli_json || config.node.log.json)?;
    runtime()?.block_on(async {
        let registry = prometheus::Registry::new();
        let server = tessera_meta::MetaServer::start(config, &registry, bootstrap)
            .await
            .context("start the metaserver")?;
        println!("metaserver listening on {}", server.addr());
        stop_signal().await;
        tracing::info!("stop requested; shutting down");
        server.shutdown().await;
        Ok(())
    })
}

fn load_client_config(path: &std::path::Path) -> Result<tessera_proto::config::ClientConfig> {
    tessera_proto::config::load(Some(path), &[])
        .with_context(|| format!("load client config {}", path.display()))
}

fn run_admin(command: AdminCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            AdminCommand::Status { config } => {
                let client =
                    tessera_client::MetaClient::from_config(&load_client_config(&config)?).await?;
                let status = client
                    .any_call(&tessera_proto::meta::Status)
                    .await
                    .context(
                        "ask the metaservers for status (are they running? is client.toml right?)",
                    )?;
                print_status(&status);
            }
            AdminCommand::Member { command } => match command {
                MemberCommand::Add {
                    config,
                    node,
                    address,
                    learner,
                } => {
                    let client =
                        tessera_client::MetaClient::from_config(&load_client_config(&config)?)
                            .await?;
                    let message = tessera_proto::meta::AddMember {
                        node: tessera_proto::NodeId(node),
                        address: address.clone(),
                        voter: !learner,
                    };
                    client
                        .leader_call(&message)
                        .await
                        .context("add the member")?;
                    println!(
                        "added metaserver {node} at {address} as a {}",
                        if learner { "learner" } else { "voter" }
                    );
                }
                MemberCommand::Remove { config, node } => {
                    let client =
                        tessera_client::MetaClient::from_config(&load_client_config(&config)?)
                            .await?;
                    let message = tessera_proto::meta::RemoveMember {
                        node: tessera_proto::NodeId(node),
                    };
                    client
                        .leader_call(&message)
                        .await
                        .context("remove the member")?;
                    println!("removed metaserver {node}");
                }
            },
        }
        Ok(())
    })
}

fn print_status(status: &tessera_proto::meta::StatusReply) {
    let leader = status
        .leader
        .map(|l| l.0.to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "metaservers (answered by {}, leader {leader}, term {}, commit index {}, applied {})",
        status.answered_by.0,
        status.term,
        status
            .commit_index
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into()),
        status
            .applied_index
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    for member in &status.members {
        println!(
            "  {:>4}  {:<22} {:<9} matched {}",
            member.node.0,
            member.address,
            member.role,
            member
                .matched_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "chunkservers ({} chunks under-replicated)",
        status.chunks_under_replicated
    );
    for cs in &status.chunkservers {
        println!(
            "  {:>4}  {:<12} {:<22} {:<5} free {:>8} MiB of {:>8} MiB  pieces {:>6}  rack {:?}",
            cs.node.0,
            cs.name,
            cs.address,
            if cs.alive { "up" } else { "DOWN" },
            cs.free_bytes >> 20,
            cs.capacity_bytes >> 20,
            cs.pieces,
            cs.rack
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Chunk { config, overrides } => {
            return run_chunk(config, overrides, cli.log_level.as_deref(), cli.log_json);
        }
        Command::Meta {
            action,
            config,
            overrides,
        } => {
            let config =
                config.context("--config FILE is required (see deploy/meta.example.toml)")?;
            let bootstrap = matches!(action, Some(MetaAction::Init));
            return run_meta(
                config,
                overrides,
                bootstrap,
                cli.log_level.as_deref(),
                cli.log_json,
            );
        }
        _ => {}
    }
    tessera_proto::obs::init_tracing(cli.log_level.as_deref(), cli.log_json)?;
    match cli.command {
        Command::Chunk { .. } | Command::Meta { .. } => unreachable!("handled above"),
        Command::Admin { command } => run_admin(command)?,
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
