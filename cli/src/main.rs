//! The `tessera` binary: a thin shell over the crates. Each subcommand parses
//! its flags, sets up logging, and calls into a library; logic lives there.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_proto::tls::{self, Role};

mod admin;
mod compact;
mod dev;
mod files;
mod keys;
mod mount;
mod notify;
mod transfer;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a distributed file and object store"
)]
struct Cli {
    /// Log level or RUST_LOG-style filter (default: RUST_LOG, else info
    /// with openraft, quinn and rustls at warn; `tessera dev`: warn). A
    /// bare level keeps those dependencies at warn; name them to hear them.
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
    /// Run a whole cluster in one process on a local folder: a metaserver and
    /// chunkservers, certificates and DIR/client.toml created on first start.
    Dev {
        /// Folder for everything; a restart with the same folder keeps every file.
        #[arg(long)]
        data: PathBuf,
        /// Chunkservers to run, each with its own folder under DIR.
        #[arg(long, default_value_t = 3)]
        chunkservers: usize,
        /// Metaserver address (recorded in DIR/client.toml).
        #[arg(long, default_value = "127.0.0.1:7300")]
        meta_listen: std::net::SocketAddr,
        /// Prometheus metrics of every component, at /metrics.
        #[arg(long, default_value = "127.0.0.1:9300")]
        metrics_listen: std::net::SocketAddr,
        /// Also mount the cluster here (an existing empty directory).
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Also serve the S3 API here; the first start creates an access
        /// key and writes it to DIR/s3-credentials.
        #[arg(long)]
        s3: Option<std::net::SocketAddr>,
    },
    /// Serve the S3 API over the cluster until Ctrl-C or SIGTERM.
    Gateway {
        /// The gateway's TOML configuration (see deploy/gateway.example.toml).
        #[arg(long, env = "TESSERA_GATEWAY_CONFIG")]
        config: PathBuf,
        /// Override any configuration key (repeatable): --set listen=0.0.0.0:9000
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Mount the cluster as a local filesystem until Ctrl-C or SIGTERM.
    Mount {
        /// An existing directory to mount on.
        mountpoint: PathBuf,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        /// How long the kernel trusts attributes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        attr_timeout_ms: u64,
        /// How long the kernel trusts names (and their absence), in milliseconds.
        #[arg(long, default_value_t = 1000)]
        entry_timeout_ms: u64,
        /// Let other users use the mount (default: on when root mounts).
        #[arg(long)]
        allow_other: Option<bool>,
        /// Make every close wait until the file's bytes are fsynced on every
        /// server holding them, as fsync does (`io.sync_on_close`).
        #[arg(long)]
        sync_on_close: bool,
    },
    /// Copy a local file (or with -r a tree) into the cluster; each file
    /// appears only once complete.
    Put {
        local: PathBuf,
        /// Copy a directory and everything below it.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Cluster path of the new file, like /photos/a.jpg.
        remote: String,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Copy a cluster file to a local path (`-` for standard output).
    Get {
        remote: String,
        local: PathBuf,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Create a directory (with -p, its missing parents too).
    Mkdir {
        path: String,
        #[arg(short = 'p', long)]
        parents: bool,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// List a directory (or show one file).
    Ls {
        #[arg(default_value = "/")]
        path: String,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Size, policy, and a file's chunks with the servers holding each piece.
    Stat {
        path: String,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Remove a file or an empty directory (with -r, a whole tree).
    Rm {
        path: String,
        #[arg(short = 'r', long)]
        recursive: bool,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Redundancy policy of a directory: replicas:N or ec:K+M.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
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
        command: admin::AdminCommand,
    },
    /// Manage the cluster certificate authority and node certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Set the policy that new files and directories below PATH inherit.
    Set {
        path: String,
        /// replicas:N or ec:K+M
        policy: String,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Show the policy of PATH.
    Get {
        path: String,
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum MetaAction {
    /// Start this member as the first voter of a new group, then keep running.
    Init,
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
/// Registers for SIGINT and SIGTERM now, not at the first poll, and
/// resolves on either: a signal that came between a "ready" line and a
/// lazily registered handler would kill the process instead of stopping
/// it. Call it inside the runtime.
fn listen_for_stop() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// Starts a daemon's logging: flags win over its configuration file.
fn daemon_logging(
    node: &tessera_proto::config::NodeConfig,
    cli_log: Option<&str>,
    cli_json: bool,
) -> Result<()> {
    let level = cli_log.map(str::to_string).or(node.log.level.clone());
    tessera_proto::obs::init_tracing(level.as_deref(), cli_json || node.log.json)?;
    Ok(())
}

fn run_chunk(
    config: PathBuf,
    overrides: Vec<String>,
    cli_log: Option<&str>,
    cli_json: bool,
) -> Result<()> {
    let config: tessera_chunk::ChunkConfig = tessera_proto::config::load(Some(&config), &overrides)
        .with_context(|| format!("load chunkserver config {}", config.display()))?;
    daemon_logging(&config.node, cli_log, cli_json)?;
    runtime()?.block_on(async {
        let stop = listen_for_stop();
        let registry = prometheus::Registry::new();
        let server = tessera_chunk::ChunkServer::start(config, &registry)
            .await
            .context("start the chunkserver")?;
        println!("chunkserver listening on {}", server.addr());
        notify::ready(&format!("chunkserver listening on {}", server.addr()));
        stop.await;
        tracing::info!("stop requested; shutting down");
        notify::stopping();
        server.shutdown().await;
        Ok(())
    })
}

fn run_gateway(
    path: PathBuf,
    overrides: Vec<String>,
    cli_log: Option<&str>,
    cli_json: bool,
) -> Result<()> {
    let config: tessera_gateway::GatewayConfig =
        tessera_proto::config::load(Some(&path), &overrides)
            .with_context(|| format!("load gateway config {}", path.display()))?;
    let level = cli_log.map(str::to_string).or(config.log.level.clone());
    tessera_proto::obs::init_tracing(level.as_deref(), cli_json || config.log.json)?;
    tessera_gateway::raise_fd_limit();
    runtime()?.block_on(async {
        let stop = listen_for_stop();
        let registry = prometheus::Registry::new();
        let client = tessera_client::Client::connect(&config.client)
            .await
            .context("connect to the metaservers named in [client]")?;
        let gateway = tessera_gateway::Gateway::start(
            client,
            config.listen,
            config.region.clone(),
            config.domain.as_deref(),
            &registry,
        )
        .await
        .context("start the S3 gateway")?;
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let access = tessera_proto::obs::HttpAccess::for_listener(
                    addr,
                    config.metrics_token_file.as_deref(),
                )?;
                Some(tessera_proto::obs::serve_metrics(addr, registry, access).await?)
            }
            None => None,
        };
        println!("S3 gateway listening on {}", gateway.addr());
        println!(
            "  plain HTTP, {}, region {}; keys from `tessera admin key create`",
            match &config.domain {
                Some(domain) => format!("virtual-hosted under {domain} and path-style"),
                None => "path-style".to_string(),
            },
            config.region
        );
        notify::ready(&format!("S3 gateway listening on {}", gateway.addr()));
        stop.await;
        tracing::info!("stop requested; shutting down");
        notify::stopping();
        gateway.shutdown().await;
        if let Some((_, task)) = metrics {
            task.abort();
        }
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
    daemon_logging(&config.node, cli_log, cli_json)?;
    // The compaction worker reaches the group as this member does, with
    // its certificate.
    let compaction = config.compaction.clone();
    let worker_config = tessera_proto::config::ClientConfig {
        meta: vec![
            config
                .advertise
                .clone()
                .unwrap_or_else(|| config.node.listen.to_string()),
        ],
        tls: config.node.tls.clone(),
        transport: config.node.transport.clone(),
        io: Default::default(),
    };
    runtime()?.block_on(async {
        let stop = listen_for_stop();
        let registry = prometheus::Registry::new();
        let server = tessera_meta::MetaServer::start(config, &registry, bootstrap)
            .await
            .context("start the metaserver")?;
        println!("metaserver listening on {}", server.addr());
        notify::ready(&format!("metaserver listening on {}", server.addr()));
        let _compactor = compact::spawn(worker_config, server.addr(), &compaction);
        let failed = tokio::select! {
            () = stop => None,
            err = server.failed() => Some(err),
        };
        match failed {
            None => {
                tracing::info!("stop requested; shutting down");
                notify::stopping();
                server.shutdown().await;
                Ok(())
            }
            Some(err) => {
                tracing::error!(error = %err, "metaserver failed; shutting down");
                notify::stopping();
                server.shutdown().await;
                Err(anyhow::Error::new(err).context("metaserver failed"))
            }
        }
    })
}

fn load_client_config(path: &std::path::Path) -> Result<tessera_proto::config::ClientConfig> {
    tessera_proto::config::load(Some(path), &[])
        .with_context(|| format!("load client config {}", path.display()))
}

/// Runs a file command with a metadata client built from `config`.
fn files_command<F, Fut>(config: &std::path::Path, command: F) -> Result<()>
where
    F: FnOnce(std::sync::Arc<tessera_client::Client>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    client_command(load_client_config(config)?, command)
}

fn client_command<F, Fut>(config: tessera_proto::config::ClientConfig, command: F) -> Result<()>
where
    F: FnOnce(std::sync::Arc<tessera_client::Client>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    runtime()?.block_on(async {
        let client = tessera_client::Client::connect(&config).await?;
        command(client).await
    })
}

/// A command that writes: it holds a session while it runs, so what it
/// leaves half done (a `put`'s temporary file) goes when it dies, and
/// closes it when done.
fn writing_command<F, Fut>(config: &std::path::Path, command: F) -> Result<()>
where
    F: FnOnce(std::sync::Arc<tessera_client::Client>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    files_command(config, |client| async move {
        let line: Vec<String> = std::env::args().collect();
        client
            .start_session(tessera_client::session_info(
                tessera_proto::session::SessionKind::Command,
                &line.join(" "),
            ))
            .await
            .context("open a session with the metaservers")?;
        let result = command(client.clone()).await;
        if let Err(err) = client.meta().close_session().await {
            tracing::debug!(error = %err, "could not close the session; it expires");
        }
        result
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Chunk { config, overrides } => {
            return run_chunk(config, overrides, cli.log_level.as_deref(), cli.log_json);
        }
        Command::Gateway { config, overrides } => {
            return run_gateway(config, overrides, cli.log_level.as_deref(), cli.log_json);
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
    // `tessera dev` is run by a person at a terminal: its summary comes
    // first and its components' start-up lines stay out of the way unless
    // asked for (--log-level or RUST_LOG).
    let quiet_dev = matches!(cli.command, Command::Dev { .. })
        && std::env::var_os("RUST_LOG").is_none_or(|v| v.is_empty());
    let level = cli.log_level.as_deref().or(quiet_dev.then_some("warn"));
    tessera_proto::obs::init_tracing(level, cli.log_json)?;
    match cli.command {
        Command::Chunk { .. } | Command::Meta { .. } | Command::Gateway { .. } => {
            unreachable!("handled above")
        }
        Command::Dev {
            data,
            chunkservers,
            meta_listen,
            metrics_listen,
            mount,
            s3,
        } => {
            if chunkservers == 0 {
                anyhow::bail!("--chunkservers must be at least 1");
            }
            let options = dev::DevOptions {
                data,
                chunkservers,
                meta_listen,
                metrics_listen: Some(metrics_listen),
                mount,
                s3,
            };
            runtime()?.block_on(async {
                let stop = listen_for_stop();
                dev::run(options, stop).await
            })?;
        }
        Command::Mount {
            mountpoint,
            config,
            attr_timeout_ms,
            entry_timeout_ms,
            allow_other,
            sync_on_close,
        } => {
            let allow_other = allow_other.unwrap_or_else(tessera_fuse::running_as_root);
            let options = mount::options(attr_timeout_ms, entry_timeout_ms, allow_other);
            let mut config = load_client_config(&config)?;
            config.io.sync_on_close |= sync_on_close;
            client_command(config, |client| async move {
                let stop = listen_for_stop();
                let mounted = mount::start(client, &mountpoint, &options).await?;
                println!(
                    "mounted on {} (Ctrl-C or SIGTERM unmounts)",
                    mountpoint.display()
                );
                notify::ready(&format!("mounted on {}", mountpoint.display()));
                mount::serve(mounted, async {
                    stop.await;
                    notify::stopping();
                })
                .await
            })?
        }
        Command::Put {
            local,
            recursive,
            remote,
            config,
        } => writing_command(&config, |client| async move {
            transfer::put(&client, &local, &remote, recursive).await
        })?,
        Command::Get {
            remote,
            local,
            config,
        } => files_command(&config, |client| async move {
            transfer::get(&client, &remote, &local).await
        })?,
        Command::Mkdir {
            path,
            parents,
            config,
        } => writing_command(&config, |client| async move {
            files::mkdir(client.meta(), &path, parents).await
        })?,
        Command::Ls { path, config } => files_command(&config, |client| async move {
            files::ls(client.meta(), &path).await
        })?,
        Command::Stat { path, config } => files_command(&config, |client| async move {
            files::stat(client.meta(), &path).await
        })?,
        Command::Rm {
            path,
            recursive,
            config,
        } => writing_command(&config, |client| async move {
            files::rm(client.meta(), &path, recursive).await
        })?,
        Command::Policy { command } => match command {
            PolicyCommand::Set {
                path,
                policy,
                config,
            } => writing_command(&config, |client| async move {
                files::policy_set(client.meta(), &path, &policy).await
            })?,
            PolicyCommand::Get { path, config } => files_command(&config, |client| async move {
                files::policy_get(client.meta(), &path).await
            })?,
        },
        Command::Admin { command } => runtime()?.block_on(admin::run(command))?,
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

/// Data moves through buffers of 1 to 4 MiB, allocated and freed at the
/// rate bytes flow. glibc's defaults hand such buffers back to the kernel
/// once freed and fault fresh zeroed pages in for the next one: page faults
/// and page clearing were 8 to 10% of a read's CPU, client and chunkserver
/// alike. Keeping freed memory in the heap (up to the 32 MiB glibc allows
/// for the threshold) ends that; peak memory is unchanged.
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters, called before any
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
