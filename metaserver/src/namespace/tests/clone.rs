//! Clones share chunks by reference; steps apply whole or not at all.
use super::*;

#[test]
fn a_clone_shares_chunks_and_each_file_keeps_them_until_it_drops_them() {
    let mut ns = fixture();
    ns.commit_extents(F, &[ext(0, 100, 1, 0), ext(100, 50, 2, 0)], 150, T0)
        .unwrap();
    let copy = create(&mut ns, ROOT, "copy");
    let attr = entry(ns.apply(
        &MetaOp::CloneFile {
            source: F,
            target: copy,
        },
        T0 + 5,
    ));
    assert_eq!((attr.size, attr.mtime_ns), (150, T0 + 5));
    assert_eq!(ns.layout(copy, 0, u64::MAX), ns.layout(F, 0, u64::MAX));
    assert_eq!(
        (ns.chunk_refs(ChunkId(1)), ns.chunk_refs(ChunkId(2))),
        (2, 2)
    );
    // Overwriting the source's start drops its reference to chunk 1 only.
    ns.commit_extents(F, &[ext(0, 100, 3, 0)], 0, T0).unwrap();
    assert_eq!(ns.chunk_refs(ChunkId(1)), 1);
    assert!(ns.take_released_chunks().is_empty());
    assert_eq!(ns.layout(copy, 0, 100).unwrap().1, vec![ext(0, 100, 1, 0)]);
    // Removing the clone releases what nothing else holds.
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("copy"),
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
    assert_eq!(ns.chunk_refs(ChunkId(2)), 1);
}

#[test]
fn a_clone_copies_inline_bytes_and_needs_an_empty_target() {
    let mut ns = fixture();
    let write = MetaOp::WriteInline {
        ino: F,
        writes: vec![(0, b"small".to_vec())],
        min_size: 0,
        set: SetAttr::default(),
    };
    ns.apply(&write, T0).unwrap();
    let copy = create(&mut ns, ROOT, "copy");
    ns.apply(
        &MetaOp::CloneFile {
            source: F,
            target: copy,
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.inline_bytes(copy), b"small");
    assert_eq!(ns.attr(copy).unwrap().size, 5);
    // Not onto a file with bytes, not onto itself, not from a directory.
    for (source, target) in [(F, copy), (F, F), (D, copy)] {
        let before = ns.records();
        assert!(
            ns.apply(&MetaOp::CloneFile { source, target }, T0).is_err(),
            "{source} -> {target}"
        );
        assert_eq!(ns.records(), before);
    }
}

#[test]
fn steps_apply_in_order_and_a_failing_one_takes_back_the_rest() {
    let mut ns = fixture();
    let staged = create(&mut ns, D, "staged");
    let old = F;
    let keep = Step::Rename {
        parent: ROOT,
        name: n("f"),
        new_parent: E,
        new_name: n("v1"),
        mode: RenameMode::NoReplace,
    };
    let publish = Step::Rename {
        parent: D,
        name: n("staged"),
        new_parent: ROOT,
        new_name: n("f"),
        mode: RenameMode::NoReplace,
    };
    // The second step fails (its source is missing): nothing moved.
    let before = ns.records();
    ns.kv_mut().begin();
    let missing = Step::Unlink {
        parent: D,
        name: n("absent"),
    };
    let failed = ns.apply(
        &MetaOp::Steps {
            steps: vec![keep.clone(), missing],
        },
        T0,
    );
    assert_eq!(failed.unwrap_err().code, ErrorCode::NotFound);
    ns.kv_mut().rollback();
    assert_eq!(ns.records(), before);
    ns.apply(
        &MetaOp::Steps {
            steps: vec![keep, publish],
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.child(ROOT, b"f"), Some(staged));
    assert_eq!(ns.child(E, b"v1"), Some(old));
    let too_many = MetaOp::Steps {
        steps: vec![
            Step::Unlink {
                parent: E,
                name: n("v1"),
            };
            STEPS_MAX + 1
        ],
    };
    assert_eq!(
        ns.apply(&too_many, T0).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn a_write_open_in_a_versioned_bucket_keeps_the_version_it_replaces() {
    use tessera_proto::versions::{STORE_DIR, XATTR_VERSION_ID, XATTR_VERSIONING, file_name};
    let mut ns = fixture();
    let bucket = mkdir(&mut ns, ROOT, "bucket");
    let dir = mkdir(&mut ns, bucket, "photos");
    let file = create(&mut ns, dir, "a.jpg");
    ns.commit_extents(file, &[ext(0, 100, 9, 0)], 100, T0)
        .unwrap();
    let set = |ns: &mut Namespace, ino: InodeId, name: &str, value: &str| {
        ns.apply(
            &MetaOp::SetXattr {
                ino,
                name: n(name),
                value: n(value),
                mode: XattrMode::Either,
            },
            T0,
        )
        .unwrap();
    };
    set(&mut ns, file, "user.s3.etag", "etag-record");
    let open = |id: &str| MetaOp::OpenWrite {
        ino: file,
        version_id: id.to_string(),
    };
    let first = "00000000000000010000000000000001";
    let second = "00000000000000000000000000000002";
    // Unversioned: a plain open.
    ns.apply(&open(first), T0 + 1).unwrap();
    assert!(ns.child(bucket, STORE_DIR).is_none());
    set(&mut ns, bucket, XATTR_VERSIONING, "Enabled");
    ns.apply(&open(first), T0 + 2).unwrap();
    let store = ns.child(bucket, STORE_DIR).expect("the version store");
    let key_dir = ns
        .child(ns.child(store, b"photos").unwrap(), b"a.jpg")
        .unwrap();
    let kept = ns
        .child(key_dir, &file_name("null"))
        .expect("the null version kept");
    assert_eq!(ns.layout(kept, 0, u64::MAX), ns.layout(file, 0, u64::MAX));
    assert_eq!(ns.chunk_refs(ChunkId(9)), 2);
    assert_eq!(
        ns.attr(kept).unwrap().mtime_ns,
        ns.attr(file).unwrap().mtime_ns
    );
    let xattr = |ns: &Namespace, ino: InodeId, name: &str| match ns
        .read(&MetaOp::GetXattr { ino, name: n(name) })
    {
        Ok(MetaReply::Xattr(v)) => Some(v),
        _ => None,
    };
    assert_eq!(
        xattr(&ns, kept, "user.s3.etag").as_deref(),
        Some(&b"etag-record"[..])
    );
    assert_eq!(xattr(&ns, kept, XATTR_VERSION_ID), None);
    assert_eq!(
        xattr(&ns, file, XATTR_VERSION_ID).as_deref(),
        Some(first.as_bytes())
    );
    // The next write-open keeps the file under the id it took.
    ns.apply(&open(second), T0 + 3).unwrap();
    assert!(ns.child(key_dir, &file_name(first)).is_some());
    assert_eq!(
        xattr(&ns, file, XATTR_VERSION_ID).as_deref(),
        Some(second.as_bytes())
    );
    // A malformed id is refused and changes nothing.
    let before = ns.records();
    ns.kv_mut().begin();
    assert_eq!(
        ns.apply(&open("../x"), T0 + 4).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    ns.kv_mut().rollback();
    assert_eq!(ns.records(), before);
}
