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

fn run(cli: Cli) -> Result<()> {
    tessera_proto::obs::init_tracing(cli.log_level.as_deref(), cli.log_json)?;
    match cli.command {
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
