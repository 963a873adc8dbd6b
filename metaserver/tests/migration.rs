// The namespace written by the version that kept it in memory (layout 1)
// is converted on the first start of this one.
//
// `fixtures/meta-layout1.tar.gz` is the metaserver folder of a `tessera dev`
// run by that version, through its FUSE mount: directories three deep, a
// 3 MB file, a file overwritten in 50 places (over 64 extents), a hard link
// across directories, a symlink, a fifo, xattrs on a file and a directory,
// 50 small files of which one was renamed away and one unlinked.

use std::path::Path;
use std::sync::Arc;
use tessera_meta::log_store::{CF_LOG, CF_RAFT};
use tessera_meta::namespace::Namespace;
use tessera_meta::sm_store::{CF_STATE, StateMachine};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{FileKind, MetaOp, MetaReply, Policy};

fn open_db(dir: &Path) -> Arc<rocksdb::DB> {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    Arc::new(rocksdb::DB::open_cf(&options, dir, [CF_LOG, CF_RAFT, CF_STATE]).unwrap())
}

fn lookup(ns: &Namespace, path: &str) -> tessera_proto::meta::Attr {
    let mut ino = InodeId::ROOT;
    let mut attr = ns.attr(ino).unwrap();
    for name in path.split('/') {
        let op = MetaOp::Lookup {
            parent: ino,
            name: name.as_bytes().to_vec(),
        };
        match ns.read(&op) {
            Ok(MetaReply::Entry(found)) => {
                ino = found.ino;
                attr = found;
            }
            other => panic!("lookup {path} at {name}: {other:?}"),
        }
    }
    attr
}

fn xattr(ns: &Namespace, ino: InodeId, name: &str) -> Vec<u8> {
    match ns.read(&MetaOp::GetXattr {
        ino,
        name: name.as_bytes().to_vec(),
    }) {
        Ok(MetaReply::Xattr(value)) => value,
        other => panic!("xattr {name} of {ino}: {other:?}"),
    }
}

fn entries(ns: &Namespace, dir: InodeId) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = None;
    loop {
        let Ok(MetaReply::Dir { entries, more }) = ns.read(&MetaOp::Readdir {
            ino: dir,
            after: after.clone(),
            limit: 7,
        }) else {
            panic!("readdir {dir}");
        };
        for entry in entries {
            after = Some(entry.name.clone());
            names.push(String::from_utf8(entry.name).unwrap());
        }
        if !more {
            return names;
        }
    }
}

#[test]
fn a_layout1_folder_is_converted_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meta-layout1.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "unpack {}", fixture.display());
    let data = dir.path().join("meta");

    let records = {
        let db = open_db(&data);
        let sm = StateMachine::open(db, Policy::Replicas(3), 0, 1 << 20).expect("open");
        let state = sm.shared.read();
        let ns = &state.ns;
        ns.check()
            .expect("the converted namespace passes the whole check");
        state
            .check_chunk_indexes()
            .expect("the chunk indexes are built from the old chunk map");

        let f1 = lookup(ns, "a/f1");
        assert_eq!((f1.kind, f1.nlink, f1.size), (FileKind::File, 2, 6));
        assert_eq!(lookup(ns, "d/f1link").ino, f1.ino);
        assert_eq!(xattr(ns, f1.ino, "user.color"), b"blue");
        let b = lookup(ns, "a/b");
        assert_eq!(xattr(ns, b.ino, "user.dir"), b"x");
        let sym = lookup(ns, "d/sym");
        assert_eq!(sym.kind, FileKind::Symlink);
        assert!(matches!(
            ns.read(&MetaOp::Readlink { ino: sym.ino }),
            Ok(MetaReply::Target(t)) if t == b"../a/f1"
        ));
        assert_eq!(lookup(ns, "d/fifo").kind, FileKind::Fifo);
        let big = lookup(ns, "a/b/big");
        assert_eq!(big.size, 3_000_000);
        let (size, layout) = ns.layout(big.ino, 0, u64::MAX).unwrap();
        assert_eq!(size, 3_000_000);
        assert_eq!(layout.iter().map(|e| e.length).sum::<u64>(), 3_000_000);
        for extent in &layout {
            assert!(ns.chunk_refs(extent.chunk) >= 1);
        }
        let frag = lookup(ns, "a/frag");
        assert_eq!(frag.size, 400 * 1024);
        assert_eq!(ns.fragmented(), [frag.ino], "the fragmented index is built");
        let c = lookup(ns, "a/b/c");
        let names = entries(ns, c.ino);
        assert_eq!(names.len(), 48);
        assert!(!names.contains(&"n49".to_string()) && !names.contains(&"n50".to_string()));
        assert_eq!(lookup(ns, "e/moved").size, 2);
        assert_eq!(ns.dir_totals(c.ino).unwrap().entries, 48);
        let root = ns.dir_totals(InodeId::ROOT).unwrap();
        assert_eq!(root.inodes + 1, ns.inode_count());
        // f1, big, frag, n1..n48 (9 of one byte, 39 of two), e/moved.
        assert_eq!(root.bytes, 6 + 3_000_000 + 400 * 1024 + 87 + 2);
        ns.records()
    };

    // The second start finds the new layout and changes nothing.
    let db = open_db(&data);
    let sm = StateMachine::open(db, Policy::Replicas(3), 0, 1 << 20).expect("reopen");
    assert_eq!(sm.shared.read().ns.records(), records);
}
