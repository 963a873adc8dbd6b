//! Inline bytes: the layer under the extents, through writes, chunk
//! commits, truncates, concat, swaps and removal, against a byte model.
use super::*;
use proptest::prelude::*;

fn write_inline(ns: &mut Namespace, ino: InodeId, offset: u64, data: &[u8]) -> Result<Attr, Error> {
    let op = MetaOp::WriteInline {
        ino,
        writes: vec![(offset, data.to_vec())],
        min_size: 0,
        set: SetAttr::default(),
    };
    ns.apply(&op, T0).map(|reply| entry(Ok(reply)))
}

fn truncate(ns: &mut Namespace, ino: InodeId, size: u64) {
    let op = MetaOp::SetAttr {
        ino,
        set: SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
    };
    ns.apply(&op, T0).unwrap();
}

/// The file's bytes as a reader composes them: inline bytes, then the
/// extents' bytes (from `chunks`) over them, zeros elsewhere.
fn read(ns: &Namespace, ino: InodeId, chunks: &BTreeMap<ChunkId, Vec<u8>>) -> Vec<u8> {
    let (size, extents) = ns.layout(ino, 0, u64::MAX).unwrap();
    let mut out = vec![0u8; size as usize];
    let inline = ns.inline_bytes(ino);
    out[..inline.len()].copy_from_slice(&inline);
    for extent in extents {
        let chunk = &chunks[&extent.chunk];
        let from = extent.chunk_offset as usize;
        out[extent.offset as usize..(extent.offset + extent.length) as usize]
            .copy_from_slice(&chunk[from..from + extent.length as usize]);
    }
    out
}

#[test]
fn inline_writes_grow_the_file_and_stop_at_extents() {
    let mut ns = fixture();
    let attr = write_inline(&mut ns, F, 0, b"hello").unwrap();
    assert_eq!(attr.size, 5);
    let attr = write_inline(&mut ns, F, 10, b"world").unwrap();
    assert_eq!(attr.size, 15);
    assert_eq!(ns.inline_bytes(F), b"hello\0\0\0\0\0world");
    // A write past the hard cap is refused and changes nothing.
    let too_far = write_inline(&mut ns, F, INLINE_MAX_BYTES - 1, b"ab").unwrap_err();
    assert_eq!(too_far.code, ErrorCode::InvalidArgument);
    assert_eq!(ns.attr(F).unwrap().size, 15);
    // Directories and other kinds take none.
    assert_eq!(
        write_inline(&mut ns, D, 0, b"x").unwrap_err().code,
        ErrorCode::IsDir
    );
    // Once extents exist, inline writes are refused: they would land under
    // newer bytes.
    ns.commit_extents(F, &[ext(2, 2, 9, 0)], 0, T0).unwrap();
    assert_eq!(
        write_inline(&mut ns, F, 0, b"x").unwrap_err().code,
        ErrorCode::NotInline
    );
    let chunks = BTreeMap::from([(ChunkId(9), b"LL".to_vec())]);
    assert_eq!(read(&ns, F, &chunks), b"heLLo\0\0\0\0\0world");
    ns.check().unwrap();
    // A truncate cuts the inline bytes too, so growing reads zeros.
    truncate(&mut ns, F, 3);
    truncate(&mut ns, F, 8);
    assert_eq!(ns.inline_bytes(F), b"hel");
    assert_eq!(read(&ns, F, &chunks), b"heL\0\0\0\0\0");
    truncate(&mut ns, F, 0);
    assert!(ns.inline_bytes(F).is_empty());
    ns.check().unwrap();
}

#[test]
fn removal_concat_and_swap_keep_inline_bytes_with_their_file() {
    let mut ns = fixture();
    write_inline(&mut ns, F, 0, b"small").unwrap();
    let target = create(&mut ns, ROOT, "target");
    // Concat cannot move inline bytes: refused, nothing changes.
    let concat = ns.concat(target, &[F], T0).unwrap_err();
    assert_eq!(concat.code, ErrorCode::NotInline);
    assert_eq!(ns.inline_bytes(F), b"small");
    // A swap gives the target the source's inline bytes (compaction's copy
    // of a small file) and drops the target's own.
    write_inline(&mut ns, target, 0, b"small").unwrap();
    let copy = create(&mut ns, ROOT, "copy");
    write_inline(&mut ns, copy, 0, b"SMALL").unwrap();
    let version = ns.attr(target).unwrap().version;
    ns.swap_layout(target, copy, version).unwrap();
    assert_eq!(ns.inline_bytes(target), b"SMALL");
    assert!(ns.inline_bytes(copy).is_empty());
    truncate(&mut ns, copy, 0);
    ns.check().unwrap();
    // Removal takes the record with the inode.
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("f"),
        },
        T0,
    )
    .unwrap();
    assert!(ns.inline_bytes(F).is_empty());
    ns.check().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    /// Inline if the file takes it, else as a chunk commit (what the
    /// client's writer does on `NotInline`).
    Write {
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// Straight to a chunk (a write past the writer's limit).
    ChunkWrite {
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        size: u64,
    },
}

const LIMIT: u64 = 4096;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..LIMIT, 1usize..1500, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write {
            offset,
            len: len.min((LIMIT - offset) as usize).max(1),
            seed,
        }),
        1 => (0..3 * LIMIT, 1usize..3000, any::<u8>())
            .prop_map(|(offset, len, seed)| Op::ChunkWrite { offset, len, seed }),
        2 => (0..2 * LIMIT).prop_map(|size| Op::Truncate { size }),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A file crossing the inline limit by appends, overwrites and
    /// truncates reads exactly as a byte vector given the same operations.
    #[test]
    fn inline_and_chunk_layers_match_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut ns = fixture();
        let mut model: Vec<u8> = Vec::new();
        let mut chunks: BTreeMap<ChunkId, Vec<u8>> = BTreeMap::new();
        let mut next_chunk = 100;
        let mut commit = |ns: &mut Namespace, chunks: &mut BTreeMap<ChunkId, Vec<u8>>, offset: u64, data: Vec<u8>| {
            next_chunk += 1;
            let length = data.len() as u64;
            chunks.insert(ChunkId(next_chunk), data);
            ns.commit_extents(F, &[ext(offset, length, next_chunk, 0)], 0, T0).unwrap();
        };
        for op in ops {
            match op {
                Op::Write { offset, len, seed } => {
                    let data = bytes(len, seed);
                    match write_inline(&mut ns, F, offset, &data) {
                        Ok(_) => {}
                        Err(e) if e.code == ErrorCode::NotInline => {
                            commit(&mut ns, &mut chunks, offset, data.clone());
                        }
                        Err(e) => panic!("inline write failed: {e}"),
                    }
                    let end = offset as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                Op::ChunkWrite { offset, len, seed } => {
                    let data = bytes(len, seed);
                    commit(&mut ns, &mut chunks, offset, data.clone());
                    let end = offset as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                Op::Truncate { size } => {
                    truncate(&mut ns, F, size);
                    model.resize(size as usize, 0);
                }
            }
            prop_assert_eq!(read(&ns, F, &chunks), model.clone());
            prop_assert!(ns.check().is_ok(), "{:?}", ns.check());
        }
    }
}
