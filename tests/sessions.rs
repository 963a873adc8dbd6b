//! Client sessions against a real metaserver process: a file unlinked by
//! one client stays alive while another holds it open, and goes when the
//! holder's session expires (its client died) or is evicted; an ended
//! session is fenced and never revived.

mod common;

use common::Pki;
use common::meta::{create, entry_ino, member, meta_client, start, wait_for};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_client::Client;
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::{InodeId, RequestId};
use tessera_proto::meta::{MetaOp, MetaReply};
use tessera_proto::session::{
    CloseSession, ListSessions, SessionCall, SessionId, SessionInfo, SessionKind,
};

const EXPIRY_MS: u64 = 3_000;

fn info(name: &str) -> SessionInfo {
    SessionInfo {
        kind: SessionKind::Mount,
        host: "test-host".into(),
        pid: std::process::id(),
        mount_point: format!("/mnt/{name}"),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

async fn sessions(client: &Client) -> Vec<SessionId> {
    client
        .meta()
        .leader_call(&ListSessions)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

async fn exists(client: &Client, ino: InodeId) -> bool {
    match client.meta().call(MetaOp::GetAttr { ino }).await {
        Ok(_) => true,
        Err(err) if err.code == ErrorCode::NotFound => false,
        Err(err) => panic!("getattr {ino}: {err}"),
    }
}

/// Polls until `check` holds, for at most `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_outlive_unlinks_until_their_session_ends() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let m = member(
        root.path(),
        &pki,
        1,
        &format!("[session]\nexpiry_ms = {EXPIRY_MS}"),
    );
    let _daemon = start(&m, true);
    wait_for(&pki, m.addr, "a leader", |s| s.leader.is_some()).await;
    let connect = || Client::new(meta_client(&pki, "test-client", &[&m]), Default::default());

    let a = connect();
    let b = connect();
    let sa = a.start_session(info("a")).await.unwrap();
    let sb = b.start_session(info("b")).await.unwrap();
    assert_ne!(sa, sb);
    let mut listed = sessions(&b).await;
    listed.sort();
    assert_eq!(listed, vec![sa, sb]);

    // A holds a file open; B unlinks it: it stays for A.
    let ino = entry_ino(a.meta().call(create(InodeId::ROOT, "held")).await.unwrap());
    a.meta().call(MetaOp::Open { ino }).await.unwrap();
    b.meta()
        .call(MetaOp::Unlink {
            parent: InodeId::ROOT,
            name: b"held".to_vec(),
        })
        .await
        .unwrap();
    assert!(exists(&b, ino).await, "an open file went with its name");

    // Renewals keep A's session past several expiries.
    tokio::time::sleep(Duration::from_millis(2 * EXPIRY_MS)).await;
    assert!(exists(&b, ino).await, "a renewed session's file went");
    assert!(sessions(&b).await.contains(&sa));

    // A dies without closing: after the expiry, and not before, the file
    // goes and the session with it.
    drop(a);
    let died = Instant::now();
    let took = eventually(
        "the dead client's file to go",
        Duration::from_secs(30),
        || {
            let b = b.clone();
            async move { !exists(&b, ino).await }
        },
    )
    .await;
    assert!(
        died.elapsed() >= Duration::from_millis(EXPIRY_MS) - Duration::from_secs(1),
        "released {took:?} after the client died, before the expiry"
    );
    assert_eq!(sessions(&b).await, vec![sb]);

    // An ended session is fenced: calls under its id are refused.
    let fenced = b
        .meta()
        .leader_call(&SessionCall {
            session: sa,
            request_id: RequestId::fresh(),
            op: create(InodeId::ROOT, "zombie"),
        })
        .await
        .unwrap_err();
    assert_eq!(fenced.code, ErrorCode::SessionExpired);

    // Evicting B releases its handles at once; B's next call fails, and
    // the one after runs under a new session.
    let ino = entry_ino(
        b.meta()
            .call(create(InodeId::ROOT, "b-held"))
            .await
            .unwrap(),
    );
    b.meta().call(MetaOp::Open { ino }).await.unwrap();
    b.meta()
        .call(MetaOp::Unlink {
            parent: InodeId::ROOT,
            name: b"b-held".to_vec(),
        })
        .await
        .unwrap();
    let (_, epoch) = b.meta().session().unwrap();
    let admin = Arc::new(meta_client(&pki, "test-client", &[&m]));
    admin
        .leader_call(&CloseSession {
            id: sb,
            evict: true,
        })
        .await
        .unwrap();
    let gone = admin.call(MetaOp::GetAttr { ino }).await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::NotFound);
    // B's next call is refused, unless its renewal learned of the end
    // first and opened a new session already; calls under the old id are
    // refused either way.
    if let Err(err) = b.meta().call(MetaOp::GetAttr { ino: InodeId::ROOT }).await {
        assert_eq!(err.code, ErrorCode::SessionExpired);
    }
    let fenced = b
        .meta()
        .leader_call(&SessionCall {
            session: sb,
            request_id: RequestId::fresh(),
            op: MetaOp::GetAttr { ino: InodeId::ROOT },
        })
        .await
        .unwrap_err();
    assert_eq!(fenced.code, ErrorCode::SessionExpired);
    let reply = b
        .meta()
        .call(MetaOp::GetAttr { ino: InodeId::ROOT })
        .await
        .unwrap();
    assert!(matches!(reply, MetaReply::Attr(_)));
    let (sb2, epoch2) = b.meta().session().unwrap();
    assert!(sb2 > sb && epoch2 > epoch);
    assert!(
        admin
            .leader_call(&CloseSession {
                id: sb,
                evict: true
            })
            .await
            .is_err(),
        "an ended session was evicted again"
    );
    // A clean close ends the session at once.
    b.meta().close_session().await.unwrap();
    assert!(sessions(&admin_client(&pki, &m)).await.is_empty());
}

