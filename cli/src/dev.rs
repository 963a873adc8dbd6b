//! `tessera dev`: a whole cluster in one process on a local folder. One
//! metaserver (a single voter) and several chunkservers, each with its own
//! folder, certificates created on first start, a client configuration
//! written to `DIR/client.toml`. A restart with the same folder keeps
//! everything.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tessera_chunk::scrub::ScrubConfig;
use tessera_chunk::store::DiskConfig;
use tessera_chunk::{ChunkConfig, ChunkServer};
use tessera_meta::server::RaftSettings;
use tessera_meta::{MetaConfig, MetaServer};
use tessera_proto::config::{ClientConfig, LogConfig, NodeConfig, TlsFiles};
use tessera_proto::rpc::TransportOptions;
use tessera_proto::tls::{self, Role};

pub struct DevOptions {
    pub data: PathBuf,
    pub chunkservers: usize,
    pub meta_listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// Where to mount the cluster, if anywhere.
    pub mount: Option<PathBuf>,
    /// Where to serve the S3 API, if anywhere.
    pub s3: Option<SocketAddr>,
}

/// The access key `tessera dev --s3` made, as an AWS shared credentials
/// file so `aws` and boto3 read it as it is.
pub const S3_CREDENTIALS_FILE: &str = "s3-credentials";

fn read_credentials(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    Some((field("aws_access_key_id")?, field("aws_secret_access_key")?))
}

/// The key in DIR/s3-credentials if the cluster still has it; otherwise a
/// new key, written there (mode 0600).
async fn s3_credentials(
    meta: &tessera_client::MetaClient,
    data: &Path,
) -> Result<(String, String)> {
    let path = data.join(S3_CREDENTIALS_FILE);
    if let Some((id, secret)) = read_credentials(&path) {
        let known = meta
            .call(tessera_proto::meta::MetaOp::GetAccessKey { id: id.clone() })
            .await;
        if let Ok(tessera_proto::meta::MetaReply::AccessKey { secret: kept, .. }) = known
            && kept == secret
        {
            return Ok((id, secret));
        }
    }
    let (id, secret) = crate::keys::create(meta, "tessera dev", true).await?;
    let text = format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("write {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok((id, secret))
}

fn tls_files(ca: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: ca.join(tls::CA_CERT_FILE),
        cert: ca.join(format!("{name}.crt")),
        key: ca.join(format!("{name}.key")),
    }
}

fn node(name: &str, listen: SocketAddr, ca: &Path) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        listen,
        metrics_listen: None,
        metrics_token_file: None,
        tls: tls_files(ca, name),
        log: LogConfig::default(),
        transport: TransportOptions::loopback(),
    }
}

/// Creates the CA and every certificate the first time; later starts reuse
/// them (issuing only what a larger `--chunkservers` needs).
fn ensure_pki(ca: &Path, chunkservers: usize) -> Result<()> {
    if !ca.join(tls::CA_CERT_FILE).exists() {
        tls::ca_init(ca).context("create the cluster CA")?;
    }
    let mut wanted = vec![
        (Role::Meta, "meta-1".to_string()),
        (Role::Client, "client".to_string()),
    ];
    wanted.extend((1..=chunkservers).map(|i| (Role::Chunk, format!("chunk-{i}"))));
    for (role, name) in wanted {
        if !ca.join(format!("{name}.crt")).exists() {
            tls::ca_issue(ca, role, &name)
                .with_context(|| format!("issue the certificate of {name}"))?;
        }
    }
    Ok(())
}

