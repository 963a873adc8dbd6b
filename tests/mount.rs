//! The FUSE mount end to end: `tessera mount` processes over clusters of
//! separate processes (`deploy/local-cluster.sh`). pjdfstest, random
//! operations on two mounts against a local directory, a tree of 20,000
//! files, and faults: chunkservers and the metaserver leader SIGKILLed
//! during copies, names too long, names that are not UTF-8, writes past the
//! size limit.
//!
//! Mounting with `allow_other` (which pjdfstest needs, as it switches users)
//! takes root, as in CI. The tests run one at a time: each starts a whole
//! cluster, and two cores are shared.

mod common;

use common::cluster::{Cluster, Mount};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("tempdir")
}

/// A small, fast, seedable generator (xorshift64*): the tests need
/// reproducible choices and bytes, not quality randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn pjdfstest_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PJDFSTEST") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    for candidate in [
        home.join(".cargo/bin/pjdfstest"),
        PathBuf::from("/usr/local/bin/pjdfstest"),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("pjdfstest is not installed: `cargo install pjdfstest --locked` (bash .ci/run does it)");
}

#[test]
fn pjdfstest_passes_on_a_mount() {
    let _serial = serial();
    let cluster = Cluster::up(24500, 3, 3);
    let scratch = scratch("tessera-pjdfstest");
    let mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let target = mount.path.join("pjdfstest");
    std::fs::create_dir(&target).expect("test directory");
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let second = scratch.path().join("second-fs");
    std::fs::create_dir(&second).expect("secondary directory");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/posix/pjdfstest.toml");
    let out = Command::new(pjdfstest_bin())
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&target)
        .arg("-s")
        .arg(&second)
        .current_dir(scratch.path())
        .output()
        .expect("run pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("Summary:"))
        .unwrap_or("no summary");
    eprintln!("pjdfstest: {summary}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|line| line.trim_end().ends_with("FAILED") || line.contains("failed"))
        .filter(|line| !line.starts_with("Summary:"))
        .collect();
    assert!(
        out.status.success() && summary.contains(" 0 failed"),
        "pjdfstest failed ({summary}):\n{}\n{}\nmount log:\n{}",
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr),
        mount.log_text()
    );
    // What pjdfstest skips must be exactly what docs/posix.md explains.
    let skipped: Vec<&str> = stdout
        .lines()
        .filter(|line| line.trim_end().ends_with("skipped"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/posix.md"))
            .expect("docs/posix.md");
    for name in &skipped {
        assert!(
            docs.contains(name),
            "pjdfstest skipped {name}, which docs/posix.md does not explain"
        );
    }
    mount.unmount();
}

/// One open file, on a mount and in the local model.
struct Handle {
    name: usize,
    mount: usize,
    remote: File,
    local: File,
}

fn read_at(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file
            .read_at(&mut out[done..], offset + done as u64)
            .expect("read");
        if n == 0 {
            break;
        }
        done += n;
    }
    out.truncate(done);
    out
}

#[test]
fn random_operations_on_two_mounts_match_a_local_directory() {
    let _serial = serial();
    let cluster = Cluster::up(25500, 3, 3);
    let scratch = scratch("tessera-random-ops");
    // Names are looked up afresh on every open, so a rename on one mount is
    // seen at once on the other (the default caches names for a second).
    let flags = ["--entry-timeout-ms", "0"];
    let mounts = [
        Mount::new(&cluster, scratch.path(), "a", &flags),
        Mount::new(&cluster, scratch.path(), "b", &flags),
    ];
    let local_root = scratch.path().join("local");
    std::fs::create_dir(&local_root).expect("local dir");
    std::fs::create_dir(mounts[0].path.join("ops")).expect("remote dir");
    let remote =
        |mount: usize, name: usize| mounts[mount].path.join("ops").join(format!("f{name}"));
    let local = |name: usize| local_root.join(format!("f{name}"));
    const NAMES: usize = 4;
    const MAX_OFFSET: u64 = 3 << 20;
    const SMALL_MAX: u64 = 24 * 1024;

    for seed in [0x9E37_79B9_7F4A_7C15u64, 42, 7_777_777] {
        let mut rng = Rng(seed);
        let mut handles: Vec<Handle> = Vec::new();
        let mut log: Vec<String> = Vec::new();
        for step in 0..250 {
            let context = |log: &Vec<String>| {
                format!(
                    "seed {seed} step {step}; last operations:\n{}",
                    log[log.len().saturating_sub(12)..].join("\n")
                )
            };
            match rng.below(10) {
                0..=1 => {
                    // Open (creating if needed) on a mount; a file's handles
                    // live on one mount at a time, as close-to-open asks.
                    let name = rng.below(NAMES as u64) as usize;
                    let mount = rng.below(2) as usize;
                    let before = handles.len();
                    handles.retain(|h| h.name != name || h.mount == mount);
                    if handles.len() != before {
                        log.push(format!("close f{name} on the other mount"));
                    }
                    if handles.len() >= 6 {
                        handles.remove(0);
                    }
                    let open = |path: &Path| {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(path)
                    };
                    let remote_file = open(&remote(mount, name)).unwrap_or_else(|e| {
                        panic!("open f{name} on mount {mount}: {e}; {}", context(&log))
                    });
                    let local_file = open(&local(name)).expect("local open");
                    // Close-to-open: what the other mount closed is here.
                    let size = local_file.metadata().expect("local stat").len();
                    assert_eq!(
                        remote_file.metadata().expect("remote stat").len(),
                        size,
                        "size of f{name} at open; {}",
                        context(&log)
                    );
                    assert!(
                        read_at(&remote_file, 0, size as usize)
                            == read_at(&local_file, 0, size as usize),
                        "contents of f{name} at open on mount {mount}; {}",
                        context(&log)
                    );
                    log.push(format!("open f{name} on mount {mount}"));
                    handles.push(Handle {
                        name,
                        mount,
                        remote: remote_file,
                        local: local_file,
                    });
                }
                2..=4 if !handles.is_empty() => {
                    let h = &handles[rng.below(handles.len() as u64) as usize];
                    // Half the names hold small files, which live inline
                    // in the metaservers until a write takes them past
                    // the client's limit (16 KiB).
                    let (offset, len) = if h.name < NAMES / 2 {
                        (rng.below(SMALL_MAX), 1 + rng.below(8 * 1024) as usize)
                    } else {
                        (rng.below(MAX_OFFSET), 1 + rng.below(256 * 1024) as usize)
                    };
                    let data = rng.bytes(len);
                    h.remote
                        .write_all_at(&data, offset)
                        .unwrap_or_else(|e| panic!("write: {e}; {}", context(&log)));
                    h.local.write_all_at(&data, offset).expect("local write");
                    log.push(format!("write f{} {len} bytes at {offset}", h.name));
                }
                5 if !handles.is_empty() => {
                    let h = &handles[rng.below(handles.len() as u64) as usize];
                    let size = rng.below(if h.name < NAMES / 2 {
                        SMALL_MAX
                    } else {
                        MAX_OFFSET
                    });
                    h.remote
                        .set_len(size)
                        .unwrap_or_else(|e| panic!("truncate: {e}; {}", context(&log)));
                    h.local.set_len(size).expect("local truncate");
                    log.push(format!("truncate f{} to {size}", h.name));
                }
                6..=7 if !handles.is_empty() => {
                    let h = &handles[rng.below(handles.len() as u64) as usize];
                    let offset = rng.below(MAX_OFFSET);
                    let len = 1 + rng.below(512 * 1024) as usize;
                    let got = read_at(&h.remote, offset, len);
                    let want = read_at(&h.local, offset, len);
                    assert!(
                        got == want,
                        "read of f{} ({len} at {offset}) gave {} bytes, wanted {}; {}",
                        h.name,
                        got.len(),
                        want.len(),
                        context(&log)
                    );
                    log.push(format!("read f{} {len} at {offset}", h.name));
                }
                8 => {
                    let from = rng.below(NAMES as u64) as usize;
                    let to = rng.below(NAMES as u64) as usize;
                    if from == to || !local(from).exists() {
                        continue;
                    }
                    // Through the mount holding the files' handles, if any.
                    let mount = handles
                        .iter()
                        .find(|h| h.name == from || h.name == to)
                        .map(|h| h.mount)
                        .unwrap_or_else(|| rng.below(2) as usize);
                    handles.retain(|h| (h.name != from && h.name != to) || h.mount == mount);
                    std::fs::rename(remote(mount, from), remote(mount, to))
                        .unwrap_or_else(|e| panic!("rename: {e}; {}", context(&log)));
                    std::fs::rename(local(from), local(to)).expect("local rename");
                    // Open handles follow their inode; the replaced file
                    // lives on while open, under no name.
                    for h in handles.iter_mut() {
                        if h.name == to {
                            h.name = usize::MAX;
                        }
                    }
                    for h in handles.iter_mut() {
                        if h.name == from {
                            h.name = to;
                        }
                    }
                    log.push(format!("rename f{from} -> f{to} on mount {mount}"));
                }
                _ => {
                    if !handles.is_empty() {
                        let h = handles.remove(rng.below(handles.len() as u64) as usize);
                        log.push(format!("close f{}", h.name));
                    }
                }
            }
        }
        drop(handles);
        // Every file as the local model has it, from both mounts.
        for name in 0..NAMES {
            let want = std::fs::read(local(name)).ok();
            for mount in 0..2 {
                let got = std::fs::read(remote(mount, name)).ok();
                assert!(
                    got == want,
                    "seed {seed}: f{name} on mount {mount} differs at the end ({:?} vs {:?} bytes)",
                    got.map(|g| g.len()),
                    want.as_ref().map(|w| w.len())
                );
            }
        }
        for name in 0..NAMES {
            let _ = std::fs::remove_file(local(name));
            let _ = std::fs::remove_file(remote(0, name));
        }
    }
    for mount in mounts {
        mount.unmount();
    }
}

/// Writes a tree of `files` small files (0 to 8 KiB) in 100 directories,
/// plus a few large files, and returns its size in bytes.
fn make_tree(root: &Path, files: usize, large_mib: &[u64], rng: &mut Rng) -> u64 {
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("d{:02}/e{:02}", i % 10, (i / 10) % 10));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let len = rng.below(8193) as usize;
        std::fs::write(dir.join(format!("f{i:05}.dat")), rng.bytes(len)).expect("write");
        total += len as u64;
    }
    for (i, mib) in large_mib.iter().enumerate() {
        let path = root.join(format!("large-{i}.bin"));
        let mut file = File::create(&path).expect("create large");
        let block = rng.bytes(1 << 20);
        for m in 0..*mib {
            let mut chunk = block.clone();
            chunk[..8].copy_from_slice(&m.to_le_bytes());
            file.write_all(&chunk).expect("write large");
        }
        total += mib << 20;
    }
    std::os::unix::fs::symlink("large-0.bin", root.join("link-to-large")).expect("symlink");
    total
}

