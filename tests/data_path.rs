//! The data path end to end on clusters of separate processes started by
//! `deploy/local-cluster.sh`: large round trips under replicas and erasure
//! coding, chunkservers SIGKILLed during a write and before a read, a byte
//! flipped on disk, and bad input at the file commands.

mod common;

use common::cluster::Cluster;
use common::{random_file, same_bytes};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn gib_round_trips_under_replicas_and_erasure_coding() {
    let cluster = Cluster::up(17500, 1, 6);
    let local = random_file(cluster.dir.path(), "gib", 1 << 30);
    cluster.ok(&["mkdir", "/r3"]);
    cluster.ok(&["policy", "set", "/r3", "replicas:3"]);
    cluster.ok(&["mkdir", "/ec"]);
    cluster.ok(&["policy", "set", "/ec", "ec:4+2"]);
    for dir in ["/r3", "/ec"] {
        let remote = format!("{dir}/gib");
        cluster.ok(&["put", local.to_str().expect("utf-8"), &remote]);
        let back = cluster.dir.path().join("back");
        cluster.ok(&["get", &remote, back.to_str().expect("utf-8")]);
        assert!(same_bytes(&local, &back), "{remote} came back different");
        std::fs::remove_file(&back).expect("remove");
        let stat = cluster.ok(&["stat", &remote]);
        assert!(stat.contains("size    1073741824 bytes"), "{stat}");
        let width = if dir == "/ec" { 6 } else { 3 };
        // 16 chunks of 64 MiB, each on `width` distinct servers.
        let pieces = cluster.pieces_of(&remote);
        assert_eq!(pieces.len(), 16 * width, "{stat}");
        for chunk in pieces.chunks(width) {
            let mut servers: Vec<usize> = chunk.iter().map(|(k, _)| *k).collect();
            servers.sort();
            servers.dedup();
            assert_eq!(servers.len(), width, "pieces share a server: {stat}");
        }
    }
}

