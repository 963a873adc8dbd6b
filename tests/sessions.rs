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
    let refused = b
        .meta()
        .call(MetaOp::GetAttr { ino: InodeId::ROOT })
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::SessionExpired);
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