pub async fn run(options: DevOptions, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let data = &options.data;
    std::fs::create_dir_all(data).with_context(|| format!("create {}", data.display()))?;
    let data = data
        .canonicalize()
        .with_context(|| format!("resolve {}", data.display()))?;
    let ca = data.join("ca");
    ensure_pki(&ca, options.chunkservers)?;
    let registry = prometheus::Registry::new();

    let policy = format!("replicas:{}", options.chunkservers.clamp(1, 3));
    let meta_config = MetaConfig {
        node: node("meta-1", options.meta_listen, &ca),
        node_id: 1,
        data_dir: data.join("meta"),
        token_key: ca.join(tls::TOKEN_KEY_FILE),
        advertise: None,
        default_policy: policy.clone(),
        chunk_heartbeat_interval_ms: 1_000,
        raft: RaftSettings::default(),
        repair: Default::default(),
        compaction: Default::default(),
        cache_bytes: tessera_meta::server::DEFAULT_CACHE_BYTES,
        session: Default::default(),
    };
    let meta = MetaServer::start(meta_config, &registry, true)
        .await
        .with_context(|| format!("start the metaserver on {} (is another `tessera dev` running? pick another --meta-listen)", options.meta_listen))?;
    let meta_addr = meta.addr();

    let mut chunks = Vec::new();
    for i in 1..=options.chunkservers {
        let name = format!("chunk-{i}");
        let disk = data.join(&name);
        std::fs::create_dir_all(&disk).with_context(|| format!("create {}", disk.display()))?;
        let config = ChunkConfig {
            node: node(&name, "127.0.0.1:0".parse()?, &ca),
            token_key: ca.join(tls::TOKEN_KEY_FILE),
            meta: vec![meta_addr.to_string()],
            advertise: None,
            rack: String::new(),
            zone: String::new(),
            heartbeat_interval_ms: 1_000,
            sync_interval_ms: 1_000,
            disks: vec![DiskConfig {
                path: disk,
                reserve_bytes: 256 * 1024 * 1024,
                capacity_bytes: None,
            }],
            scrub: ScrubConfig::default(),
            repair: Default::default(),
        };
        chunks.push(
            ChunkServer::start(config, &registry)
                .await
                .with_context(|| format!("start {name}"))?,
        );
    }

    let client = ClientConfig {
        meta: vec![meta_addr.to_string()],
        tls: tls_files(&ca, "client"),
        transport: TransportOptions::loopback(),
        io: Default::default(),
    };
    let _compactor = crate::compact::spawn(client.clone(), meta_addr, &Default::default());
    let client_toml = data.join("client.toml");
    let text = toml::to_string(&client).context("write the client configuration")?;
    std::fs::write(&client_toml, text)
        .with_context(|| format!("write {}", client_toml.display()))?;

    let mut metrics_task = None;
    if let Some(addr) = options.metrics_listen {
        // No token in dev: its listener must be on loopback.
        let access = tessera_proto::obs::HttpAccess::for_listener(addr, None)?;
        let (bound, task) = tessera_proto::obs::serve_http(
            addr,
            registry.clone(),
            Some(meta.status_routes()),
            access,
        )
        .await?;
        metrics_task = Some((bound, task));
    }

    let mut mounted = None;
    if let Some(path) = &options.mount {
        if !path.exists() {
            std::fs::create_dir_all(path)
                .with_context(|| format!("create the mount point {}", path.display()))?;
        }
        let client = tessera_client::Client::connect(&client)
            .await
            .context("connect the mount to the metaserver")?;
        let mount_options = crate::mount::options(1000, 1000, tessera_fuse::running_as_root());
        mounted = Some(crate::mount::start(client, path, &mount_options).await?);
    }

    let mut gateway = None;
    if let Some(addr) = options.s3 {
        let client = tessera_client::Client::connect(&client)
            .await
            .context("connect the S3 gateway to the metaserver")?;
        let (id, secret) = s3_credentials(client.meta(), &data).await?;
        tessera_gateway::raise_fd_limit();
        let started = tessera_gateway::Gateway::start(
            client,
            addr,
            tessera_gateway::default_region(),
            None,
            &registry,
        )
        .await
        .with_context(|| {
            format!("start the S3 gateway on {addr} (pick another --s3 address if it is in use)")
        })?;
        gateway = Some((started, id, secret));
    }

    println!("tessera dev is running on {}", data.display());
    println!("  metaserver   {meta_addr}  (one voter, default policy {policy})");
    for (i, chunk) in chunks.iter().enumerate() {
        println!(
            "  chunkserver  {}  ({})",
            chunk.addr(),
            data.join(format!("chunk-{}", i + 1)).display()
        );
    }
    if let Some((bound, _)) = &metrics_task {
        println!("  metrics      http://{bound}/metrics");
        println!("  status page  http://{bound}/");
    }
    println!("  client config {}", client_toml.display());
    if let Some(path) = &options.mount {
        println!("  mount        {}", path.display());
    }
    if let Some((gateway, id, secret)) = &gateway {
        println!(
            "  s3           http://{}  (region us-east-1, path-style)",
            gateway.addr()
        );
        println!("  s3 key       {id}");
        println!("  s3 secret    {secret}");
        println!(
            "  s3 creds     {}",
            data.join(S3_CREDENTIALS_FILE).display()
        );
    }
    println!();
    println!("try:");
    println!("  export TESSERA_CONFIG={}", client_toml.display());
    println!("  tessera admin status");
    println!("  tessera mkdir /photos && tessera ls /");
    println!("  tessera put ./file /photos/file && tessera get /photos/file ./copy");
    println!("  tessera stat /photos/file   (its chunks and the servers of each piece)");
    if let Some((gateway, _, _)) = &gateway {
        println!(
            "  AWS_SHARED_CREDENTIALS_FILE={} aws --endpoint-url http://{} s3 ls",
            data.join(S3_CREDENTIALS_FILE).display(),
            gateway.addr()
        );
    }
    println!("stop with Ctrl-C; a restart with the same --data keeps everything.");
    crate::notify::ready(&format!("tessera dev running on {}", data.display()));

    match mounted {
        Some(mounted) => crate::mount::serve(mounted, stop).await?,
        None => stop.await,
    }
    println!("stopping");
    if let Some((gateway, _, _)) = gateway {
        gateway.shutdown().await;
    }
    for chunk in chunks {
        chunk.shutdown().await;
    }
    meta.shutdown().await;
    if let Some((_, task)) = metrics_task {
        task.abort();
    }
    Ok(())
}