fn admin_client(pki: &Pki, m: &common::meta::Member) -> Arc<Client> {
    Client::new(meta_client(pki, "test-client", &[m]), Default::default())
}

/// Regular files under every `pieces` folder of the cluster's chunkservers.
fn pieces_on_disk(root: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path, inside: bool) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&path, inside || e.file_name() == "pieces"),
                    Ok(t) if t.is_file() && inside => 1,
                    _ => 0,
                }
            })
            .sum()
    }
    walk(root, false)
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_file_open_on_one_mount_outlives_an_unlink_on_another() {
    use common::cluster::{Cluster, Mount};
    use std::io::{Read, Seek, SeekFrom, Write};
    let cluster = Cluster::up_with(30500, 1, 3, "[session]\nexpiry_ms = 3000", "");
    let scratch = tempfile::Builder::new()
        .prefix("tessera-sessions")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut a = Mount::new(&cluster, scratch.path(), "a", &[]);
    let b = Mount::new(&cluster, scratch.path(), "b", &[]);
    let root = cluster.root();
    let mut data = vec![0u8; 5 << 20];
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2654435761) >> 13) as u8;
    }

    // Open on A, unlinked on B: A reads and writes it to the end.
    std::fs::write(a.path.join("f"), &data).unwrap();
    let stored = pieces_on_disk(&root);
    assert!(stored > 0, "no piece on disk after a write");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.path.join("f"))
        .unwrap();
    let mut head = vec![0u8; 1 << 20];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, data[..1 << 20]);
    std::fs::remove_file(b.path.join("f")).unwrap();
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).unwrap();
    assert!(
        rest == data[1 << 20..],
        "the rest read after the unlink differs"
    );
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(b"written after the unlink").unwrap();
    file.sync_all().unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    let mut back = vec![0u8; 24];
    file.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"written after the unlink");
    // Closed: the space comes back.
    drop(file);
    wait_until(
        "the unlinked file's pieces to go",
        Duration::from_secs(90),
        || pieces_on_disk(&root) == 0,
    );

    // The same with the holder SIGKILLed: the space returns after the
    // expiry, not before.
    std::fs::write(a.path.join("g"), &data).unwrap();
    let held = std::fs::File::open(a.path.join("g")).unwrap();
    std::fs::remove_file(b.path.join("g")).unwrap();
    a.sigkill();
    assert!(
        pieces_on_disk(&root) > 0,
        "freed before the session expired"
    );
    wait_until(
        "a dead mount's unlinked file to go",
        Duration::from_secs(90),
        || pieces_on_disk(&root) == 0,
    );
    drop(held);

    // An evicted mount answers EIO on its old handles and works for new
    // opens.
    std::fs::write(b.path.join("h"), b"kept").unwrap();
    let mut old = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.path.join("h"))
        .unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["admin", "session", "list", "--json"])).unwrap();
    let wanted = b.path.display().to_string();
    let id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["info"]["mount_point"] == wanted.as_str())
        .and_then(|s| s["id"].as_u64())
        .unwrap_or_else(|| panic!("mount b's session is not listed: {listed}"));
    cluster.ok(&["admin", "session", "evict", &id.to_string()]);
    // The write may land in the page cache; its sync reaches the mount,
    // which refuses the old session's handle.
    let err = old
        .write_all(b" and more")
        .and_then(|()| old.sync_all())
        .unwrap_err();
    // EIO, without a libc binding in the tests.
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert_eq!(std::fs::read(b.path.join("h")).unwrap(), b"kept");
    b.unmount();
}

