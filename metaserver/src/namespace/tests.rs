//! The namespace rules on their own: entries, renames, links, xattrs, open
//! handles, extents and their chunk references, persistence.
use super::*;
use std::collections::BTreeMap;

const T0: i64 = 1_000;

fn n(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn entry(reply: Result<MetaReply, Error>) -> Attr {
    match reply {
        Ok(MetaReply::Entry(attr)) | Ok(MetaReply::Attr(attr)) => attr,
        other => panic!("expected an attr, got {other:?}"),
    }
}

fn create_op(parent: InodeId, name: &str) -> MetaOp {
    MetaOp::Create {
        parent,
        name: n(name),
        kind: FileKind::File,
        mode: 0o644,
        uid: 10,
        gid: 20,
        rdev: 0,
        exclusive: true,
    }
}

fn mkdir_op(parent: InodeId, name: &str) -> MetaOp {
    MetaOp::Mkdir {
        parent,
        name: n(name),
        mode: 0o755,
        uid: 10,
        gid: 20,
    }
}

fn rename_op(
    parent: InodeId,
    name: &str,
    new_parent: InodeId,
    new_name: &str,
    mode: RenameMode,
) -> MetaOp {
    MetaOp::Rename {
        parent,
        name: n(name),
        new_parent,
        new_name: n(new_name),
        mode,
    }
}

fn create(ns: &mut Namespace, parent: InodeId, name: &str) -> InodeId {
    entry(ns.apply(&create_op(parent, name), T0)).ino
}

fn mkdir(ns: &mut Namespace, parent: InodeId, name: &str) -> InodeId {
    entry(ns.apply(&mkdir_op(parent, name), T0)).ino
}

fn lookup(ns: &mut Namespace, parent: InodeId, name: &str) -> Result<Attr, Error> {
    ns.apply(
        &MetaOp::Lookup {
            parent,
            name: n(name),
        },
        T0,
    )
    .map(|reply| entry(Ok(reply)))
}

fn names(ns: &mut Namespace, dir: InodeId) -> Vec<String> {
    match ns.apply(
        &MetaOp::Readdir {
            ino: dir,
            after: None,
            limit: 0,
        },
        T0,
    ) {
        Ok(MetaReply::Dir { entries, .. }) => entries
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect(),
        other => panic!("readdir: {other:?}"),
    }
}

fn ext(offset: u64, length: u64, chunk: u64, chunk_offset: u64) -> Extent {
    Extent {
        offset,
        length,
        chunk: ChunkId(chunk),
        chunk_offset,
    }
}

const ROOT: InodeId = InodeId::ROOT;
const D: InodeId = InodeId(2);
const SUB: InodeId = InodeId(3);
const F: InodeId = InodeId(4);
const L: InodeId = InodeId(5);
const P: InodeId = InodeId(6);
const E: InodeId = InodeId(7);

/// root: d/ (holding sub/), f (file with xattr user.x), l -> f, p (fifo), e/ (empty).
fn fixture() -> Namespace {
    let mut ns = Namespace::new(Policy::Replicas(3), T0);
    assert_eq!(mkdir(&mut ns, ROOT, "d"), D);
    assert_eq!(mkdir(&mut ns, D, "sub"), SUB);
    assert_eq!(create(&mut ns, ROOT, "f"), F);
    let symlink = MetaOp::Symlink {
        parent: ROOT,
        name: n("l"),
        target: n("f"),
        uid: 0,
        gid: 0,
    };
    assert_eq!(entry(ns.apply(&symlink, T0)).ino, L);
    let fifo = MetaOp::Create {
        parent: ROOT,
        name: n("p"),
        kind: FileKind::Fifo,
        mode: 0o600,
        uid: 0,
        gid: 0,
        rdev: 0,
        exclusive: true,
    };
    assert_eq!(entry(ns.apply(&fifo, T0)).ino, P);
    assert_eq!(mkdir(&mut ns, ROOT, "e"), E);
    let xattr = MetaOp::SetXattr {
        ino: F,
        name: n("user.x"),
        value: n("1"),
        mode: XattrMode::Either,
    };
    ns.apply(&xattr, T0).unwrap();
    ns
}

#[test]
fn errno_rules() {
    use ErrorCode::*;
    let long = "x".repeat(NAME_MAX_BYTES + 1);
    let longest = "x".repeat(NAME_MAX_BYTES);
    let with_kind = |kind: FileKind, exclusive: bool, name: &str| MetaOp::Create {
        parent: ROOT,
        name: n(name),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        exclusive,
    };
    let symlink = |name: &str, target: Vec<u8>| MetaOp::Symlink {
        parent: ROOT,
        name: n(name),
        target,
        uid: 0,
        gid: 0,
    };
    let link = |ino: InodeId, parent: InodeId, name: &str| MetaOp::Link {
        ino,
        parent,
        name: n(name),
    };
    let unlink = |parent: InodeId, name: &str| MetaOp::Unlink {
        parent,
        name: n(name),
    };
    let rmdir = |parent: InodeId, name: &str| MetaOp::Rmdir {
        parent,
        name: n(name),
    };
    let size = |ino: InodeId, size: u64| MetaOp::SetAttr {
        ino,
        set: SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
    };
    let get_x = |name: Vec<u8>| MetaOp::GetXattr { ino: F, name };
    let set_x = |name: &str, value: Vec<u8>, mode: XattrMode| MetaOp::SetXattr {
        ino: F,
        name: n(name),
        value,
        mode,
    };
    use RenameMode::{Exchange, NoReplace, Replace};
    let cases: Vec<(&str, MetaOp, Result<(), ErrorCode>)> = vec![
        ("empty name", create_op(ROOT, ""), Err(InvalidArgument)),
        (
            "slash in name",
            create_op(ROOT, "a/b"),
            Err(InvalidArgument),
        ),
        ("nul in name", create_op(ROOT, "a\0"), Err(InvalidArgument)),
        ("name too long", create_op(ROOT, &long), Err(NameTooLong)),
        ("longest name", create_op(ROOT, &longest), Ok(())),
        (
            "non-utf8 name",
            MetaOp::Unlink {
                parent: ROOT,
                name: vec![0xff, 0xfe],
            },
            Err(NotFound),
        ),
        ("create .", create_op(ROOT, "."), Err(AlreadyExists)),
        ("mkdir ..", mkdir_op(ROOT, ".."), Err(AlreadyExists)),
        ("symlink .", symlink(".", n("x")), Err(AlreadyExists)),
        ("link ..", link(F, ROOT, ".."), Err(AlreadyExists)),
        (
            "rename onto .",
            rename_op(ROOT, "f", D, ".", Replace),
            Err(AlreadyExists),
        ),
        ("unlink .", unlink(ROOT, "."), Err(InvalidArgument)),
        ("unlink ..", unlink(D, ".."), Err(InvalidArgument)),
        ("rmdir .", rmdir(D, "."), Err(InvalidArgument)),
        ("rmdir ..", rmdir(D, ".."), Err(NotEmpty)),
        (
            "rename ..",
            rename_op(D, "..", ROOT, "z", Replace),
            Err(InvalidArgument),
        ),
        (
            "missing inode",
            MetaOp::GetAttr { ino: InodeId(99) },
            Err(NotFound),
        ),
        ("missing parent", create_op(InodeId(99), "a"), Err(NotFound)),
        ("parent not a dir", create_op(F, "a"), Err(NotDir)),
        (
            "lookup missing",
            MetaOp::Lookup {
                parent: ROOT,
                name: n("zz"),
            },
            Err(NotFound),
        ),
        (
            "lookup in a file",
            MetaOp::Lookup {
                parent: F,
                name: n("zz"),
            },
            Err(NotDir),
        ),
        (
            "create a dir",
            with_kind(FileKind::Dir, false, "a"),
            Err(InvalidArgument),
        ),
        (
            "create a symlink",
            with_kind(FileKind::Symlink, false, "a"),
            Err(InvalidArgument),
        ),
        (
            "create a socket",
            with_kind(FileKind::Socket, false, "a"),
            Ok(()),
        ),
        (
            "create a device",
            with_kind(FileKind::BlockDevice, false, "a"),
            Ok(()),
        ),
        (
            "exclusive over a file",
            with_kind(FileKind::File, true, "f"),
            Err(AlreadyExists),
        ),
        (
            "open-create over a file",
            with_kind(FileKind::File, false, "f"),
            Ok(()),
        ),
        (
            "open-create over a dir",
            with_kind(FileKind::File, false, "d"),
            Err(AlreadyExists),
        ),
        (
            "open-create over a fifo",
            with_kind(FileKind::File, false, "p"),
            Err(AlreadyExists),
        ),
        ("mkdir existing", mkdir_op(ROOT, "f"), Err(AlreadyExists)),
        ("symlink existing", symlink("d", n("x")), Err(AlreadyExists)),
        (
            "symlink empty target",
            symlink("s", Vec::new()),
            Err(NotFound),
        ),
        (
            "symlink long target",
            symlink("s", vec![b'x'; SYMLINK_MAX_BYTES + 1]),
            Err(NameTooLong),
        ),
        (
            "symlink longest target",
            symlink("s", vec![b'x'; SYMLINK_MAX_BYTES]),
            Ok(()),
        ),
        (
            "readlink a file",
            MetaOp::Readlink { ino: F },
            Err(InvalidArgument),
        ),
        ("readlink", MetaOp::Readlink { ino: L }, Ok(())),
        ("link a dir", link(E, ROOT, "e2"), Err(NotPermitted)),
        ("link onto existing", link(F, ROOT, "p"), Err(AlreadyExists)),
        (
            "link missing inode",
            link(InodeId(99), ROOT, "x"),
            Err(NotFound),
        ),
        ("link into a file", link(F, P, "x"), Err(NotDir)),
        ("link", link(F, D, "f2"), Ok(())),
        ("unlink a dir", unlink(ROOT, "e"), Err(IsDir)),
        ("unlink missing", unlink(ROOT, "zz"), Err(NotFound)),
        ("unlink in a file", unlink(F, "zz"), Err(NotDir)),
        ("rmdir a file", rmdir(ROOT, "f"), Err(NotDir)),
        ("rmdir non-empty", rmdir(ROOT, "d"), Err(NotEmpty)),
        ("rmdir missing", rmdir(ROOT, "zz"), Err(NotFound)),
        ("rmdir", rmdir(ROOT, "e"), Ok(())),
        (
            "rename missing",
            rename_op(ROOT, "zz", ROOT, "y", Replace),
            Err(NotFound),
        ),
        (
            "rename into itself",
            rename_op(ROOT, "d", D, "d", Replace),
            Err(InvalidArgument),
        ),
        (
            "rename into a descendant",
            rename_op(ROOT, "d", SUB, "x", NoReplace),
            Err(InvalidArgument),
        ),
        (
            "rename noreplace existing",
            rename_op(ROOT, "f", ROOT, "p", NoReplace),
            Err(AlreadyExists),
        ),
        (
            "exchange with missing",
            rename_op(ROOT, "f", ROOT, "zz", Exchange),
            Err(NotFound),
        ),
        (
            "dir over non-dir",
            rename_op(ROOT, "e", ROOT, "f", Replace),
            Err(NotDir),
        ),
        (
            "non-dir over dir",
            rename_op(ROOT, "f", ROOT, "e", Replace),
            Err(IsDir),
        ),
        (
            "dir over non-empty dir",
            rename_op(ROOT, "e", ROOT, "d", Replace),
            Err(NotEmpty),
        ),
        (
            "dir over its ancestor",
            rename_op(D, "sub", ROOT, "d", Replace),
            Err(NotEmpty),
        ),
        (
            "exchange into own subtree",
            rename_op(ROOT, "d", D, "sub", Exchange),
            Err(InvalidArgument),
        ),
        (
            "exchange with an ancestor",
            rename_op(D, "sub", ROOT, "d", Exchange),
            Err(InvalidArgument),
        ),
        (
            "rename to a missing parent",
            rename_op(ROOT, "f", InodeId(99), "f", Replace),
            Err(NotFound),
        ),
        (
            "rename into a file",
            rename_op(ROOT, "f", P, "f", Replace),
            Err(NotDir),
        ),
        (
            "dir over empty dir",
            rename_op(D, "sub", ROOT, "e", Replace),
            Ok(()),
        ),
        (
            "exchange file and dir",
            rename_op(ROOT, "f", D, "sub", Exchange),
            Ok(()),
        ),
        (
            "readdir a file",
            MetaOp::Readdir {
                ino: F,
                after: None,
                limit: 0,
            },
            Err(NotDir),
        ),
        (
            "readdir missing",
            MetaOp::Readdir {
                ino: InodeId(99),
                after: None,
                limit: 0,
            },
            Err(NotFound),
        ),
        ("truncate a dir", size(D, 0), Err(IsDir)),
        ("truncate a symlink", size(L, 0), Err(InvalidArgument)),
        ("truncate a fifo", size(P, 0), Err(InvalidArgument)),
        (
            "truncate too large",
            size(F, FILE_SIZE_MAX_BYTES + 1),
            Err(FileTooLarge),
        ),
        (
            "truncate to the limit",
            size(F, FILE_SIZE_MAX_BYTES),
            Ok(()),
        ),
        ("xattr empty name", get_x(Vec::new()), Err(InvalidArgument)),
        (
            "xattr long name",
            get_x(vec![b'x'; XATTR_NAME_MAX_BYTES + 1]),
            Err(Range),
        ),
        ("xattr missing", get_x(n("user.y")), Err(NoAttr)),
        ("xattr", get_x(n("user.x")), Ok(())),
        (
            "xattr value too big",
            set_x(
                "user.y",
                vec![0; XATTR_VALUE_MAX_BYTES + 1],
                XattrMode::Either,
            ),
            Err(TooBig),
        ),
        (
            "xattr create existing",
            set_x("user.x", n("2"), XattrMode::Create),
            Err(AlreadyExists),
        ),
        (
            "xattr replace missing",
            set_x("user.y", n("2"), XattrMode::Replace),
            Err(NoAttr),
        ),
        (
            "xattr replace",
            set_x("user.x", n("2"), XattrMode::Replace),
            Ok(()),
        ),
        (
            "xattr remove missing",
            MetaOp::RemoveXattr {
                ino: F,
                name: n("user.y"),
            },
            Err(NoAttr),
        ),
        (
            "xattr list missing inode",
            MetaOp::ListXattr { ino: InodeId(99) },
            Err(NotFound),
        ),
        (
            "open missing",
            MetaOp::Open { ino: InodeId(99) },
            Err(NotFound),
        ),
        (
            "release missing",
            MetaOp::Release { ino: InodeId(99) },
            Err(NotFound),
        ),
        ("open a dir", MetaOp::Open { ino: D }, Ok(())),
        (
            "bad policy",
            MetaOp::SetPolicy {
                ino: D,
                policy: Policy::Replicas(0),
            },
            Err(InvalidArgument),
        ),
        (
            "bad ec policy",
            MetaOp::SetPolicy {
                ino: D,
                policy: Policy::Ec { data: 4, parity: 0 },
            },
            Err(InvalidArgument),
        ),
        (
            "policy of missing",
            MetaOp::GetPolicy { ino: InodeId(99) },
            Err(NotFound),
        ),
        ("statfs", MetaOp::StatFs, Err(Internal)),
        (
            "allocate",
            MetaOp::AllocateChunk {
                ino: F,
                exclude: vec![],
            },
            Err(Internal),
        ),
        (
            "layout",
            MetaOp::GetLayout {
                ino: F,
                offset: 0,
                length: 1,
            },
            Err(Internal),
        ),
        (
            "concat",
            MetaOp::Concat {
                target: F,
                sources: vec![],
            },
            Err(Internal),
        ),
    ];
    for (what, op, expected) in cases {
        let mut ns = fixture();
        let before = ns.records();
        let got = ns.apply(&op, T0 + 1).map(|_| ()).map_err(|err| err.code);
        assert_eq!(got, expected, "{what}: {op:?}");
        if got.is_err() {
            assert_eq!(ns.records(), before, "{what}: a failed op changed state");
        }
    }
}

#[test]
fn the_root_and_dot_entries() {
    let mut ns = fixture();
    let root = ns.attr(ROOT).unwrap();
    assert_eq!(
        (root.kind, root.mode, root.uid, root.gid),
        (FileKind::Dir, 0o755, 0, 0)
    );
    assert_eq!(root.nlink, 4, "root holds d and e");
    assert_eq!(root.size, DIR_SIZE);
    assert_eq!(lookup(&mut ns, ROOT, "..").unwrap().ino, ROOT);
    assert_eq!(lookup(&mut ns, ROOT, ".").unwrap().ino, ROOT);
    assert_eq!(lookup(&mut ns, SUB, "..").unwrap().ino, D);
    assert_eq!(lookup(&mut ns, SUB, ".").unwrap().ino, SUB);
    assert_eq!(ns.policy_of(SUB).unwrap(), Policy::Replicas(3));
    assert_eq!(ns.inode_count(), 7);
    assert_eq!(names(&mut ns, ROOT), ["d", "e", "f", "l", "p"]);
    let link = ns.attr(L).unwrap();
    assert_eq!((link.mode, link.size), (0o777, 1));
    assert_eq!(
        ns.apply(&MetaOp::Readlink { ino: L }, T0).unwrap(),
        MetaReply::Target(n("f"))
    );
}

#[test]
fn nlink_times_and_versions_follow_entries() {
    let mut ns = fixture();
    let d0 = ns.attr(D).unwrap();
    let x = mkdir(&mut ns, D, "x");
    let d1 = ns.attr(D).unwrap();
    assert_eq!(d1.nlink, d0.nlink + 1);
    assert!(d1.version > d0.version);
    let t = T0 + 50;
    ns.apply(&rename_op(D, "x", ROOT, "x", RenameMode::Replace), t)
        .unwrap();
    assert_eq!(ns.attr(D).unwrap().nlink, d0.nlink);
    assert_eq!(ns.attr(ROOT).unwrap().nlink, 5);
    assert_eq!(lookup(&mut ns, x, "..").unwrap().ino, ROOT);
    assert_eq!(ns.attr(x).unwrap().ctime_ns, t);
    assert_eq!(
        (
            ns.attr(D).unwrap().mtime_ns,
            ns.attr(ROOT).unwrap().ctime_ns
        ),
        (t, t)
    );

    let t = T0 + 60;
    let f0 = ns.attr(F).unwrap();
    let linked = entry(ns.apply(
        &MetaOp::Link {
            ino: F,
            parent: D,
            name: n("g"),
        },
        t,
    ));
    assert_eq!((linked.nlink, linked.ctime_ns), (2, t));
    assert_eq!(linked.mtime_ns, f0.mtime_ns, "a link is not a data change");
    assert!(linked.version > f0.version);
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("f"),
        },
        t + 1,
    )
    .unwrap();
    let after = ns.attr(F).unwrap();
    assert_eq!((after.nlink, after.ctime_ns), (1, t + 1));
    assert_eq!(ns.attr(ROOT).unwrap().mtime_ns, t + 1);

    ns.apply(
        &MetaOp::Rmdir {
            parent: ROOT,
            name: n("x"),
        },
        t + 2,
    )
    .unwrap();
    assert_eq!(ns.attr(ROOT).unwrap().nlink, 4);
    assert_eq!(ns.attr(x).unwrap_err().code, ErrorCode::NotFound);

    let set = SetAttr {
        mode: Some(0o104_755),
        uid: Some(7),
        atime: Some(SetTime::At(5)),
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    let attr = entry(ns.apply(&MetaOp::SetAttr { ino: F, set }, t + 3));
    assert_eq!(
        (
            attr.mode,
            attr.uid,
            attr.atime_ns,
            attr.mtime_ns,
            attr.ctime_ns
        ),
        (0o4755, 7, 5, t + 3, t + 3)
    );
    let same = entry(ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr::default(),
        },
        t + 4,
    ));
    assert_eq!(same, attr, "an empty setattr changes nothing");
}