fn diff_trees(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .expect("diff");
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one command per top-level entry of `tree` at once (as a parallel
/// build or several unpacks would) and waits for all of them.
fn per_part(tree: &Path, command: impl Fn(&str) -> Command) {
    let mut parts: Vec<String> = std::fs::read_dir(tree)
        .expect("list tree")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    parts.sort();
    let children: Vec<(String, std::process::Child)> = parts
        .iter()
        .map(|part| {
            let child = command(part)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            (part.clone(), child)
        })
        .collect();
    for (part, child) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{part}: {}{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_tree_of_twenty_thousand_files_unpacks_compares_and_deletes() {
    let _serial = serial();
    // `TESSERA_TREE_FILES` shortens the run (CI uses fewer files, and drops
    // the largest file); the same code runs either way.
    let files: usize = std::env::var("TESSERA_TREE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // One file of exactly a chunk, the others across chunk boundaries.
    let large_mib: &[u64] = if files >= 20_000 {
        &[64, 150, 200]
    } else {
        &[64, 150]
    };
    let cluster = Cluster::up(26500, 1, 3);
    let scratch = scratch("tessera-workload");
    let mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let tree = scratch.path().join("tree");
    let bytes = make_tree(&tree, files, large_mib, &mut Rng(0xC0FFEE));
    // One archive per top-level entry, unpacked side by side.
    let tars = scratch.path().join("tars");
    std::fs::create_dir(&tars).expect("tars");
    per_part(&tree, |part| {
        let mut c = Command::new("tar");
        c.arg("-cf")
            .arg(tars.join(format!("{part}.tar")))
            .arg("-C")
            .arg(&tree)
            .arg(part);
        c
    });

    // The common parent exists first: GNU tar creating a missing parent
    // races with its siblings (on a local disk too).
    let started = Instant::now();
    std::fs::create_dir(mount.path.join("tree")).expect("mkdir through the mount");
    per_part(&tree, |part| {
        let mut c = Command::new("tar");
        c.arg("-xf")
            .arg(tars.join(format!("{part}.tar")))
            .arg("-C")
            .arg(mount.path.join("tree"));
        c
    });
    eprintln!(
        "tar -x of {} files ({} MiB), one tar per top-level entry: {:.1} s",
        files + 3,
        bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    let diff_all = |remote: &Path| {
        per_part(&tree, |part| {
            let mut c = Command::new("diff");
            c.arg("-r")
                .arg("--no-dereference")
                .arg(tree.join(part))
                .arg(remote.join(part));
            c
        })
    };
    let started = Instant::now();
    diff_all(&mount.path.join("tree"));
    eprintln!("diff -r: {:.1} s", started.elapsed().as_secs_f64());

    // The same tree through `tessera put -r`, read back through the mount.
    let started = Instant::now();
    cluster.ok(&["put", "-r", &tree.to_string_lossy(), "/put-tree"]);
    eprintln!("tessera put -r: {:.1} s", started.elapsed().as_secs_f64());
    diff_all(&mount.path.join("put-tree"));

    let started = Instant::now();
    for top in ["tree", "put-tree"] {
        per_part(&tree, |part| {
            let mut c = Command::new("rm");
            c.arg("-rf").arg(mount.path.join(top).join(part));
            c
        });
        std::fs::remove_dir(mount.path.join(top)).expect("rmdir through the mount");
    }
    eprintln!("rm -rf of both: {:.1} s", started.elapsed().as_secs_f64());
    let left: Vec<_> = std::fs::read_dir(&mount.path)
        .expect("list")
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .expect("list");
    assert!(left.is_empty(), "left after rm -rf: {left:?}");
    mount.unmount();
}

#[test]
fn bad_names_and_sizes_get_clear_errors() {
    let _serial = serial();
    let cluster = Cluster::up(27500, 1, 3);
    let scratch = scratch("tessera-bad-input");
    let mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let root = &mount.path;

    // Names: 255 bytes is the longest.
    let longest = "n".repeat(255);
    File::create(root.join(&longest)).expect("a 255-byte name");
    let too_long = "n".repeat(256);
    let err = File::create(root.join(&too_long)).expect_err("a 256-byte name");
    assert_eq!(err.raw_os_error(), Some(libc_enametoolong()), "{err}");
    let err = std::fs::create_dir(root.join(&too_long)).expect_err("a 256-byte directory name");
    assert_eq!(err.raw_os_error(), Some(libc_enametoolong()), "{err}");

    // Names that are not UTF-8 are allowed, as on Linux.
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\xfe.txt");
    std::fs::write(root.join(odd), b"latin-1 name").expect("a non-UTF-8 name");
    let listed: Vec<Vec<u8>> = std::fs::read_dir(root)
        .expect("list")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert!(listed.contains(&odd.as_bytes().to_vec()), "{listed:?}");
    assert_eq!(
        std::fs::read(root.join(odd)).expect("read back"),
        b"latin-1 name"
    );

    // Writes and truncates past the largest file size (2^50 bytes).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(root.join("huge"))
        .expect("create");
    let err = file
        .write_all_at(b"xy", (1u64 << 50) - 1)
        .expect_err("a write past the size limit");
    assert_eq!(err.raw_os_error(), Some(27), "EFBIG expected: {err}");
    let err = file
        .set_len((1 << 50) + 1)
        .expect_err("a truncate past the limit");
    assert_eq!(err.raw_os_error(), Some(27), "EFBIG expected: {err}");
    file.write_all_at(b"end", (1u64 << 50) - 3)
        .expect("a write that ends at the limit");
    drop(file);
    assert_eq!(
        std::fs::metadata(root.join("huge")).expect("stat").len(),
        1 << 50
    );
    // A sparse read far into the file is zeros.
    let file = File::open(root.join("huge")).expect("open");
    assert_eq!(read_at(&file, 1 << 40, 4096), vec![0u8; 4096]);
    assert_eq!(read_at(&file, (1 << 50) - 3, 10), b"end");
    drop(file);
    std::fs::remove_file(root.join("huge")).expect("unlink");

    // The mount still answers.
    assert!(std::fs::read_dir(root).expect("list").count() >= 2);

    // A killed mount leaves a dead mount point; mounting there again says
    // what it is and how to clear it.
    let mut mount = mount;
    mount.sigkill();
    let err = std::fs::metadata(&mount.path).expect_err("a dead mount");
    assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN expected: {err}");
    let again = Command::new(common::tessera_bin())
        .arg("mount")
        .arg(&mount.path)
        .arg("--config")
        .arg(cluster.config())
        .output()
        .expect("tessera mount");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("dead mount") && stderr.contains("fusermount3 -u"),
        "{stderr}"
    );
}

fn libc_enametoolong() -> i32 {
    36
}

fn random_file(path: &Path, mib: u64, seed: u64) {
    let mut rng = Rng(seed);
    let mut file = File::create(path).expect("create");
    for _ in 0..mib {
        file.write_all(&rng.bytes(1 << 20)).expect("write");
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let status = Command::new("cmp").arg(a).arg(b).status().expect("cmp");
    status.success()
}

/// Runs `cp` in the background and returns it with when it started.
fn spawn_cp(args: &[&Path]) -> std::process::Child {
    Command::new("cp")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cp")
}

fn wait_ok(mut child: std::process::Child, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            assert!(status.success(), "{what} failed: {err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung for {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_copy_survives_a_chunkserver_killed_under_it() {
    let _serial = serial();
    let cluster = Cluster::up(28500, 1, 4);
    let scratch = scratch("tessera-cp-chunk-kill");
    let mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let source = scratch.path().join("source.bin");
    random_file(&source, 600, 11);
    let target = mount.path.join("copy.bin");
    let cp = spawn_cp(&[&source, &target]);
    // Kill a server once the copy is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) < 100 << 20 {
        assert!(Instant::now() < deadline, "the copy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.sigkill("chunk-2");
    wait_ok(cp, "cp into the mount", Duration::from_secs(300));
    assert!(same_bytes(&source, &target), "the copy differs");
    // A later open reads it through whatever servers are left.
    let out = scratch.path().join("back.bin");
    std::fs::copy(&target, &out).expect("read back");
    assert!(same_bytes(&source, &out));
    mount.unmount();
}

#[test]
fn a_recursive_copy_survives_the_metaserver_leader_killed() {
    let _serial = serial();
    let cluster = Cluster::up(29500, 3, 3);
    let scratch = scratch("tessera-cp-leader-kill");
    let mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let tree = scratch.path().join("tree");
    make_tree(&tree, 1_500, &[40], &mut Rng(5));
    let leader = cluster.meta_leader();
    let cp = spawn_cp(&[Path::new("-r"), &tree, &mount.path]);
    std::thread::sleep(Duration::from_secs(2));
    cluster.sigkill(&format!("meta-{leader}"));
    eprintln!("killed metaserver {leader} during cp -r");
    wait_ok(cp, "cp -r into the mount", Duration::from_secs(600));
    diff_trees(&tree, &mount.path.join("tree"));
    mount.unmount();
}

/// The close contract: once `close` returns, the bytes (inline or in
/// chunks) and the attribute changes folded into it are committed, so a
/// SIGKILL of the mount and of a chunkserver right after loses none of it.
#[test]
fn files_closed_before_the_mount_and_a_chunkserver_are_killed_read_back_exact() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let cluster = Cluster::up(38500, 1, 4);
    let scratch = scratch("tessera-close-kill");
    let mut mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let mut rng = Rng(17);
    // Inline (well under the limit, at it), and in chunks (past it).
    let sizes = [
        0usize,
        1,
        100,
        4096,
        16 * 1024,
        16 * 1024 + 1,
        40_000,
        1 << 20,
    ];
    let mut written = Vec::new();
    for (i, size) in sizes.iter().cycle().take(40).enumerate() {
        let name = format!("f{i:02}");
        let bytes = rng.bytes(*size);
        // As tar does: O_EXCL, write, futimens and fchmod on the open file.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(mount.path.join(&name))
            .expect("create");
        file.write_all(&bytes).expect("write");
        file.set_modified(mtime).expect("futimens");
        file.set_permissions(std::fs::Permissions::from_mode(0o640))
            .expect("fchmod");
        drop(file);
        written.push((name, bytes));
    }
    mount.sigkill();
    cluster.sigkill("chunk-2");
    let _ = Command::new("umount").arg("-l").arg(&mount.path).status();
    let again = Mount::new(&cluster, scratch.path(), "again", &[]);
    for (name, bytes) in &written {
        let path = again.path.join(name);
        let got = std::fs::read(&path).unwrap_or_else(|err| panic!("read {name}: {err}"));
        assert!(
            got == *bytes,
            "{name}: {} bytes back, {} written",
            got.len(),
            bytes.len()
        );
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640, "{name}: mode");
        assert_eq!(meta.modified().expect("mtime"), mtime, "{name}: mtime");
    }
    again.unmount();
}

/// Unsynced pieces over every chunkserver of `cluster`, from their metrics.
fn unsynced_pieces(cluster: &Cluster, chunkservers: u16) -> f64 {
    (0..chunkservers)
        .map(|k| {
            let text = cluster.metrics_text(cluster.base + 2100 + k);
            common::metric(&text, "tessera_chunk_unsynced_pieces")
        })
        .sum()
}

/// The durability contract with the chunkservers' flusher set to an hour:
/// a plain close leaves the file's pieces in the servers' page caches; an
/// fsync (from a later handle, after the close), an O_SYNC write, a
/// `tessera put` and a mount with `--sync-on-close` each return only once
/// they are on disk.
#[test]
fn fsync_reaches_the_disk_and_a_plain_close_leaves_it_to_the_flusher() {
    use std::os::unix::fs::OpenOptionsExt;
    let _serial = serial();
    let cluster = Cluster::up_args(40800, 1, 3, &["--sync-interval-ms", "3600000"]);
    let scratch = scratch("tessera-fsync");
    let mount = Mount::new(&cluster, scratch.path(), "mnt", &[]);
    let mut rng = Rng(23);
    // Past the inline limit, so the bytes go to chunks.
    let bytes = rng.bytes(200_000);

    let path = mount.path.join("closed");
    std::fs::write(&path, &bytes).expect("write and close");
    assert_eq!(
        unsynced_pieces(&cluster, 3),
        3.0,
        "a plain close leaves its three replicas to the flusher"
    );
    let file = OpenOptions::new()
        .read(true)
        .open(&path)
        .expect("open again");
    file.sync_all().expect("fsync");
    assert_eq!(
        unsynced_pieces(&cluster, 3),
        0.0,
        "fsync returned before every replica was on disk"
    );
    drop(file);

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc_o_sync())
        .open(mount.path.join("osync"))
        .expect("create with O_SYNC");
    file.write_all(&bytes).expect("O_SYNC write");
    assert_eq!(
        unsynced_pieces(&cluster, 3),
        0.0,
        "an O_SYNC write returned before its bytes were on disk"
    );
    drop(file);

    let local = scratch.path().join("local");
    std::fs::write(&local, &bytes).expect("local file");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/put"]);
    assert_eq!(
        unsynced_pieces(&cluster, 3),
        0.0,
        "tessera put returned before its bytes were on disk"
    );

    let syncing = Mount::new(&cluster, scratch.path(), "syncing", &["--sync-on-close"]);
    std::fs::write(syncing.path.join("synced-close"), &bytes).expect("write and close");
    assert_eq!(
        unsynced_pieces(&cluster, 3),
        0.0,
        "a close with --sync-on-close returned before its bytes were on disk"
    );
    for name in ["closed", "osync", "put", "synced-close"] {
        assert!(
            std::fs::read(mount.path.join(name)).expect("read back") == bytes,
            "{name} reads back different bytes"
        );
    }
    syncing.unmount();
    mount.unmount();
}

/// O_SYNC on Linux (the test crate does not depend on libc).
fn libc_o_sync() -> i32 {
    0o4010000
}

/// Read-only opens of small files are registered a few milliseconds after
/// they are answered; the file still stays readable through an unlink on
/// this mount (which registers what it holds first) and on another mount
/// after the registration, and a file with chunks is registered at once.
#[test]
fn read_only_opens_keep_their_files_through_unlinks_on_either_mount() {
    use std::os::unix::fs::MetadataExt;
    let _serial = serial();
    let cluster = Cluster::up(43000, 1, 3);
    let scratch = scratch("tessera-read-opens");
    let a = Mount::new(&cluster, scratch.path(), "a", &[]);
    let b = Mount::new(&cluster, scratch.path(), "b", &[]);
    let mut rng = Rng(31);
    let small = rng.bytes(3000);
    let large = rng.bytes(300_000);
    for (name, bytes) in [("same", &small), ("other", &small), ("chunked", &large)] {
        std::fs::write(a.path.join(name), bytes).expect("write");
        // Seen by both mounts' kernels, as a listing or a stat would.
        std::fs::metadata(a.path.join(name)).expect("stat on a");
        std::fs::metadata(b.path.join(name)).expect("stat on b");
    }
    let read_all = |file: &File, len: usize| read_at(file, 0, len);

    // Unlinked on the same mount at once: the open is registered first.
    let held = File::open(a.path.join("same")).expect("open");
    std::fs::remove_file(a.path.join("same")).expect("unlink on a");
    std::thread::sleep(Duration::from_millis(300));
    assert!(read_all(&held, small.len()) == small, "same-mount unlink");
    assert_eq!(held.metadata().expect("fstat").nlink(), 0);
    drop(held);

    // Unlinked on another mount once the registration went out.
    let held = File::open(a.path.join("other")).expect("open");
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(b.path.join("other")).expect("unlink on b");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(read_all(&held, small.len()) == small, "other-mount unlink");
    drop(held);

    // A file with chunks, unlinked on another mount right after the open,
    // and read after the chunkservers had time to delete freed pieces.
    let held = File::open(a.path.join("chunked")).expect("open");
    std::fs::remove_file(b.path.join("chunked")).expect("unlink on b");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        read_all(&held, large.len()) == large,
        "chunked file unlinked on b"
    );
    drop(held);

    b.unmount();
    a.unmount();
}
