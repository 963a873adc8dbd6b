//! Metaservers as real processes: a three-member group that loses its
//! leader under load, a restarted member catching up, a new member joining
//! from a snapshot, a member removed; the chunkserver contract end to end;
//! bad input of every kind.

mod common;

use bytes::Bytes;
use common::meta::{
    Member, create, entry_ino, list_all, member, meta_client, single, start_with, wait_for,
};
use common::{Daemon, Pki};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::checksum::checksum_of;
use tessera_proto::chunk::{ListPieces, ReadPiece, WritePiece};
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::{InodeId, NodeId, PieceId, RequestId};
use tessera_proto::meta::{
    AddMember, Extent, FileKind, MetaCall, MetaOp, MetaReply, RemoveMember, RenameMode, XattrMode,
};
use tessera_proto::rpc::{CallOptions, Peer};
use tessera_proto::tls::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_survives_losing_its_leader() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let members: Vec<Member> = (1..=4)
        .map(|id| member(root.path(), &pki, id, ""))
        .collect();
    // A snapshot every few entries and no log kept behind it: a new leader
    // then often has to send its follower a snapshot while building newer
    // ones, the path a race once broke.
    let start = |m: &Member, init: bool| start_with(m, init, 8, 0);
    let mut daemons: Vec<Option<Daemon>> = vec![
        Some(start(&members[0], true)),
        Some(start(&members[1], false)),
        Some(start(&members[2], false)),
        None,
    ];
    let admin = meta_client(&pki, "test-meta", &[&members[0]]);
    wait_for(&pki, members[0].addr, "a leader", |s| s.leader.is_some()).await;
    for m in &members[1..3] {
        admin
            .leader_call(&AddMember {
                node: NodeId(m.id),
                address: m.addr.to_string(),
                voter: true,
            })
            .await
            .unwrap();
    }
    let status = wait_for(&pki, members[0].addr, "three voters heard from", |s| {
        s.members.len() == 3 && s.members.iter().all(|m| m.last_contact_ms.is_some())
    })
    .await;
    assert_eq!(
        status
            .members
            .iter()
            .filter(|m| m.role != "learner")
            .count(),
        3
    );

    // A follower redirects writes to the leader.
    let leader = status.leader.unwrap().0;
    let follower = members.iter().take(3).find(|m| m.id != leader).unwrap();
    let err = pki
        .client("test-client")
        .call(
            Peer::new(follower.addr, Role::Meta),
            &MetaCall {
                request_id: RequestId::fresh(),
                op: create(InodeId::ROOT, "x"),
            },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotLeader);
    assert!(err.redirect.is_some(), "{err}");

    // Stream creates while the leader is killed.
    let client = Arc::new(meta_client(
        &pki,
        "test-client",
        &[&members[0], &members[1], &members[2]],
    ));
    let dir = entry_ino(
        client
            .call(MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: b"d".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .unwrap(),
    );
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("f-{w}-{i}");
                let ino = match client.call(create(dir, &name)).await {
                    Ok(reply) => entry_ino(reply),
                    Err(err) => return Err(format!("create {name}: {err}")),
                };
                // Every other file gets inline bytes: they must survive
                // the leader's death and reach a member by snapshot.
                if i.is_multiple_of(2) {
                    let write = MetaOp::WriteInline {
                        ino,
                        writes: vec![(0, inline_content(&name))],
                        min_size: 0,
                        set: Default::default(),
                    };
                    if let Err(err) = client.call(write).await {
                        return Err(format!("inline write of {name}: {err}"));
                    }
                }
                acked.lock().unwrap().push(name);
                i += 1;
            }
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = leader as usize - 1;
    daemons[killed].take().unwrap().kill();
    let killed_at = Instant::now();
    let survivor = members.iter().take(3).find(|m| m.id != leader).unwrap();
    let status = wait_for(&pki, survivor.addr, "a new leader", |s| {
        s.leader.is_some_and(|l| l.0 != leader)
    })
    .await;
    eprintln!(
        "new leader {:?} after {:?}",
        status.leader,
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = Vec::new();
    for writer in writers {
        if let Err(err) = writer.await.unwrap() {
            failed.push(err);
        }
    }
    // The members' logs go with the test's folder: their ends say why.
    assert!(
        failed.is_empty(),
        "creates failed across the leader change: {}\n{}",
        failed.join("; "),
        members[..3]
            .iter()
            .map(|m| common::log_tail(&m.log, 30))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} creates acknowledged",
        acked.len()
    );
    let listed = list_all(&client, dir).await;
    let listed_set: BTreeSet<_> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "a name is listed twice");
    for name in &acked {
        assert!(
            listed_set.contains(name.as_bytes()),
            "acknowledged create {name} is missing"
        );
    }
    check_inline(&client, dir, &acked).await;

    // The killed member restarts and catches up.
    daemons[killed] = Some(start(&members[killed], false));
    let target = wait_for(&pki, survivor.addr, "the leader", |s| s.leader.is_some())
        .await
        .applied_index
        .unwrap_or(0);
    wait_for(
        &pki,
        members[killed].addr,
        "the restarted member to catch up",
        |s| s.applied_index.unwrap_or(0) >= target,
    )
    .await;

    // A new member joins; the log was snapshotted and purged, so it starts from a snapshot.
    daemons[3] = Some(start(&members[3], false));
    admin
        .leader_call(&AddMember {
            node: NodeId(4),
            address: members[3].addr.to_string(),
            voter: true,
        })
        .await
        .unwrap();
    let target = wait_for(&pki, survivor.addr, "the leader", |s| s.leader.is_some())
        .await
        .applied_index
        .unwrap_or(0);
    wait_for(&pki, members[3].addr, "the new member to catch up", |s| {
        s.applied_index.unwrap_or(0) >= target && s.members.len() == 4
    })
    .await;
    let log = std::fs::read_to_string(&members[3].log).unwrap_or_default();
    assert!(
        log.contains("snapshot installed"),
        "the new member did not install a snapshot:\n{log}"
    );

    // Removing members until the one that joined by snapshot is alone:
    // it then answers every read from what the snapshot and the log gave
    // it, inline bytes included.
    let admin = meta_client(
        &pki,
        "test-meta",
        &[&members[0], &members[1], &members[2], &members[3]],
    );
    for id in 1..=3u64 {
        admin
            .leader_call(&RemoveMember { node: NodeId(id) })
            .await
            .unwrap();
        let left = 4 - id as usize;
        wait_for(&pki, members[3].addr, "a member fewer", |s| {
            s.members.len() == left && s.leader.is_some()
        })
        .await;
    }
    let alone = meta_client(&pki, "test-client", &[&members[3]]);
    check_inline(&alone, dir, &acked).await;
    // Writes still work.
    alone.call(create(dir, "after-all")).await.unwrap();
}