#[test]
fn a_write_survives_a_chunkserver_killed_midway() {
    let cluster = Cluster::up(18500, 1, 4);
    let local = random_file(cluster.dir.path(), "big", 600 << 20);
    cluster.ok(&["mkdir", "/r3"]);
    cluster.ok(&["policy", "set", "/r3", "replicas:3"]);
    let mut put = Command::new(common::tessera_bin())
        .args(["put", local.to_str().expect("utf-8"), "/r3/big"])
        .env("TESSERA_CONFIG", cluster.config())
        .spawn()
        .expect("spawn put");
    // Kill a server once the write is under way: once the first chunk has
    // pieces on disk somewhere.
    let started = Instant::now();
    loop {
        let written = (1..=4).any(|k| {
            let tmp = cluster.root().join(format!("chunk-{k}/disk/tmp"));
            std::fs::read_dir(tmp).is_ok_and(|mut entries| entries.next().is_some())
        });
        if written || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    cluster.sigkill_chunk(2);
    let status = put.wait().expect("wait put");
    assert!(status.success(), "put failed after one chunkserver died");
    let back = cluster.dir.path().join("back");
    cluster.ok(&["get", "/r3/big", back.to_str().expect("utf-8")]);
    assert!(same_bytes(&local, &back));
}

#[test]
fn erasure_coded_reads_survive_two_dead_chunkservers() {
    let cluster = Cluster::up(19500, 1, 6);
    let local = random_file(cluster.dir.path(), "ec", 150 << 20);
    cluster.ok(&["mkdir", "/ec"]);
    cluster.ok(&["policy", "set", "/ec", "ec:4+2"]);
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/ec/file"]);
    // Kill the holders of the first chunk's first two data shards, so the
    // read must rebuild from parity.
    let pieces = cluster.pieces_of("/ec/file");
    let victims: Vec<usize> = pieces
        .iter()
        .filter(|(_, index)| *index < 2)
        .map(|(k, _)| *k)
        .take(2)
        .collect();
    assert_eq!(victims.len(), 2);
    for k in &victims {
        cluster.sigkill_chunk(*k);
    }
    let back = cluster.dir.path().join("back");
    cluster.ok(&["get", "/ec/file", back.to_str().expect("utf-8")]);
    assert!(same_bytes(&local, &back));
}

/// Every piece file of a chunk server, under its disk folder.
fn piece_files(cluster: &Cluster, k: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let pieces = cluster.root().join(format!("chunk-{k}/disk/pieces"));
    for shard in std::fs::read_dir(&pieces).expect("pieces dir") {
        let shard = shard.expect("entry").path();
        if shard.is_dir() {
            for file in std::fs::read_dir(&shard).expect("shard dir") {
                out.push(file.expect("entry").path());
            }
        }
    }
    out
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open piece");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.read_exact(&mut byte).expect("read");
    byte[0] ^= 0x40;
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.write_all(&byte).expect("write");
    file.sync_all().expect("sync");
}

#[test]
fn flipped_bytes_are_read_around_and_reported() {
    // The scrubber would race the reads for the flipped bytes (it may find
    // and quarantine a damaged copy before any client meets it); only
    // reads are under test here.
    let cluster = Cluster::up_with(20500, 1, 6, "", "[scrub]\nenabled = false");
    let meta_metrics = cluster.base + 2000;
    // Erasure coding reads data shards first, so a flipped byte in data
    // shard 0 is always met and must be rebuilt from parity.
    cluster.ok(&["mkdir", "/ec"]);
    cluster.ok(&["policy", "set", "/ec", "ec:4+2"]);
    let ec_local = random_file(cluster.dir.path(), "ec", 3 << 20);
    cluster.ok(&["put", ec_local.to_str().expect("utf-8"), "/ec/file"]);
    let pieces = cluster.pieces_of("/ec/file");
    let (holder, _) = pieces
        .iter()
        .find(|(_, index)| *index == 0)
        .copied()
        .expect("data shard 0");
    let files = piece_files(&cluster, holder);
    assert_eq!(files.len(), 1, "{files:?}");
    // Past the 4 KiB header, inside the data.
    flip_byte(&files[0], 4096 + 1000);
    let back = cluster.dir.path().join("back");
    cluster.ok(&["get", "/ec/file", back.to_str().expect("utf-8")]);
    assert!(same_bytes(&ec_local, &back));
    let reported = common::metric(
        &cluster.metrics_text(meta_metrics),
        "tessera_meta_pieces_reported_total",
    );
    assert!(reported >= 1.0, "the bad shard was not reported");

    // Under replicas:3 two of three copies are damaged; whichever a read
    // tries first, it ends with correct bytes, and after enough reads both
    // damaged copies have been met and reported.
    cluster.ok(&["mkdir", "/r3"]);
    cluster.ok(&["policy", "set", "/r3", "replicas:3"]);
    let local = random_file(cluster.dir.path(), "r3", 2 << 20);
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/r3/file"]);
    let holders: Vec<usize> = cluster
        .pieces_of("/r3/file")
        .iter()
        .map(|(k, _)| *k)
        .collect();
    for k in &holders[..2] {
        let files: Vec<PathBuf> = piece_files(&cluster, *k)
            .into_iter()
            .filter(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0) > (2 << 20))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        flip_byte(&files[0], 4096 + 70_000);
    }
    for _ in 0..20 {
        cluster.ok(&["get", "/r3/file", back.to_str().expect("utf-8")]);
        assert!(same_bytes(&local, &back));
    }
    let after = common::metric(
        &cluster.metrics_text(meta_metrics),
        "tessera_meta_pieces_reported_total",
    );
    assert!(after >= reported + 2.0, "reports: {reported} then {after}");
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing_behind() {
    let cluster = Cluster::up(21500, 1, 3);
    let local = random_file(cluster.dir.path(), "small", 100_000);
    let local = local.to_str().expect("utf-8");
    let back = cluster.dir.path().join("back");
    let back = back.to_str().expect("utf-8");

    let missing = cluster.tessera(&["get", "/no/such/file", back]);
    assert!(!missing.status.success());
    let text = String::from_utf8_lossy(&missing.stderr);
    assert!(text.contains("/no does not exist"), "{text}");
    assert!(!Path::new(back).exists());

    let no_parent = cluster.tessera(&["put", local, "/nowhere/file"]);
    assert!(!no_parent.status.success());
    assert!(String::from_utf8_lossy(&no_parent.stderr).contains("does not exist"));

    cluster.ok(&["mkdir", "/dir"]);
    let onto_dir = cluster.tessera(&["put", local, "/dir"]);
    assert!(!onto_dir.status.success());
    let text = String::from_utf8_lossy(&onto_dir.stderr);
    assert!(text.contains("is a directory"), "{text}");

    let get_dir = cluster.tessera(&["get", "/dir", back]);
    assert!(!get_dir.status.success());

    // A policy three servers cannot satisfy.
    cluster.ok(&["mkdir", "/wide"]);
    cluster.ok(&["policy", "set", "/wide", "ec:8+4"]);
    let wide = cluster.tessera(&["put", local, "/wide/file"]);
    assert!(!wide.status.success());
    let text = String::from_utf8_lossy(&wide.stderr);
    assert!(text.contains("needs 12 chunkservers"), "{text}");
    let listing = cluster.ok(&["ls", "/wide"]);
    assert!(listing.trim().is_empty(), "left behind: {listing}");

    let relative = cluster.tessera(&["put", local, "relative/path"]);
    assert!(!relative.status.success());
    assert!(String::from_utf8_lossy(&relative.stderr).contains("must be absolute"));

    let no_local = cluster.tessera(&["put", "/definitely/not/here", "/x"]);
    assert!(!no_local.status.success());
    assert!(
        cluster
            .ok(&["ls", "/"])
            .lines()
            .all(|l| !l.contains("tessera-put"))
    );
}