/// Names in the cluster's root, from `tessera ls /`.
fn names_in_root(cluster: &common::cluster::Cluster) -> Vec<String> {
    names_in(cluster, "/")
}

/// Names in one of the cluster's directories, from `tessera ls`.
fn names_in(cluster: &common::cluster::Cluster, dir: &str) -> Vec<String> {
    cluster
        .ok(&["ls", dir])
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

#[test]
fn a_killed_put_leaves_nothing_after_its_session_expires() {
    use common::cluster::Cluster;
    let cluster = Cluster::up_with(36500, 1, 3, "[session]\nexpiry_ms = 3000", "");
    let scratch = tempfile::Builder::new()
        .prefix("tessera-put-kill")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Big enough that the put is still writing when it is killed.
    let local = scratch.path().join("big");
    let mut data = vec![0u8; 512 << 20];
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    std::fs::write(&local, &data).unwrap();
    drop(data);
    let mut put = std::process::Command::new(common::tessera_bin())
        .args(["put", local.to_str().unwrap(), "/big"])
        .env("TESSERA_CONFIG", cluster.config())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Halfway: its temporary file exists and has bytes.
    wait_until("the put's temporary file", Duration::from_secs(60), || {
        names_in_root(&cluster)
            .iter()
            .any(|n| n.starts_with(".tessera-put.big."))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        put.try_wait().unwrap().is_none(),
        "the put finished before it could be killed halfway"
    );
    put.kill().unwrap();
    put.wait().unwrap();
    let names = names_in_root(&cluster);
    assert!(
        !names.contains(&"big".to_string()),
        "a partial file became visible: {names:?}"
    );
    wait_until(
        "the killed put's temporary file to go",
        Duration::from_secs(60),
        || {
            let names = names_in_root(&cluster);
            assert!(
                !names.contains(&"big".to_string()),
                "a partial file became visible"
            );
            !names.iter().any(|n| n.starts_with(".tessera-put."))
        },
    );
    wait_until("its pieces to go", Duration::from_secs(90), || {
        pieces_on_disk(&cluster.root()) == 0
    });
    // A put that finishes keeps its file and leaves no session behind.
    std::fs::write(&local, b"small").unwrap();
    cluster.ok(&["put", local.to_str().unwrap(), "/small"]);
    assert_eq!(cluster.ok(&["ls", "/"]).lines().count(), 1);
    let listed: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["admin", "session", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

/// An S3 PUT whose gateway is SIGKILLed halfway: its staging file goes with
/// the gateway's session, its chunks with it, and the object never appears.
#[test]
fn a_killed_s3_put_leaves_nothing_after_its_session_expires() {
    use common::cluster::Cluster;
    let Some(aws) = std::env::var_os("AWS_CLI")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let venv = std::path::Path::new(&std::env::var_os("HOME")?)
                .join(".cache/tessera/venv/bin/aws");
            venv.exists().then_some(venv)
        })
    else {
        let message = "awscli is not installed: run .ci/run";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    };
    let cluster = Cluster::up_with(37500, 1, 3, "[session]\nexpiry_ms = 3000", "");
    let scratch = tempfile::Builder::new()
        .prefix("tessera-s3-kill")
        .tempdir_in("/var/tmp")
        .unwrap();
    // The gateway reaches the cluster as the mount does; keys come from it.
    let client = std::fs::read_to_string(cluster.config()).unwrap();
    let mut config = String::from(
        "listen = \"127.0.0.1:39700\"\nmetrics_listen = \"127.0.0.1:39701\"\n[client]\n",
    );
    for line in client.lines() {
        match line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(table) => config.push_str(&format!("[client.{table}]\n")),
            None => config.push_str(&format!("{line}\n")),
        }
    }
    let gateway_config = scratch.path().join("gateway.toml");
    std::fs::write(&gateway_config, config).unwrap();
    let admin = cluster.root().join("admin.toml");
    let key: serde_json::Value = serde_json::from_str(&cluster.ok(&[
        "admin",
        "key",
        "create",
        "--json",
        "--config",
        admin.to_str().unwrap(),
    ]))
    .unwrap();
    let credentials = scratch.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key["id"].as_str().unwrap(),
            key["secret"].as_str().unwrap()
        ),
    )
    .unwrap();
    cluster.ok(&["mkdir", "/bkt"]);
    // A new key reaches only the buckets granted to it.
    cluster.ok(&[
        "admin",
        "key",
        "allow",
        key["id"].as_str().unwrap(),
        "bkt",
        "--read",
        "--write",
        "--config",
        admin.to_str().unwrap(),
    ]);
    let gateway = common::Daemon::start(
        &["gateway", "--config", gateway_config.to_str().unwrap()],
        &scratch.path().join("gateway.log"),
    );
    let local = scratch.path().join("big");
    std::fs::write(&local, common::pattern(7, 512 << 20)).unwrap();
    let mut put = std::process::Command::new(&aws)
        .args(["s3api", "put-object", "--bucket", "bkt", "--key", "big"])
        .arg("--body")
        .arg(&local)
        .args(["--endpoint-url", "http://127.0.0.1:39700"])
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Halfway: the staging file exists and the upload is still running.
    wait_until("the PUT's staging file", Duration::from_secs(60), || {
        !names_in(&cluster, "/.tessera-s3/staging").is_empty()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        put.try_wait().unwrap().is_none(),
        "the PUT finished before the gateway could be killed halfway"
    );
    gateway.kill();
    let _ = put.kill();
    let _ = put.wait();
    let never_visible = |cluster: &Cluster| {
        assert!(
            names_in(cluster, "/bkt").is_empty(),
            "a partial object became visible"
        );
    };
    never_visible(&cluster);
    wait_until(
        "the killed PUT's staging file to go",
        Duration::from_secs(60),
        || {
            never_visible(&cluster);
            names_in(&cluster, "/.tessera-s3/staging").is_empty()
        },
    );
    wait_until("its pieces to go", Duration::from_secs(90), || {
        pieces_on_disk(&cluster.root()) == 0
    });
    never_visible(&cluster);
}