/// The inline bytes the stream wrote to file `name`.
fn inline_content(name: &str) -> Vec<u8> {
    name.as_bytes().repeat(64)
}

/// Every acknowledged file of the stream is there, and every other one
/// holds exactly its inline bytes.
async fn check_inline(client: &tessera_client::MetaClient, dir: InodeId, acked: &[String]) {
    for name in acked {
        let ino = entry_ino(
            client
                .call(MetaOp::Lookup {
                    parent: dir,
                    name: name.as_bytes().to_vec(),
                })
                .await
                .unwrap_or_else(|err| panic!("lookup {name}: {err}")),
        );
        let i: u64 = name.rsplit('-').next().unwrap().parse().unwrap();
        let want = if i.is_multiple_of(2) {
            inline_content(name)
        } else {
            Vec::new()
        };
        let reply = client
            .call(MetaOp::GetLayout {
                ino,
                offset: 0,
                length: u64::MAX,
            })
            .await
            .unwrap();
        let MetaReply::Layout { size, inline, .. } = reply else {
            panic!("layout of {name}: {reply:?}");
        };
        assert_eq!((size, &inline), (want.len() as u64, &want), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_errno_a_kernel_would_give() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let (m, _daemon) = single(root.path(), &pki).await;
    let client = meta_client(&pki, "test-client", &[&m]);
    let code = |r: Result<MetaReply, tessera_proto::Error>| r.unwrap_err().code;

    for (name, expected) in [
        (b"a/b".to_vec(), ErrorCode::InvalidArgument),
        (b"a\0b".to_vec(), ErrorCode::InvalidArgument),
        (vec![b'x'; 256], ErrorCode::NameTooLong),
        (Vec::new(), ErrorCode::InvalidArgument),
    ] {
        let op = MetaOp::Create {
            parent: InodeId::ROOT,
            name,
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        };
        assert_eq!(code(client.call(op).await), expected);
    }
    // Invalid UTF-8 is a valid name, as on Linux.
    let odd = vec![0xff, 0xfe, b'a'];
    client
        .call(MetaOp::Create {
            parent: InodeId::ROOT,
            name: odd.clone(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        })
        .await
        .unwrap();
    assert_eq!(
        code(
            client
                .call(MetaOp::GetAttr {
                    ino: InodeId(999_999)
                })
                .await
        ),
        ErrorCode::NotFound
    );
    let file = entry_ino(
        client
            .call(MetaOp::Lookup {
                parent: InodeId::ROOT,
                name: odd,
            })
            .await
            .map(|r| match r {
                MetaReply::Attr(a) | MetaReply::Entry(a) => MetaReply::Entry(a),
                other => other,
            })
            .unwrap(),
    );
    assert_eq!(
        code(client.call(create(file, "child")).await),
        ErrorCode::NotDir
    );
    assert_eq!(
        code(
            client
                .call(MetaOp::Readdir {
                    ino: file,
                    after: None,
                    limit: 10
                })
                .await
        ),
        ErrorCode::NotDir
    );
    let huge = MetaOp::SetXattr {
        ino: file,
        name: b"user.big".to_vec(),
        value: vec![0; 20_000],
        mode: XattrMode::Either,
    };
    assert_eq!(code(client.call(huge).await), ErrorCode::TooBig);
    assert_eq!(
        code(
            client
                .call(MetaOp::GetXattr {
                    ino: file,
                    name: b"user.none".to_vec()
                })
                .await
        ),
        ErrorCode::NoAttr
    );

    let a = entry_ino(
        client
            .call(MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: b"a".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .unwrap(),
    );
    let b = entry_ino(
        client
            .call(MetaOp::Mkdir {
                parent: a,
                name: b"b".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .unwrap(),
    );
    let rename_loop = MetaOp::Rename {
        parent: InodeId::ROOT,
        name: b"a".to_vec(),
        new_parent: b,
        new_name: b"a".to_vec(),
        mode: RenameMode::Replace,
    };
    assert_eq!(
        code(client.call(rename_loop).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .call(MetaOp::Rmdir {
                    parent: InodeId::ROOT,
                    name: b"a".to_vec()
                })
                .await
        ),
        ErrorCode::NotEmpty
    );
    assert_eq!(
        code(
            client
                .call(MetaOp::Unlink {
                    parent: InodeId::ROOT,
                    name: b"a".to_vec()
                })
                .await
        ),
        ErrorCode::IsDir
    );

    // A retried request id gets the first reply, not a second apply.
    let id = RequestId::fresh();
    let first = client
        .call_with_id(id, create(InodeId::ROOT, "once"))
        .await
        .unwrap();
    let again = client
        .call_with_id(id, create(InodeId::ROOT, "once"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        code(client.call(create(InodeId::ROOT, "once")).await),
        ErrorCode::AlreadyExists
    );

    // Chunkserver-only and metaserver-only calls refuse a client.
    let err = client
        .leader_call(&AddMember {
            node: NodeId(9),
            address: "127.0.0.1:1".into(),
            voter: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongRole);
    // Garbage where Raft messages are expected, from a genuine metaserver.
    let peer = pki.client("test-meta");
    let err = peer
        .call_bulk(
            Peer::new(m.addr, Role::Meta),
            &tessera_meta::network::RaftAppend,
            Bytes::from_static(b"\xff\xff\xff garbage"),
            1 << 20,
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Malformed);
    // `tessera admin status` reports the group through the CLI.
    let client_toml = root.path().join("client.toml");
    let ca = pki.dir.display();
    std::fs::write(
        &client_toml,
        format!("meta = [\"{}\"]\n[tls]\nca = \"{ca}/ca.crt\"\ncert = \"{ca}/test-client.crt\"\nkey = \"{ca}/test-client.key\"\n", m.addr),
    )
    .unwrap();
    let output = std::process::Command::new(common::tessera_bin())
        .args(["admin", "status", "--config"])
        .arg(&client_toml)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("leader 1") && text.contains("leader"),
        "{text}"
    );
    // A policy the cluster cannot satisfy: no chunkservers at all.
    let err = client
        .call(MetaOp::AllocateChunk {
            ino: file,
            exclude: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSpace, "{err}");
    assert!(err.message.contains("chunkservers"), "{err}");
}

fn chunk_config(root: &Path, pki: &Pki, name: &str, meta: SocketAddr) -> PathBuf {
    pki.issue(Role::Chunk, name);
    let disk = root.join(format!("{name}-disk"));
    std::fs::create_dir_all(&disk).unwrap();
    let path = root.join(format!("{name}.toml"));
    let ca = pki.dir.display();
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
listen = "127.0.0.1:0"
token_key = "{ca}/token.key"
meta = ["{meta}"]
heartbeat_interval_ms = 300
[tls]
ca = "{ca}/ca.crt"
cert = "{ca}/{name}.crt"
key = "{ca}/{name}.key"
[transport]
mtu_upper_bound_bytes = 65527
[[disks]]
path = "{disk}"
reserve_bytes = 0
[scrub]
enabled = false
"#,
            disk = disk.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunkservers_register_and_chunks_are_placed_committed_and_collected() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let (m, _daemon) = single(root.path(), &pki).await;
    let mut chunks = Vec::new();
    for i in 1..=3 {
        let name = format!("chunk-{i}");
        let config = chunk_config(root.path(), &pki, &name, m.addr);
        chunks.push(Daemon::start(
            &["chunk", "--config", config.to_str().unwrap()],
            &root.path().join(format!("{name}.log")),
        ));
    }
    let status = wait_for(&pki, m.addr, "three live chunkservers", |s| {
        s.chunkservers
            .iter()
            .filter(|c| c.alive && c.free_bytes > 0)
            .count()
            == 3
    })
    .await;
    assert!(status.chunkservers.iter().all(|c| c.capacity_bytes > 0));

    let client = meta_client(&pki, "test-client", &[&m]);
    let file = entry_ino(client.call(create(InodeId::ROOT, "data")).await.unwrap());
    let MetaReply::Chunk(placement) = client
        .call(MetaOp::AllocateChunk {
            ino: file,
            exclude: vec![],
        })
        .await
        .unwrap()
    else {
        panic!("no placement")
    };
    assert_eq!(placement.pieces.len(), 3);
    let nodes: BTreeSet<_> = placement.pieces.iter().map(|p| p.node).collect();
    assert_eq!(nodes.len(), 3, "two pieces on one node");

    // Write the piece to every replica with the minted token, then commit.
    let data = common::pattern(5, 300_000);
    let rpc = pki.client("test-client");
    for piece in &placement.pieces {
        let msg = WritePiece {
            piece: PieceId {
                chunk: placement.chunk,
                index: piece.index,
            },
            length: data.len() as u64,
            checksum: checksum_of(&data),
            token: placement.token,
        };
        let addr: SocketAddr = piece.address.parse().unwrap();
        let mut call = rpc
            .open(
                Peer::new(addr, Role::Chunk),
                &msg,
                data.len() as u64,
                CallOptions::default(),
            )
            .await
            .unwrap();
        call.write(&data).await.unwrap();
        call.finish().await.unwrap();
    }
    let extent = Extent {
        offset: 0,
        length: data.len() as u64,
        chunk: placement.chunk,
        chunk_offset: 0,
    };
    let commit = MetaOp::CommitExtents {
        ino: file,
        extents: vec![extent],
        chunk_lengths: vec![(placement.chunk, data.len() as u64)],
        piece_checksums: placement
            .pieces
            .iter()
            .map(|piece| (placement.chunk, piece.index, checksum_of(&data)))
            .collect(),
        min_size: data.len() as u64,
    };
    client.call(commit).await.unwrap();
    let MetaReply::Layout {
        size,
        extents,
        chunks: placements,
        ..
    } = client
        .call(MetaOp::GetLayout {
            ino: file,
            offset: 0,
            length: u64::MAX,
        })
        .await
        .unwrap()
    else {
        panic!("no layout")
    };
    assert_eq!(
        (size, extents.len(), placements.len()),
        (data.len() as u64, 1, 1)
    );
    let addr: SocketAddr = placements[0].pieces[1].address.parse().unwrap();
    let read = ReadPiece {
        piece: PieceId {
            chunk: placement.chunk,
            index: placements[0].pieces[1].index,
        },
        offset: 0,
        length: data.len() as u64,
        token: placements[0].token,
    };
    let (_, back) = rpc
        .call_bulk(
            Peer::new(addr, Role::Chunk),
            &read,
            Bytes::new(),
            data.len(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert!(back == data);

    // Deleting the file frees the chunk: heartbeats carry the deletions.
    client
        .call(MetaOp::Unlink {
            parent: InodeId::ROOT,
            name: b"data".to_vec(),
        })
        .await
        .unwrap();
    let meta_rpc = pki.client("test-meta");
    let deadline = Instant::now() + Duration::from_secs(30);
    for piece in &placement.pieces {
        let addr: SocketAddr = piece.address.parse().unwrap();
        loop {
            let listed = meta_rpc
                .call(
                    Peer::new(addr, Role::Chunk),
                    &ListPieces {
                        after: None,
                        limit: 100,
                    },
                    CallOptions::default(),
                )
                .await
                .unwrap();
            if listed.pieces.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the unreferenced chunk was never deleted from {addr}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