#[test]
fn create_is_idempotent_without_exclusive_and_inherits() {
    let mut ns = fixture();
    let f0 = ns.attr(F).unwrap();
    let op = MetaOp::Create {
        parent: ROOT,
        name: n("f"),
        kind: FileKind::File,
        mode: 0o600,
        uid: 1,
        gid: 1,
        rdev: 0,
        exclusive: false,
    };
    assert_eq!(entry(ns.apply(&op, T0 + 9)), f0);
    assert_eq!(ns.attr(F).unwrap(), f0);

    ns.apply(
        &MetaOp::SetAttr {
            ino: D,
            set: SetAttr {
                mode: Some(0o2775),
                gid: Some(500),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    ns.apply(
        &MetaOp::SetPolicy {
            ino: D,
            policy: Policy::Ec { data: 4, parity: 2 },
        },
        T0,
    )
    .unwrap();
    let file = ns
        .apply(&create_op(D, "shared"), T0)
        .map(|r| entry(Ok(r)))
        .unwrap();
    assert_eq!((file.gid, file.mode), (500, 0o644));
    let dir = ns
        .apply(&mkdir_op(D, "team"), T0)
        .map(|r| entry(Ok(r)))
        .unwrap();
    assert_eq!((dir.gid, dir.mode), (500, 0o2755));
    assert_eq!(
        ns.policy_of(file.ino).unwrap(),
        Policy::Ec { data: 4, parity: 2 }
    );
    assert_eq!(
        ns.policy_of(dir.ino).unwrap(),
        Policy::Ec { data: 4, parity: 2 }
    );
    assert_eq!(
        ns.apply(&MetaOp::GetPolicy { ino: dir.ino }, T0).unwrap(),
        MetaReply::Policy(Policy::Ec { data: 4, parity: 2 })
    );
    let plain = ns
        .apply(&create_op(ROOT, "plain"), T0)
        .map(|r| entry(Ok(r)))
        .unwrap();
    assert_eq!(
        (plain.gid, ns.policy_of(plain.ino).unwrap()),
        (20, Policy::Replicas(3))
    );
    let device = MetaOp::Create {
        parent: ROOT,
        name: n("dev"),
        kind: FileKind::CharDevice,
        mode: 0o660,
        uid: 0,
        gid: 0,
        rdev: 0x0501,
        exclusive: true,
    };
    let device = entry(ns.apply(&device, T0));
    assert_eq!(
        (device.kind, device.rdev, device.size),
        (FileKind::CharDevice, 0x0501, 0)
    );
}

#[test]
fn link_count_is_capped() {
    let mut ns = fixture();
    for i in 1..LINK_MAX {
        ns.apply(
            &MetaOp::Link {
                ino: F,
                parent: E,
                name: i.to_string().into_bytes(),
            },
            T0,
        )
        .unwrap();
    }
    assert_eq!(ns.attr(F).unwrap().nlink, LINK_MAX);
    let err = ns
        .apply(
            &MetaOp::Link {
                ino: F,
                parent: E,
                name: n("one-more"),
            },
            T0,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooManyLinks);
}

#[test]
fn rename_cases() {
    // Hard links to the same inode: nothing happens.
    let mut ns = fixture();
    ns.apply(
        &MetaOp::Link {
            ino: F,
            parent: D,
            name: n("f2"),
        },
        T0,
    )
    .unwrap();
    let before = ns.records();
    ns.apply(&rename_op(ROOT, "f", D, "f2", RenameMode::Replace), T0 + 5)
        .unwrap();
    assert_eq!(ns.records(), before);
    ns.apply(
        &rename_op(ROOT, "f", ROOT, "f", RenameMode::Exchange),
        T0 + 5,
    )
    .unwrap();
    assert_eq!(ns.records(), before);

    // Exchange of a directory and a file across parents.
    let mut ns = fixture();
    ns.apply(
        &rename_op(ROOT, "f", D, "sub", RenameMode::Exchange),
        T0 + 5,
    )
    .unwrap();
    assert_eq!(lookup(&mut ns, ROOT, "f").unwrap().ino, SUB);
    assert_eq!(lookup(&mut ns, D, "sub").unwrap().ino, F);
    assert_eq!(lookup(&mut ns, SUB, "..").unwrap().ino, ROOT);
    assert_eq!(ns.attr(D).unwrap().nlink, 2);
    assert_eq!(ns.attr(ROOT).unwrap().nlink, 5);
    assert_eq!(
        (ns.attr(F).unwrap().ctime_ns, ns.attr(SUB).unwrap().ctime_ns),
        (T0 + 5, T0 + 5)
    );

    // Exchange of two directories across parents: counts stay.
    let mut ns = fixture();
    ns.apply(&rename_op(ROOT, "e", D, "sub", RenameMode::Exchange), T0)
        .unwrap();
    assert_eq!(
        (ns.attr(ROOT).unwrap().nlink, ns.attr(D).unwrap().nlink),
        (4, 3)
    );
    assert_eq!(lookup(&mut ns, E, "..").unwrap().ino, D);
    assert_eq!(lookup(&mut ns, SUB, "..").unwrap().ino, ROOT);

    // Replacing an empty directory across parents.
    let mut ns = fixture();
    ns.apply(&rename_op(D, "sub", ROOT, "e", RenameMode::Replace), T0)
        .unwrap();
    assert_eq!(ns.attr(E).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        (ns.attr(ROOT).unwrap().nlink, ns.attr(D).unwrap().nlink),
        (4, 2)
    );
    assert_eq!(lookup(&mut ns, ROOT, "e").unwrap().ino, SUB);
    assert_eq!(ns.inode_count(), 6);

    // Replacing a file drops one of its links.
    let mut ns = fixture();
    ns.apply(
        &MetaOp::Link {
            ino: F,
            parent: D,
            name: n("f2"),
        },
        T0,
    )
    .unwrap();
    ns.apply(&rename_op(ROOT, "p", D, "f2", RenameMode::Replace), T0 + 7)
        .unwrap();
    assert_eq!(names(&mut ns, D), ["f2", "sub"]);
    assert_eq!(lookup(&mut ns, D, "f2").unwrap().ino, P);
    assert_eq!(
        (ns.attr(F).unwrap().nlink, ns.attr(F).unwrap().ctime_ns),
        (1, T0 + 7)
    );
    assert_eq!(names(&mut ns, ROOT), ["d", "e", "f", "l"]);
}

#[test]
fn pages_of_long_names_stay_under_the_header_cap() {
    let mut ns = Namespace::new(Policy::Replicas(1), T0);
    for i in 0..300u32 {
        create(&mut ns, ROOT, &format!("{i:03}{}", "x".repeat(252)));
    }
    for plus in [false, true] {
        let mut after: Option<Vec<u8>> = None;
        let mut seen = 0;
        loop {
            let op = if plus {
                MetaOp::ReaddirPlus {
                    ino: ROOT,
                    after: after.clone(),
                    limit: 0,
                }
            } else {
                MetaOp::Readdir {
                    ino: ROOT,
                    after: after.clone(),
                    limit: 0,
                }
            };
            let reply = ns.read(&op).unwrap();
            let encoded = postcard::to_stdvec(&reply).unwrap().len();
            assert!(encoded < 60 * 1024, "a page of {encoded} bytes");
            let (names, more): (Vec<Vec<u8>>, bool) = match reply {
                MetaReply::Dir { entries, more } => {
                    (entries.into_iter().map(|e| e.name).collect(), more)
                }
                MetaReply::DirPlus { entries, more } => {
                    for (entry, attr) in &entries {
                        assert_eq!(entry.ino, attr.ino);
                        assert_eq!(attr.kind, FileKind::File);
                    }
                    (entries.into_iter().map(|(e, _)| e.name).collect(), more)
                }
                other => panic!("{other:?}"),
            };
            seen += names.len();
            after = names.last().cloned();
            if !more {
                break;
            }
        }
        assert_eq!(seen, 300, "plus: {plus}");
    }
}

#[test]
fn readdir_pages_and_cursors() {
    let mut ns = Namespace::new(Policy::Replicas(1), T0);
    for i in 0..300u32 {
        create(&mut ns, ROOT, &format!("{i:03}"));
    }
    let page = |ns: &mut Namespace, after: Option<&str>, limit: u32| match ns
        .apply(
            &MetaOp::Readdir {
                ino: ROOT,
                after: after.map(n),
                limit,
            },
            T0,
        )
        .unwrap()
    {
        MetaReply::Dir { entries, more } => (
            entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect::<Vec<_>>(),
            more,
        ),
        other => panic!("{other:?}"),
    };
    let (first, more) = page(&mut ns, None, 0);
    assert_eq!((first.len(), more), (READDIR_PAGE_MAX as usize, true));
    assert_eq!(page(&mut ns, None, 1000).0.len(), READDIR_PAGE_MAX as usize);
    let (two, more) = page(&mut ns, Some("010"), 2);
    assert_eq!(
        (two, more),
        (vec!["011".to_string(), "012".to_string()], true)
    );
    // The cursor's own name disappearing does not matter.
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("012"),
        },
        T0,
    )
    .unwrap();
    assert_eq!(page(&mut ns, Some("012"), 1).0, ["013"]);
    let (last, more) = page(&mut ns, Some("297"), 0);
    assert_eq!(
        (last, more),
        (vec!["298".to_string(), "299".to_string()], false)
    );
    let (none, more) = page(&mut ns, Some("zzz"), 0);
    assert!(none.is_empty() && !more);
    match ns
        .apply(
            &MetaOp::Readdir {
                ino: ROOT,
                after: None,
                limit: 1,
            },
            T0,
        )
        .unwrap()
    {
        MetaReply::Dir { entries, .. } => assert_eq!(entries[0].kind, FileKind::File),
        other => panic!("{other:?}"),
    }
}

#[test]
fn xattrs() {
    let mut ns = fixture();
    let set = |name: &str, value: Vec<u8>| MetaOp::SetXattr {
        ino: F,
        name: n(name),
        value,
        mode: XattrMode::Either,
    };
    ns.apply(&set("user.a", n("A")), T0 + 3).unwrap();
    assert_eq!(ns.attr(F).unwrap().ctime_ns, T0 + 3);
    assert_eq!(
        ns.apply(
            &MetaOp::GetXattr {
                ino: F,
                name: n("user.a")
            },
            T0
        )
        .unwrap(),
        MetaReply::Xattr(n("A"))
    );
    assert_eq!(
        ns.apply(&MetaOp::ListXattr { ino: F }, T0).unwrap(),
        MetaReply::XattrNames(vec![n("user.a"), n("user.x")])
    );
    ns.apply(
        &MetaOp::RemoveXattr {
            ino: F,
            name: n("user.a"),
        },
        T0 + 4,
    )
    .unwrap();
    assert_eq!(ns.attr(F).unwrap().ctime_ns, T0 + 4);
    ns.apply(&set("user.big1", vec![1; XATTR_VALUE_MAX_BYTES]), T0)
        .unwrap();
    let err = ns
        .apply(&set("user.big2", vec![2; XATTR_VALUE_MAX_BYTES]), T0)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSpace);
    // Replacing a value counts the new value, not both.
    ns.apply(&set("user.big1", vec![3; XATTR_VALUE_MAX_BYTES]), T0)
        .unwrap();

    // Several at once: all or none.
    let many = |pairs: &[(&str, Vec<u8>)]| MetaOp::SetXattrs {
        ino: F,
        set: pairs.iter().map(|(k, v)| (n(k), v.clone())).collect(),
    };
    let before = ns.apply(&MetaOp::GetXattrs { ino: F }, T0).unwrap();
    let err = ns
        .apply(
            &many(&[
                ("user.s1", n("1")),
                ("user.s2", vec![2; XATTR_VALUE_MAX_BYTES]),
            ]),
            T0,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSpace);
    let err = ns
        .apply(&many(&[("user.s1", n("1")), ("", n("2"))]), T0)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
    assert_eq!(
        ns.apply(&MetaOp::GetXattrs { ino: F }, T0).unwrap(),
        before,
        "a refused set leaves every attribute alone"
    );
    ns.apply(&many(&[("user.s1", n("1")), ("user.s2", n("2"))]), T0 + 5)
        .unwrap();
    assert_eq!(ns.attr(F).unwrap().ctime_ns, T0 + 5);
    match ns.apply(&MetaOp::GetXattrs { ino: F }, T0).unwrap() {
        MetaReply::Xattrs(all) => {
            let names: Vec<_> = all.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(
                names,
                vec![n("user.big1"), n("user.s1"), n("user.s2"), n("user.x")]
            );
            assert_eq!(all[1].1, n("1"));
        }
        other => panic!("{other:?}"),
    }
    let listed = ns
        .apply(
            &MetaOp::ReaddirXattr {
                ino: ROOT,
                after: None,
                limit: 0,
                name: n("user.s1"),
            },
            T0,
        )
        .unwrap();
    match listed {
        MetaReply::DirXattr { entries, more } => {
            assert!(!more);
            assert!(entries.len() > 1);
            for (entry, attr, value) in entries {
                assert_eq!(entry.ino, attr.ino);
                let expected = (entry.ino == F).then(|| n("1"));
                assert_eq!(value, expected, "{entry:?}");
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_unlinked_files_survive_until_released() {
    let mut ns = fixture();
    ns.commit_extents(F, &[ext(0, 100, 9, 0)], 0, T0).unwrap();
    ns.apply(&MetaOp::Open { ino: F }, T0).unwrap();
    ns.apply(&MetaOp::Open { ino: F }, T0).unwrap();
    assert_eq!(ns.open_handles(F).unwrap(), 2);
    let version = ns.attr(F).unwrap().version;
    assert_eq!(
        ns.attr(F).unwrap().version,
        version,
        "opens do not bump the version"
    );
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("f"),
        },
        T0,
    )
    .unwrap();
    let attr = ns.attr(F).unwrap();
    assert_eq!((attr.nlink, attr.size), (0, 100));
    assert_eq!(ns.inode_count(), 7);
    assert_eq!(
        ns.layout(F, 0, 100).unwrap().1.len(),
        1,
        "its data is still readable"
    );
    assert_eq!(
        ns.apply(
            &MetaOp::Link {
                ino: F,
                parent: ROOT,
                name: n("back")
            },
            T0
        )
        .unwrap_err()
        .code,
        ErrorCode::NotFound
    );
    assert!(ns.take_released_chunks().is_empty());
    assert!(matches!(
        ns.apply(&MetaOp::Release { ino: F }, T0),
        Ok(MetaReply::Attr(_))
    ));
    assert_eq!(
        ns.apply(&MetaOp::Release { ino: F }, T0).unwrap(),
        MetaReply::Done
    );
    assert_eq!(ns.attr(F).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(ns.take_released_chunks(), [ChunkId(9)]);
    assert_eq!(ns.inode_count(), 6);

    // Release never goes below zero, and a linked file stays.
    let g = create(&mut ns, ROOT, "g");
    ns.apply(&MetaOp::Release { ino: g }, T0).unwrap();
    assert_eq!(ns.open_handles(g).unwrap(), 0);

    // A rename over an open file keeps it too.
    ns.apply(&MetaOp::Open { ino: g }, T0).unwrap();
    let h = create(&mut ns, ROOT, "h");
    ns.apply(&rename_op(ROOT, "h", ROOT, "g", RenameMode::Replace), T0)
        .unwrap();
    assert_eq!(ns.attr(g).unwrap().nlink, 0);
    assert_eq!(lookup(&mut ns, ROOT, "g").unwrap().ino, h);
    assert_eq!(
        ns.apply(&MetaOp::Release { ino: g }, T0).unwrap(),
        MetaReply::Done
    );

    // An open removed directory stays, but takes no new entries.
    ns.apply(&MetaOp::Open { ino: E }, T0).unwrap();
    ns.apply(
        &MetaOp::Rmdir {
            parent: ROOT,
            name: n("e"),
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.attr(E).unwrap().nlink, 0);
    assert_eq!(
        ns.apply(&create_op(E, "x"), T0).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        ns.apply(&mkdir_op(E, "x"), T0).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(names(&mut ns, E), Vec::<String>::new());
    assert_eq!(
        ns.apply(&MetaOp::Release { ino: E }, T0).unwrap(),
        MetaReply::Done
    );
    assert_eq!(ns.attr(E).unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn fsck_walks_every_extent_in_pages_and_names_files_by_their_parents() {
    let mut ns = Namespace::new(Policy::Replicas(3), T0);
    let a = entry(ns.apply(&mkdir_op(InodeId::ROOT, "a"), T0)).ino;
    let b = entry(ns.apply(&mkdir_op(a, "b"), T0)).ino;
    for i in 0..30 {
        create(&mut ns, b, &format!("filler-{i}"));
    }
    // Entries are read in name order: "zz" comes after every filler.
    let f = create(&mut ns, b, "zz");
    let g = create(&mut ns, InodeId::ROOT, "g");
    ns.commit_extents(f, &[ext(0, 10, 1, 0), ext(10, 10, 2, 0)], 0, T0)
        .unwrap();
    ns.commit_extents(g, &[ext(0, 10, 3, 0)], 0, T0).unwrap();
    assert_eq!(ns.path_of(f, 1000).as_deref(), Some("/a/b/zz"));
    assert_eq!(ns.path_of(g, 1000).as_deref(), Some("/g"));
    assert_eq!(ns.path_of(InodeId::ROOT, 1000).as_deref(), Some("/"));
    // The name sits past the first 30 entries of b: a budget below that
    // gives up rather than reading a vast directory.
    assert_eq!(ns.path_of(f, 10), None);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = ns.extents_after(after, 2);
        seen.extend(page.iter().map(|(ino, e)| (*ino, e.chunk.0)));
        match page.last() {
            Some((ino, e)) if page.len() == 2 => after = Some((*ino, e.offset)),
            _ => break,
        }
    }
    let mut want = vec![(f, 1), (f, 2), (g, 3)];
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn extents_overlay_and_split() {
    let mut ns = fixture();
    let attr = ns
        .commit_extents(F, &[ext(0, 100, 1, 0)], 0, T0 + 1)
        .unwrap();
    assert_eq!(
        (attr.size, attr.mtime_ns, attr.ctime_ns),
        (100, T0 + 1, T0 + 1)
    );
    // Lands in the middle: the old extent splits around it.
    ns.commit_extents(F, &[ext(40, 20, 2, 0)], 0, T0).unwrap();
    assert_eq!(
        ns.layout(F, 0, u64::MAX).unwrap(),
        (
            100,
            vec![ext(0, 40, 1, 0), ext(40, 20, 2, 0), ext(60, 40, 1, 60)]
        )
    );
    assert_eq!(
        (ns.chunk_refs(ChunkId(1)), ns.chunk_refs(ChunkId(2))),
        (2, 1)
    );
    // Covers the tail of one and the head of another, past the end.
    ns.commit_extents(F, &[ext(50, 100, 3, 10)], 0, T0).unwrap();
    assert_eq!(
        ns.layout(F, 0, u64::MAX).unwrap(),
        (
            150,
            vec![ext(0, 40, 1, 0), ext(40, 10, 2, 0), ext(50, 100, 3, 10)]
        )
    );
    assert_eq!(
        (
            ns.chunk_refs(ChunkId(1)),
            ns.chunk_refs(ChunkId(2)),
            ns.chunk_refs(ChunkId(3))
        ),
        (1, 1, 1)
    );
    assert!(ns.take_released_chunks().is_empty());
    // Covers everything at once, in one commit of two extents where the
    // second covers part of the first.
    ns.commit_extents(F, &[ext(0, 200, 4, 0), ext(10, 10, 5, 0)], 500, T0)
        .unwrap();
    assert_eq!(
        ns.layout(F, 0, u64::MAX).unwrap(),
        (
            500,
            vec![ext(0, 10, 4, 0), ext(10, 10, 5, 0), ext(20, 180, 4, 20)]
        )
    );
    assert_eq!(
        ns.take_released_chunks(),
        [ChunkId(1), ChunkId(2), ChunkId(3)]
    );
    assert_eq!(ns.chunk_refs(ChunkId(1)), 0);
    // Clipped reads.
    assert_eq!(
        ns.layout(F, 5, 10).unwrap().1,
        vec![ext(5, 5, 4, 5), ext(10, 5, 5, 0)]
    );
    assert_eq!(ns.layout(F, 300, 10).unwrap(), (500, vec![]));
    assert_eq!(ns.layout(F, 5, 0).unwrap().1, vec![]);
    // Same chunk re-laid over itself never looks released.
    ns.commit_extents(F, &[ext(0, 10, 4, 0)], 0, T0).unwrap();
    assert!(ns.take_released_chunks().is_empty());
    assert_eq!(ns.chunk_refs(ChunkId(4)), 2);
}

#[test]
fn extent_errors_change_nothing() {
    let mut ns = fixture();
    ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
    let before = ns.records();
    let cases: Vec<(InodeId, Vec<Extent>, u64, ErrorCode)> = vec![
        (D, vec![ext(0, 1, 2, 0)], 0, ErrorCode::IsDir),
        (L, vec![ext(0, 1, 2, 0)], 0, ErrorCode::InvalidArgument),
        (InodeId(99), vec![ext(0, 1, 2, 0)], 0, ErrorCode::NotFound),
        (
            F,
            vec![ext(0, 1, 2, 0), ext(5, 0, 3, 0)],
            0,
            ErrorCode::InvalidArgument,
        ),
        (
            F,
            vec![ext(0, 1, 2, 0), ext(u64::MAX, 2, 3, 0)],
            0,
            ErrorCode::FileTooLarge,
        ),
        (
            F,
            vec![ext(FILE_SIZE_MAX_BYTES, 1, 3, 0)],
            0,
            ErrorCode::FileTooLarge,
        ),
        (
            F,
            vec![ext(0, 2, 3, u64::MAX)],
            0,
            ErrorCode::InvalidArgument,
        ),
        (F, vec![], FILE_SIZE_MAX_BYTES + 1, ErrorCode::FileTooLarge),
    ];
    for (ino, extents, min_size, code) in cases {
        assert_eq!(
            ns.commit_extents(ino, &extents, min_size, T0)
                .unwrap_err()
                .code,
            code,
            "{extents:?}"
        );
        assert_eq!(ns.records(), before);
    }
    assert!(ns.take_released_chunks().is_empty());
    assert_eq!(ns.layout(D, 0, 1).unwrap_err().code, ErrorCode::IsDir);
    assert_eq!(
        ns.commit_extents(F, &[ext(FILE_SIZE_MAX_BYTES - 1, 1, 3, 0)], 0, T0)
            .unwrap()
            .size,
        FILE_SIZE_MAX_BYTES
    );
}

#[test]
fn truncate_cuts_extents() {
    let mut ns = fixture();
    ns.commit_extents(
        F,
        &[ext(0, 100, 1, 0), ext(100, 100, 2, 0), ext(200, 100, 3, 0)],
        0,
        T0,
    )
    .unwrap();
    let shrink = |size: u64| MetaOp::SetAttr {
        ino: F,
        set: SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
    };
    let attr = entry(ns.apply(&shrink(150), T0 + 8));
    assert_eq!(
        (attr.size, attr.mtime_ns, attr.ctime_ns),
        (150, T0 + 8, T0 + 8)
    );
    assert_eq!(
        ns.layout(F, 0, u64::MAX).unwrap().1,
        vec![ext(0, 100, 1, 0), ext(100, 50, 2, 0)]
    );
    assert_eq!(ns.take_released_chunks(), [ChunkId(3)]);
    // Growing leaves a hole.
    ns.apply(&shrink(1000), T0).unwrap();
    assert_eq!(
        ns.layout(F, 0, u64::MAX).unwrap(),
        (1000, vec![ext(0, 100, 1, 0), ext(100, 50, 2, 0)])
    );
    // Same size: no data change.
    let attr = entry(ns.apply(&shrink(1000), T0 + 9));
    assert_eq!((attr.mtime_ns, attr.ctime_ns), (T0, T0 + 9));
    ns.apply(&shrink(100), T0).unwrap();
    assert_eq!(ns.take_released_chunks(), [ChunkId(2)]);
    ns.apply(&shrink(0), T0).unwrap();
    assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
    assert_eq!(ns.layout(F, 0, u64::MAX).unwrap(), (0, vec![]));
    // A deleted file releases what it referenced, in file order.
    ns.commit_extents(
        F,
        &[ext(0, 10, 7, 0), ext(10, 10, 6, 0), ext(20, 10, 7, 10)],
        0,
        T0,
    )
    .unwrap();
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("f"),
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.take_released_chunks(), [ChunkId(6), ChunkId(7)]);
}

#[test]
fn policy_changes_only_before_data() {
    let mut ns = fixture();
    ns.apply(
        &MetaOp::SetPolicy {
            ino: F,
            policy: Policy::Replicas(2),
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.policy_of(F).unwrap(), Policy::Replicas(2));
    ns.commit_extents(F, &[ext(0, 1, 1, 0)], 0, T0).unwrap();
    let err = ns
        .apply(
            &MetaOp::SetPolicy {
                ino: F,
                policy: Policy::Replicas(1),
            },
            T0,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Busy);
    ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    ns.apply(
        &MetaOp::SetPolicy {
            ino: F,
            policy: Policy::Replicas(1),
        },
        T0,
    )
    .unwrap();
}

#[test]
fn concat_moves_references() {
    let mut ns = fixture();
    let a = create(&mut ns, ROOT, "a");
    let b = create(&mut ns, ROOT, "b");
    ns.commit_extents(F, &[ext(0, 100, 1, 0)], 0, T0).unwrap();
    ns.commit_extents(a, &[ext(10, 20, 2, 0)], 50, T0).unwrap();
    ns.commit_extents(b, &[ext(0, 5, 3, 0), ext(5, 5, 4, 0)], 0, T0)
        .unwrap();
    let attr = ns.concat(F, &[a, b], T0 + 3).unwrap();
    assert_eq!((attr.size, attr.mtime_ns), (160, T0 + 3));
    assert_eq!(
        ns.layout(F, 0, u64::MAX).unwrap().1,
        vec![
            ext(0, 100, 1, 0),
            ext(110, 20, 2, 0),
            ext(150, 5, 3, 0),
            ext(155, 5, 4, 0)
        ]
    );
    for source in [a, b] {
        assert_eq!(ns.layout(source, 0, u64::MAX).unwrap(), (0, vec![]));
        assert_eq!(ns.attr(source).unwrap().mtime_ns, T0 + 3);
    }
    assert_eq!(
        (1..=4)
            .map(|c| ns.chunk_refs(ChunkId(c)))
            .collect::<Vec<_>>(),
        [1, 1, 1, 1]
    );
    assert!(ns.take_released_chunks().is_empty());

    let before = ns.records();
    let errors = [
        (F, vec![a, a], ErrorCode::InvalidArgument),
        (F, vec![F], ErrorCode::InvalidArgument),
        (F, vec![D], ErrorCode::IsDir),
        (F, vec![L], ErrorCode::InvalidArgument),
        (D, vec![a], ErrorCode::IsDir),
        (InodeId(99), vec![a], ErrorCode::NotFound),
        (F, vec![InodeId(99)], ErrorCode::NotFound),
    ];
    for (target, sources, code) in errors {
        assert_eq!(
            ns.concat(target, &sources, T0).unwrap_err().code,
            code,
            "{target} {sources:?}"
        );
    }
    ns.apply(
        &MetaOp::SetAttr {
            ino: a,
            set: SetAttr {
                size: Some(FILE_SIZE_MAX_BYTES),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    let before_big = ns.records();
    assert_eq!(
        ns.concat(F, &[a], T0).unwrap_err().code,
        ErrorCode::FileTooLarge
    );
    assert_eq!(ns.records(), before_big);
    assert_ne!(before, before_big);
}

#[test]
fn fragmented_files() {
    let mut ns = fixture();
    let extents: Vec<Extent> = (0..65).map(|i| ext(i * 2, 1, 100 + i, 0)).collect();
    ns.commit_extents(F, &extents[..64], 0, T0).unwrap();
    assert!(ns.fragmented().is_empty());
    ns.commit_extents(F, &extents[64..], 0, T0).unwrap();
    assert_eq!(ns.fragmented(), [F]);
    ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(MIB),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    assert!(ns.fragmented().is_empty(), "65 extents are fine for 1 MiB");
}

#[test]
fn released_chunks_are_reported_again_after_reuse() {
    let mut ns = fixture();
    ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
    ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
    ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
    ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    // Released, referenced again and released again before a take:
    // reported once.
    ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
    ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
    // Released then referenced again before a take: not reported.
    ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
    ns.apply(
        &MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
    assert!(ns.take_released_chunks().is_empty());
}

fn store_apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    for (key, value) in changes {
        assert!(key.starts_with(b"n"));
        match value {
            Some(value) => store.insert(key, value),
            None => store.remove(&key),
        };
    }
}

#[test]
fn persistence_round_trip() {
    let mut ns = fixture();
    let mut store = BTreeMap::new();
    store.insert(b"other-subsystem".to_vec(), b"ignored".to_vec());
    store_apply(&mut store, ns.take_changes());
    assert!(ns.take_changes().is_empty());
    let g = create(&mut ns, D, "g");
    ns.commit_extents(g, &[ext(0, 100, 1, 0), ext(50, 10, 2, 0)], 0, T0)
        .unwrap();
    ns.apply(
        &MetaOp::Link {
            ino: g,
            parent: ROOT,
            name: n("g2"),
        },
        T0,
    )
    .unwrap();
    ns.apply(&MetaOp::Open { ino: F }, T0).unwrap();
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("f"),
        },
        T0,
    )
    .unwrap();
    ns.apply(&rename_op(D, "sub", ROOT, "moved", RenameMode::Replace), T0)
        .unwrap();
    ns.apply(
        &MetaOp::Rmdir {
            parent: ROOT,
            name: n("e"),
        },
        T0,
    )
    .unwrap();
    ns.apply(
        &MetaOp::SetXattr {
            ino: g,
            name: n("user.k"),
            value: n("v"),
            mode: XattrMode::Create,
        },
        T0,
    )
    .unwrap();
    store_apply(&mut store, ns.take_changes());
    let h = create(&mut ns, ROOT, "h");
    ns.commit_extents(h, &[ext(0, 10, 3, 0)], 0, T0).unwrap();
    ns.apply(
        &MetaOp::Unlink {
            parent: ROOT,
            name: n("h"),
        },
        T0,
    )
    .unwrap();
    ns.apply(
        &MetaOp::SetAttr {
            ino: g,
            set: SetAttr {
                size: Some(55),
                ..SetAttr::default()
            },
        },
        T0,
    )
    .unwrap();
    store_apply(&mut store, ns.take_changes());
    assert_eq!(ns.take_released_chunks(), [ChunkId(3)]);

    let mut rebuilt = Namespace::from_records(store.clone()).unwrap();
    assert_eq!(rebuilt.records(), ns.records());
    assert_eq!(
        store
            .into_iter()
            .filter(|(k, _)| k.starts_with(b"n"))
            .collect::<Vec<_>>(),
        ns.records()
    );
    let snapshot = Namespace::from_records(ns.records()).unwrap();
    assert_eq!(snapshot.records(), ns.records());

    let later = [
        MetaOp::Release { ino: F },
        MetaOp::GetAttr { ino: F },
        create_op(ROOT, "new"),
        MetaOp::Readdir {
            ino: ROOT,
            after: None,
            limit: 0,
        },
        MetaOp::Lookup {
            parent: SUB,
            name: n(".."),
        },
        MetaOp::GetXattr {
            ino: g,
            name: n("user.k"),
        },
        MetaOp::Unlink {
            parent: ROOT,
            name: n("g2"),
        },
        MetaOp::Unlink {
            parent: D,
            name: n("g"),
        },
        MetaOp::GetAttr { ino: InodeId(10) },
    ];
    for op in &later {
        assert_eq!(rebuilt.apply(op, T0 + 1), ns.apply(op, T0 + 1), "{op:?}");
    }
    assert_eq!(rebuilt.take_released_chunks(), ns.take_released_chunks());
    assert_eq!(rebuilt.chunk_refs(ChunkId(1)), 0);
    assert_eq!(rebuilt.records(), ns.records());
}

#[test]
fn damaged_records_are_refused() {
    let ns = fixture();
    let records = ns.records();
    let without = |prefix: &[u8]| {
        records
            .iter()
            .filter(|(k, _)| !k.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(Namespace::from_records(without(b"nx")).is_err());
    assert!(Namespace::from_records(without(b"ni")).is_err());
    let mut bad_value = records.clone();
    bad_value[0].1 = vec![0xff; 3];
    assert!(Namespace::from_records(bad_value).is_err());
    let mut bad_key = records.clone();
    bad_key.push((b"nq".to_vec(), vec![]));
    assert!(Namespace::from_records(bad_key).is_err());
    let mut dangling = records.clone();
    dangling.push((
        dirent_key(ROOT, &n("ghost")),
        encode(&DirentRecord {
            ino: InodeId(77),
            kind: FileKind::File,
        }),
    ));
    assert!(Namespace::from_records(dangling).is_err());
    let mut unreferenced = records.clone();
    unreferenced.push((chunk_key(ChunkId(5)), encode(&ChunkRecord { refs: 1 })));
    assert!(Namespace::from_records(unreferenced).is_err());
    let mut past_end = records;
    past_end.push((
        extent_key(F, 0),
        encode(&ExtentRecord {
            length: 1,
            chunk: ChunkId(5),
            chunk_offset: 0,
        }),
    ));
    past_end.push((chunk_key(ChunkId(5)), encode(&ChunkRecord { refs: 1 })));
    assert!(Namespace::from_records(past_end).is_err());
}

#[test]
fn malformed_keys_are_refused() {
    let records = fixture().records();
    for bad in [
        &b"n"[..],
        b"ni\0",
        b"nx\0",
        b"ne\0\0\0\0\0\0\0\0\0",
        b"nd\0\0\0\0\0\0\0\x01",
    ] {
        let mut damaged = records.clone();
        damaged.push((bad.to_vec(), Vec::new()));
        assert!(Namespace::from_records(damaged).is_err(), "{bad:?}");
    }
}

#[test]
fn swap_layout_replaces_extents_only_while_the_file_is_unchanged() {
    let mut ns = Namespace::new(Policy::Replicas(1), 0);
    let create = |ns: &mut Namespace, name: &[u8]| {
        let MetaReply::Entry(attr) = ns
            .apply(
                &MetaOp::Create {
                    parent: InodeId::ROOT,
                    name: name.to_vec(),
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    exclusive: true,
                },
                1,
            )
            .unwrap()
        else {
            panic!("create")
        };
        attr.ino
    };
    let (file, copy) = (create(&mut ns, b"f"), create(&mut ns, b"c"));
    let extent = |offset, length, chunk| Extent {
        offset,
        length,
        chunk: ChunkId(chunk),
        chunk_offset: offset,
    };
    // Three overlaid extents in two chunks, and a copy in one fresh chunk.
    ns.commit_extents(file, &[extent(0, 100, 1)], 100, 2)
        .unwrap();
    ns.commit_extents(file, &[extent(10, 5, 2), extent(50, 5, 2)], 100, 3)
        .unwrap();
    ns.commit_extents(copy, &[extent(0, 100, 3)], 100, 4)
        .unwrap();
    ns.take_released_chunks();
    let version = ns.attr(file).unwrap().version;
    let stale = ns.swap_layout(file, copy, version.wrapping_sub(1));
    assert_eq!(stale.unwrap_err().code, ErrorCode::Busy);
    let attr = ns.swap_layout(file, copy, version).unwrap();
    assert_eq!((attr.size, ns.attr(copy).unwrap().size), (100, 0));
    let (_, extents) = ns.layout(file, 0, 100).unwrap();
    assert_eq!(extents, vec![extent(0, 100, 3)]);
    assert_eq!(
        (ns.chunk_refs(ChunkId(1)), ns.chunk_refs(ChunkId(2))),
        (0, 0)
    );
    assert_eq!(ns.chunk_refs(ChunkId(3)), 1);
    let mut released = ns.take_released_chunks();
    released.sort();
    assert!(released.contains(&ChunkId(1)) && released.contains(&ChunkId(2)));
}

mod clone;
mod inline;
