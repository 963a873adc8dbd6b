//! Random writes, overwrites, truncates and appends through `tessera-client`
//! against a real cluster, compared with the same operations on a plain
//! byte vector. Each case uses its own file; the file is read back whole and
//! in random ranges after every flush.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tessera_client::{Client, FileReader, FileWriter};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{FileKind, MetaOp, SetAttr};

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        seed: u64,
    },
    Append {
        len: usize,
        seed: u64,
    },
    Truncate {
        size: u64,
    },
    Flush,
    /// Closes the writer (after a flush) and opens a new one.
    Reopen,
    Read {
        offset: u64,
        len: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..3 << 20, 1usize..400_000, any::<u64>())
            .prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => (1usize..300_000, any::<u64>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        1 => (0u64..4 << 20).prop_map(|size| Op::Truncate { size }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => (0u64..4 << 20, 0u64..2 << 20).prop_map(|(offset, len)| Op::Read { offset, len }),
    ]
}

/// Small files around the client's inline limit: appends, overwrites and
/// truncates that carry a file into chunks and back under the limit.
fn small_op() -> impl Strategy<Value = Op> {
    let limit = tessera_proto::config::IoOptions::default().inline_max_bytes;
    prop_oneof![
        4 => (0..2 * limit, 1usize..limit as usize, any::<u64>())
            .prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        3 => (1usize..6000, any::<u64>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        2 => (0..2 * limit).prop_map(|size| Op::Truncate { size }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => (0..2 * limit, 0..limit).prop_map(|(offset, len)| Op::Read { offset, len }),
    ]
}

async fn read_all(client: &Arc<Client>, ino: InodeId) -> Vec<u8> {
    let mut reader = FileReader::open(client.clone(), ino).await.expect("open");
    let mut out = Vec::new();
    while (out.len() as u64) < reader.size() {
        let bytes = reader.read(out.len() as u64, 1 << 20).await.expect("read");
        assert!(!bytes.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&bytes);
    }
    out
}

async fn run_case(client: &Arc<Client>, case: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let meta = client.meta();
    let created = meta
        .call(MetaOp::Create {
            parent: InodeId::ROOT,
            name: format!("case-{case}").into_bytes(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        })
        .await
        .expect("create");
    let ino = tessera_client::path::attr_of(created).expect("attr").ino;
    let mut model: Vec<u8> = Vec::new();
    let mut writer = FileWriter::new(client.clone(), ino);
    for op in ops {
        match op {
            Op::Write { offset, len, seed } => {
                let data = common::pattern(*seed, *len);
                writer.write(*offset, &data).await.expect("write");
                let end = *offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[*offset as usize..end].copy_from_slice(&data);
            }
            Op::Append { len, seed } => {
                let data = common::pattern(*seed, *len);
                let at = model.len() as u64;
                writer.write(at, &data).await.expect("append");
                model.extend_from_slice(&data);
            }
            Op::Truncate { size } => {
                writer.flush().await.expect("flush before truncate");
                meta.call(MetaOp::SetAttr {
                    ino,
                    set: SetAttr {
                        size: Some(*size),
                        ..SetAttr::default()
                    },
                })
                .await
                .expect("truncate");
                model.resize(*size as usize, 0);
            }
            Op::Flush => {
                writer.flush().await.expect("flush");
                prop_assert_eq!(read_all(client, ino).await, model.clone());
            }
            Op::Reopen => {
                writer.flush().await.expect("flush");
                writer = FileWriter::new(client.clone(), ino);
            }
            Op::Read { offset, len } => {
                writer.flush().await.expect("flush");
                let mut reader = FileReader::open(client.clone(), ino).await.expect("open");
                let got = reader.read(*offset, *len).await.expect("read");
                let from = (*offset as usize).min(model.len());
                let to = (*offset as usize)
                    .saturating_add(*len as usize)
                    .min(model.len());
                prop_assert_eq!(&got[..], &model[from..to]);
            }
        }
    }
    writer.flush().await.expect("final flush");
    prop_assert_eq!(read_all(client, ino).await, model);
    Ok(())
}

#[test]
fn random_file_operations_match_a_local_model() {
    let dir = tempfile::Builder::new()
        .prefix("tessera-file-model")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = dir.path().join("cluster");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("up")
        .arg(&root)
        .args(["--meta", "1", "--chunk", "3", "--base-port", "22500"])
        .args(["--bin", common::tessera_bin(), "--timeout", "120"])
        .status()
        .expect("local-cluster.sh");
    assert!(status.success());
    struct Down<'a>(&'a Path, &'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(self.0)
                .arg("down")
                .arg(self.1)
                .status();
        }
    }
    let _down = Down(&script, &root);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let text = std::fs::read_to_string(root.join("client.toml")).expect("client.toml");
    let config: tessera_proto::config::ClientConfig = toml::from_str(&text).expect("parse");
    let client = runtime.block_on(Client::connect(&config)).expect("connect");

    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&proptest::collection::vec(op(), 1..16), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.block_on(run_case(&client, n, &ops))
        })
        .expect("operations diverged from the model");

    // The same against small files, which start inline and cross the limit.
    runner
        .run(&proptest::collection::vec(small_op(), 1..16), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.block_on(run_case(&client, n, &ops))
        })
        .expect("operations on small files diverged from the model");

    runtime.block_on(fragmented_file_reads_match(&client));
}

/// A file left with many more extents than one layout page holds (random
/// writes over it): sequential and random reads, through a reader opened
/// plainly and one built from an `OpenRead` answer, match a local copy.
/// Readers of such files ask layouts for only the range a read needs.
async fn fragmented_file_reads_match(client: &Arc<Client>) {
    let meta = client.meta();
    let created = meta
        .call(MetaOp::Create {
            parent: InodeId::ROOT,
            name: b"fragmented".to_vec(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        })
        .await
        .expect("create");
    let ino = tessera_client::path::attr_of(created).expect("attr").ino;
    let size = 8usize << 20;
    let mut model = common::pattern(1, size);
    let mut writer = FileWriter::new(client.clone(), ino);
    writer.write(0, &model).await.expect("base write");
    // 1,500 writes of 1 to 4 KiB at scattered offsets: over a thousand
    // extents, three layout pages' worth.
    let mut state = 0x5eed_u64;
    let mut next = |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    for i in 0..1500u64 {
        let len = 1 + next(4096) as usize;
        let offset = next((size - len) as u64) as usize;
        let data = common::pattern(100 + i, len);
        writer
            .write(offset as u64, &data)
            .await
            .expect("scattered write");
        model[offset..offset + len].copy_from_slice(&data);
    }
    writer.flush().await.expect("flush");
    assert_eq!(read_all(client, ino).await, model, "sequential read");

    let reply = meta
        .call(MetaOp::OpenRead {
            ino,
            length: tessera_client::read::OPEN_LAYOUT_BYTES,
            register: false,
        })
        .await
        .expect("open read");
    let tessera_proto::meta::MetaReply::Opened {
        layout: Some(layout),
        ..
    } = reply
    else {
        panic!("open read answered {reply:?}");
    };
    let readers = [
        FileReader::open(client.clone(), ino).await.expect("open"),
        FileReader::opened(client.clone(), ino, *layout)
            .await
            .expect("opened"),
    ];
    for mut reader in readers {
        for _ in 0..200 {
            let offset = next(size as u64) as usize;
            let len = 1 + next(128 * 1024) as usize;
            let got = reader.read(offset as u64, len as u64).await.expect("read");
            let to = (offset + len).min(size);
            assert_eq!(&got[..], &model[offset..to], "read of {len} at {offset}");
        }
    }
}
