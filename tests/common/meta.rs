//! Metaservers as real processes, one `tessera meta` per member, each with
//! its own configuration, data folder and log.

use super::{Daemon, Pki, free_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera_client::MetaClient;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{FileKind, MetaOp, MetaReply, Status, StatusReply};
use tessera_proto::rpc::{CallOptions, Peer};
use tessera_proto::tls::Role;

pub struct Member {
    pub id: u64,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub fn member(root: &Path, pki: &Pki, id: u64, extra: &str) -> Member {
    let name = format!("meta-{id}");
    pki.issue(Role::Meta, &name);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = root.join(format!("{name}.toml"));
    let ca = pki.dir.display();
    std::fs::write(
        &config,
        format!(
            r#"name = "{name}"
node_id = {id}
listen = "{addr}"
data_dir = "{data}"
token_key = "{ca}/token.key"
default_policy = "replicas:3"
chunk_heartbeat_interval_ms = 300
{extra}
[tls]
ca = "{ca}/ca.crt"
cert = "{ca}/{name}.crt"
key = "{ca}/{name}.key"
[transport]
mtu_upper_bound_bytes = 65527
"#,
            data = root.join(format!("{name}-data")).display()
        ),
    )
    .unwrap();
    Member {
        id,
        addr,
        config,
        log: root.join(format!("{name}.log")),
    }
}

pub fn start(member: &Member, init: bool) -> Daemon {
    start_with(member, init, 64, 0)
}

/// Starts a member taking a snapshot every `snapshot_every` entries and
/// keeping `logs_kept` entries behind it.
pub fn start_with(member: &Member, init: bool, snapshot_every: u64, logs_kept: u64) -> Daemon {
    let config = member.config.to_str().unwrap();
    let snapshot_every = format!("raft.snapshot_every_entries={snapshot_every}");
    let logs_kept = format!("raft.logs_kept_after_snapshot={logs_kept}");
    let mut args = vec!["meta"];
    if init {
        args.push("init");
    }
    args.extend([
        "--config",
        config,
        "--set",
        &snapshot_every,
        "--set",
        &logs_kept,
    ]);
    Daemon::start(&args, &member.log)
}

pub fn meta_client(pki: &Pki, identity: &str, members: &[&Member]) -> MetaClient {
    MetaClient::new(
        pki.client(identity),
        members.iter().map(|m| m.addr).collect(),
    )
    .unwrap()
}

pub async fn status_of(pki: &Pki, addr: SocketAddr) -> Option<StatusReply> {
    pki.client("test-client")
        .call(
            Peer::new(addr, Role::Meta),
            &Status,
            CallOptions::with_timeout(Duration::from_secs(3)),
        )
        .await
        .ok()
}

pub async fn wait_for<F: Fn(&StatusReply) -> bool>(
    pki: &Pki,
    addr: SocketAddr,
    what: &str,
    ok: F,
) -> StatusReply {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = status_of(pki, addr).await
            && ok(&status)
        {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn entry_ino(reply: MetaReply) -> InodeId {
    match reply {
        MetaReply::Entry(attr) => attr.ino,
        other => panic!("expected an entry, got {other:?}"),
    }
}

pub async fn list_all(client: &MetaClient, dir: InodeId) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    let mut after = None;
    loop {
        match client
            .call(MetaOp::Readdir {
                ino: dir,
                after: after.clone(),
                limit: 256,
            })
            .await
            .unwrap()
        {
            MetaReply::Dir { entries, more } => {
                after = entries.last().map(|e| e.name.clone());
                names.extend(entries.into_iter().map(|e| e.name));
                if !more {
                    return names;
                }
            }
            other => panic!("readdir replied {other:?}"),
        }
    }
}

pub fn create(parent: InodeId, name: &str) -> MetaOp {
    MetaOp::Create {
        parent,
        name: name.as_bytes().to_vec(),
        kind: FileKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        exclusive: true,
    }
}

pub async fn single(root: &Path, pki: &Pki) -> (Member, Daemon) {
    let m = member(root, pki, 1, "");
    let daemon = start(&m, true);
    wait_for(pki, m.addr, "a leader", |s| s.leader.is_some()).await;
    (m, daemon)
}
