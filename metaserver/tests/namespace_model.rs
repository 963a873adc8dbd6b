// Model-based test of the namespace's directory semantics.
//
// Random sequences of create, mkdir, rename (all three modes), link, unlink,
// rmdir and setattr run against both `Namespace` and an independent model
// kept as a map from full paths to inode numbers. The model knows nothing of
// parent pointers or stored link counts: it derives `nlink` by counting paths
// and decides "moved into its own subtree" by comparing path prefixes, so
// the two implementations only agree if the namespace's bookkeeping is right.
// After every operation the result (including the exact error code) and the
// whole visible tree (readdir, getattr) must match and every stored counter
// must agree with a recount; at the end of a case the persisted records must
// rebuild the same namespace. The same cases run in memory and on RocksDB
// with no cache, so every read goes to the store.

use std::sync::Arc;
use tessera_meta::kv::RocksStore;
use tessera_meta::namespace::*;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::BTreeMap;
use tessera_proto::ErrorCode;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{
    FILE_SIZE_MAX_BYTES, FileKind, MetaOp, MetaReply, NAME_MAX_BYTES, Policy, RenameMode, SetAttr,
};

type Path = Vec<Vec<u8>>;

const DIR_SIZE: u64 = 4096;
const CREATE_GID: u32 = 20;

#[derive(Clone, Debug)]
struct MInode {
    dir: bool,
    mode: u32,
    gid: u32,
    size: u64,
}

/// POSIX directory semantics over full paths. The root is the empty path.
struct Model {
    paths: BTreeMap<Path, u64>,
    inodes: BTreeMap<u64, MInode>,
    next: u64,
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

fn check_name(name: &[u8]) -> Result<(), ErrorCode> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(ErrorCode::InvalidArgument);
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(ErrorCode::NameTooLong);
    }
    Ok(())
}

fn join(path: &Path, name: &[u8]) -> Path {
    let mut joined = path.clone();
    joined.push(name.to_vec());
    joined
}

impl Model {
    fn new() -> Model {
        let root = MInode {
            dir: true,
            mode: 0o755,
            gid: 0,
            size: 0,
        };
        Model {
            paths: BTreeMap::from([(Vec::new(), 1)]),
            inodes: BTreeMap::from([(1, root)]),
            next: 2,
        }
    }

    fn dir_path(&self, ino: u64) -> Result<Path, ErrorCode> {
        let node = self.inodes.get(&ino).ok_or(ErrorCode::NotFound)?;
        if !node.dir {
            return Err(ErrorCode::NotDir);
        }
        self.paths
            .iter()
            .find(|(_, i)| **i == ino)
            .map(|(path, _)| path.clone())
            .ok_or(ErrorCode::NotFound)
    }

    fn is_dir(&self, ino: u64) -> bool {
        self.inodes.get(&ino).is_some_and(|node| node.dir)
    }

    fn children(&self, path: &Path) -> Vec<(Path, u64)> {
        self.paths
            .iter()
            .filter(|(p, _)| p.len() == path.len() + 1 && p.starts_with(path))
            .map(|(p, i)| (p.clone(), *i))
            .collect()
    }

    fn nlink(&self, ino: u64) -> u32 {
        if self.is_dir(ino) {
            let path = self.dir_path(ino).unwrap();
            2 + self
                .children(&path)
                .iter()
                .filter(|(_, child)| self.is_dir(*child))
                .count() as u32
        } else {
            self.paths.values().filter(|i| **i == ino).count() as u32
        }
    }

    /// Inodes no path names are gone (the model has no open handles).
    fn collect_garbage(&mut self) {
        let named: std::collections::BTreeSet<u64> = self.paths.values().copied().collect();
        self.inodes.retain(|ino, _| named.contains(ino));
    }

    fn add(&mut self, parent: &Path, name: &[u8], dir: bool, mode: u32) -> u64 {
        let parent_node = self.inodes[&self.paths[parent]].clone();
        let mut mode = mode;
        let mut gid = CREATE_GID;
        if parent_node.mode & 0o2000 != 0 {
            gid = parent_node.gid;
            if dir {
                mode |= 0o2000;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(join(parent, name), ino);
        self.inodes.insert(
            ino,
            MInode {
                dir,
                mode,
                gid,
                size: 0,
            },
        );
        ino
    }

    fn create(&mut self, parent: u64, name: &[u8], exclusive: bool) -> Result<u64, ErrorCode> {
        let path = self.dir_path(parent)?;
        check_name(name)?;
        if is_dot(name) {
            return Err(ErrorCode::AlreadyExists);
        }
        if let Some(&existing) = self.paths.get(&join(&path, name)) {
            if !exclusive && !self.is_dir(existing) {
                return Ok(existing);
            }
            return Err(ErrorCode::AlreadyExists);
        }
        Ok(self.add(&path, name, false, 0o644))
    }

    fn mkdir(&mut self, parent: u64, name: &[u8]) -> Result<u64, ErrorCode> {
        let path = self.dir_path(parent)?;
        check_name(name)?;
        if is_dot(name) || self.paths.contains_key(&join(&path, name)) {
            return Err(ErrorCode::AlreadyExists);
        }
        Ok(self.add(&path, name, true, 0o755))
    }

    fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> Result<u64, ErrorCode> {
        if !self.inodes.contains_key(&ino) {
            return Err(ErrorCode::NotFound);
        }
        let path = self.dir_path(parent)?;
        check_name(name)?;
        if is_dot(name) || self.paths.contains_key(&join(&path, name)) {
            return Err(ErrorCode::AlreadyExists);
        }
        if self.is_dir(ino) {
            return Err(ErrorCode::NotPermitted);
        }
        self.paths.insert(join(&path, name), ino);
        Ok(ino)
    }

    fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<(), ErrorCode> {
        let path = self.dir_path(parent)?;
        check_name(name)?;
        if is_dot(name) {
            return Err(ErrorCode::InvalidArgument);
        }
        let target = join(&path, name);
        let ino = *self.paths.get(&target).ok_or(ErrorCode::NotFound)?;
        if self.is_dir(ino) {
            return Err(ErrorCode::IsDir);
        }
        self.paths.remove(&target);
        self.collect_garbage();
        Ok(())
    }

    fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<(), ErrorCode> {
        let path = self.dir_path(parent)?;
        check_name(name)?;
        if name == b"." {
            return Err(ErrorCode::InvalidArgument);
        }
        if name == b".." {
            return Err(ErrorCode::NotEmpty);
        }
        let target = join(&path, name);
        let ino = *self.paths.get(&target).ok_or(ErrorCode::NotFound)?;
        if !self.is_dir(ino) {
            return Err(ErrorCode::NotDir);
        }
        if !self.children(&target).is_empty() {
            return Err(ErrorCode::NotEmpty);
        }
        self.paths.remove(&target);
        self.collect_garbage();
        Ok(())
    }

    fn subtree(&self, root: &Path) -> Vec<(Path, u64)> {
        self.paths
            .iter()
            .filter(|(p, _)| p.starts_with(root))
            .map(|(p, i)| (p.clone(), *i))
            .collect()
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), ErrorCode> {
        let from_dir = self.dir_path(parent)?;
        let to_dir = self.dir_path(new_parent)?;
        check_name(name)?;
        check_name(new_name)?;
        if is_dot(name) {
            return Err(ErrorCode::InvalidArgument);
        }
        if is_dot(new_name) {
            return Err(ErrorCode::AlreadyExists);
        }
        let from = join(&from_dir, name);
        let to = join(&to_dir, new_name);
        let source = *self.paths.get(&from).ok_or(ErrorCode::NotFound)?;
        let target = self.paths.get(&to).copied();
        if mode == RenameMode::NoReplace && target.is_some() {
            return Err(ErrorCode::AlreadyExists);
        }
        if mode == RenameMode::Exchange && target.is_none() {
            return Err(ErrorCode::NotFound);
        }
        let source_dir = self.is_dir(source);
        let target_dir = target.is_some_and(|t| self.is_dir(t));
        if source_dir && to_dir.starts_with(&from) {
            return Err(ErrorCode::InvalidArgument);
        }
        if target_dir && from_dir.starts_with(&to) {
            return Err(if mode == RenameMode::Exchange {
                ErrorCode::InvalidArgument
            } else {
                ErrorCode::NotEmpty
            });
        }
        if target == Some(source) {
            return Ok(());
        }
        if target.is_some() && mode == RenameMode::Replace {
            if source_dir && !target_dir {
                return Err(ErrorCode::NotDir);
            }
            if !source_dir && target_dir {
                return Err(ErrorCode::IsDir);
            }
            if target_dir && !self.children(&to).is_empty() {
                return Err(ErrorCode::NotEmpty);
            }
        }
        let moving = self.subtree(&from);
        let swapped = if mode == RenameMode::Exchange {
            self.subtree(&to)
        } else {
            Vec::new()
        };
        for (path, _) in moving.iter().chain(&swapped) {
            self.paths.remove(path);
        }
        self.paths.remove(&to);
        for (path, ino) in moving {
            let mut moved = to.clone();
            moved.extend_from_slice(&path[from.len()..]);
            self.paths.insert(moved, ino);
        }
        for (path, ino) in swapped {
            let mut moved = from.clone();
            moved.extend_from_slice(&path[to.len()..]);
            self.paths.insert(moved, ino);
        }
        self.collect_garbage();
        Ok(())
    }

    fn set_attr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
    ) -> Result<(), ErrorCode> {
        let node = self.inodes.get_mut(&ino).ok_or(ErrorCode::NotFound)?;
        if let Some(size) = size {
            if node.dir {
                return Err(ErrorCode::IsDir);
            }
            if size > FILE_SIZE_MAX_BYTES {
                return Err(ErrorCode::FileTooLarge);
            }
            node.size = size;
        }
        if let Some(mode) = mode {
            node.mode = mode & 0o7777;
        }
        Ok(())
    }

    fn expected_tree(&self) -> BTreeMap<Path, Seen> {
        self.paths
            .iter()
            .map(|(path, ino)| {
                let node = &self.inodes[ino];
                let seen = Seen {
                    ino: *ino,
                    kind: if node.dir {
                        FileKind::Dir
                    } else {
                        FileKind::File
                    },
                    nlink: self.nlink(*ino),
                    size: if node.dir { DIR_SIZE } else { node.size },
                    mode: node.mode,
                    gid: node.gid,
                };
                (path.clone(), seen)
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    ino: u64,
    kind: FileKind,
    nlink: u32,
    size: u64,
    mode: u32,
    gid: u32,
}

/// Walks the namespace from the root with small readdir pages, checking
/// each entry against getattr and each directory's `..` on the way.
fn visible_tree(ns: &Namespace) -> BTreeMap<Path, Seen> {
    let mut tree = BTreeMap::new();
    let mut pending = vec![(Vec::new(), InodeId::ROOT)];
    while let Some((path, dir)) = pending.pop() {
        let attr = ns.attr(dir).unwrap();
        tree.insert(
            path.clone(),
            Seen {
                ino: dir.0,
                kind: attr.kind,
                nlink: attr.nlink,
                size: attr.size,
                mode: attr.mode,
                gid: attr.gid,
            },
        );
        assert!(tree.len() < 10_000, "the tree does not end: a cycle?");
        let mut after: Option<Vec<u8>> = None;
        loop {
            let op = MetaOp::Readdir {
                ino: dir,
                after: after.clone(),
                limit: 3,
            };
            let Ok(MetaReply::Dir { entries, more }) = ns.read(&op) else {
                panic!("readdir of {dir} failed");
            };
            for entry in entries {
                assert!(
                    after.as_ref().is_none_or(|a| *a < entry.name),
                    "readdir order"
                );
                after = Some(entry.name.clone());
                let child = join(&path, &entry.name);
                let attr = ns.attr(entry.ino).unwrap();
                assert_eq!(attr.kind, entry.kind);
                if attr.kind == FileKind::Dir {
                    let up = MetaOp::Lookup {
                        parent: entry.ino,
                        name: b"..".to_vec(),
                    };
                    let Ok(MetaReply::Entry(parent)) = ns.read(&up) else {
                        panic!("lookup .. of {}", entry.ino);
                    };
                    assert_eq!(parent.ino, dir, "parent pointer of {}", entry.ino);
                    pending.push((child, entry.ino));
                } else {
                    tree.insert(
                        child,
                        Seen {
                            ino: entry.ino.0,
                            kind: attr.kind,
                            nlink: attr.nlink,
                            size: attr.size,
                            mode: attr.mode,
                            gid: attr.gid,
                        },
                    );
                }
            }
            if !more {
                break;
            }
        }
    }
    tree
}

/// Picks an inode: usually one the model says is live (a directory when a
/// parent is wanted), sometimes any number ever handed out or the next one,
/// to reach NotFound and NotDir.
#[derive(Clone, Copy, Debug)]
struct Sel {
    any: bool,
    index: u8,
}

impl Sel {
    fn resolve(self, model: &Model, want_dir: bool) -> u64 {
        let live: Vec<u64> = model
            .inodes
            .iter()
            .filter(|(_, node)| node.dir || !want_dir)
            .map(|(ino, _)| *ino)
            .collect();
        if self.any || live.is_empty() {
            1 + u64::from(self.index) % model.next
        } else {
            live[usize::from(self.index) % live.len()]
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Create {
        parent: Sel,
        name: Vec<u8>,
        exclusive: bool,
    },
    Mkdir {
        parent: Sel,
        name: Vec<u8>,
    },
    Rename {
        parent: Sel,
        name: Vec<u8>,
        new_parent: Sel,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    Link {
        ino: Sel,
        parent: Sel,
        name: Vec<u8>,
    },
    Unlink {
        parent: Sel,
        name: Vec<u8>,
    },
    Rmdir {
        parent: Sel,
        name: Vec<u8>,
    },
    SetAttr {
        ino: Sel,
        mode: Option<u32>,
        size: Option<u64>,
    },
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        24 => prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(bytes),
        1 => prop::sample::select(vec![".", "..", "", "x/y", "n\0"]).prop_map(bytes),
        1 => Just(vec![b'x'; NAME_MAX_BYTES + 1]),
    ]
}

fn sel() -> impl Strategy<Value = Sel> {
    (prop::bool::weighted(0.15), any::<u8>()).prop_map(|(any, index)| Sel { any, index })
}

fn step() -> impl Strategy<Value = Step> {
    let mode = prop::sample::select(vec![
        RenameMode::Replace,
        RenameMode::NoReplace,
        RenameMode::Exchange,
    ]);
    let modes = prop::option::of(prop::sample::select(vec![
        0o644u32, 0o2775, 0o4755, 0o1777, 0o177_777,
    ]));
    let sizes = prop::option::of(prop::sample::select(vec![
        0u64,
        1,
        4096,
        1 << 20,
        FILE_SIZE_MAX_BYTES,
        FILE_SIZE_MAX_BYTES + 1,
    ]));
    let create =
        (sel(), name(), any::<bool>()).prop_map(|(parent, name, exclusive)| Step::Create {
            parent,
            name,
            exclusive,
        });
    let mkdir = (sel(), name()).prop_map(|(parent, name)| Step::Mkdir { parent, name });
    let rename = (sel(), name(), sel(), name(), mode).prop_map(
        |(parent, name, new_parent, new_name, mode)| Step::Rename {
            parent,
            name,
            new_parent,
            new_name,
            mode,
        },
    );
    let link =
        (sel(), sel(), name()).prop_map(|(ino, parent, name)| Step::Link { ino, parent, name });
    let unlink = (sel(), name()).prop_map(|(parent, name)| Step::Unlink { parent, name });
    let rmdir = (sel(), name()).prop_map(|(parent, name)| Step::Rmdir { parent, name });
    let set_attr =
        (sel(), modes, sizes).prop_map(|(ino, mode, size)| Step::SetAttr { ino, mode, size });
    prop_oneof![
        4 => create,
        3 => mkdir,
        5 => rename,
        2 => link,
        2 => unlink,
        2 => rmdir,
        1 => set_attr,
    ]
}

/// Turns a step into a concrete operation, applies it to the model, and
/// returns the operation with the model's verdict (the inode an entry reply
/// names, if any).
fn run_model(model: &mut Model, step: &Step) -> (MetaOp, Result<Option<u64>, ErrorCode>) {
    match step.clone() {
        Step::Create {
            parent,
            name,
            exclusive,
        } => {
            let parent = parent.resolve(model, true);
            let result = model.create(parent, &name, exclusive).map(Some);
            let op = MetaOp::Create {
                parent: InodeId(parent),
                name,
                kind: FileKind::File,
                mode: 0o644,
                uid: 10,
                gid: CREATE_GID,
                rdev: 0,
                exclusive,
            };
            (op, result)
        }
        Step::Mkdir { parent, name } => {
            let parent = parent.resolve(model, true);
            let result = model.mkdir(parent, &name).map(Some);
            let op = MetaOp::Mkdir {
                parent: InodeId(parent),
                name,
                mode: 0o755,
                uid: 10,
                gid: CREATE_GID,
            };
            (op, result)
        }
        Step::Rename {
            parent,
            name,
            new_parent,
            new_name,
            mode,
        } => {
            let parent = parent.resolve(model, true);
            let new_parent = new_parent.resolve(model, true);
            let result = model
                .rename(parent, &name, new_parent, &new_name, mode)
                .map(|()| None);
            let op = MetaOp::Rename {
                parent: InodeId(parent),
                name,
                new_parent: InodeId(new_parent),
                new_name,
                mode,
            };
            (op, result)
        }
        Step::Link { ino, parent, name } => {
            let ino = ino.resolve(model, false);
            let parent = parent.resolve(model, true);
            let result = model.link(ino, parent, &name).map(Some);
            let op = MetaOp::Link {
                ino: InodeId(ino),
                parent: InodeId(parent),
                name,
            };
            (op, result)
        }
        Step::Unlink { parent, name } => {
            let parent = parent.resolve(model, true);
            let result = model.unlink(parent, &name).map(|()| None);
            let op = MetaOp::Unlink {
                parent: InodeId(parent),
                name,
            };
            (op, result)
        }
        Step::Rmdir { parent, name } => {
            let parent = parent.resolve(model, true);
            let result = model.rmdir(parent, &name).map(|()| None);
            let op = MetaOp::Rmdir {
                parent: InodeId(parent),
                name,
            };
            (op, result)
        }
        Step::SetAttr { ino, mode, size } => {
            let ino = ino.resolve(model, false);
            let result = model.set_attr(ino, mode, size).map(|()| Some(ino));
            let op = MetaOp::SetAttr {
                ino: InodeId(ino),
                set: SetAttr {
                    mode,
                    size,
                    ..SetAttr::default()
                },
            };
            (op, result)
        }
    }
}

fn reply_ino(reply: &MetaReply) -> Option<u64> {
    match reply {
        MetaReply::Entry(attr) | MetaReply::Attr(attr) => Some(attr.ino.0),
        _ => None,
    }
}

/// Runs one case against `ns`; after every step the namespace passes its
/// whole-store check (every counter recomputed), and at the end its records
/// rebuild the same namespace.
fn run_case(steps: &[Step], mut ns: Namespace) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    for (time, step) in steps.iter().enumerate() {
        let (op, expected) = run_model(&mut model, step);
        let got = ns.apply(&op, time as i64 + 1);
        let got_short = got.as_ref().map(reply_ino).map_err(|err| err.code);
        prop_assert_eq!(got_short, expected, "step {} {:?}", time, op);
        let tree = visible_tree(&ns);
        prop_assert_eq!(tree, model.expected_tree(), "after step {} {:?}", time, op);
        prop_assert_eq!(ns.inode_count(), model.inodes.len() as u64);
        for ino in 1..=model.next {
            prop_assert_eq!(
                ns.attr(InodeId(ino)).is_ok(),
                model.inodes.contains_key(&ino)
            );
        }
        ns.commit(Vec::new()).unwrap();
        if let Err(why) = ns.check() {
            return Err(TestCaseError::fail(format!(
                "after step {time} {op:?}: {why}"
            )));
        }
        prop_assert!(ns.failure().is_none());
    }
    let rebuilt = Namespace::from_records(ns.records()).unwrap();
    prop_assert_eq!(rebuilt.records(), ns.records());
    prop_assert_eq!(visible_tree(&rebuilt), model.expected_tree());
    // Whatever is counted nowhere (a file whose counted link went) is
    // missing from the root's totals, never more.
    let totals = ns.dir_totals(InodeId::ROOT).unwrap();
    prop_assert!(totals.inodes < model.inodes.len() as u64);
    Ok(())
}

/// A namespace in a fresh RocksDB with no record cache, so every read goes
/// to the store.
fn on_rocksdb() -> (tempfile::TempDir, Namespace) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let db = rocksdb::DB::open_cf(&options, dir.path(), ["state"]).unwrap();
    let store = RocksStore::new(Arc::new(db), "state").unwrap();
    let ns = Namespace::open(Arc::new(store), 0, Policy::Replicas(3), 0).unwrap();
    (dir, ns)
}

proptest! {
    // Failures are kept under the crate's proptest-regressions/ (the working
    // directory of `cargo test` is the package root) and replayed first.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/namespace_model.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn namespace_matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
        run_case(&steps, Namespace::new(Policy::Replicas(3), 0))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/namespace_model_rocksdb.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn namespace_on_rocksdb_matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let (_dir, ns) = on_rocksdb();
        run_case(&steps, ns)?;
    }
}
