//! Metaserver benchmark at scale: millions of files against one voter (its
//! own process on loopback), to see whether creates slow down as the
//! namespace grows, what the namespace costs in memory and on disk, how long
//! a crashed metaserver takes to answer again, and how reads, listings of a
//! huge directory and the local disk compare in the same run.
//!
//! Run: `cargo run --release -p tessera-meta --example scale_bench -- [--dir DIR]
//! [--files N] [--dir-size N] [--concurrency N] [--cache-mib N]`

mod common;

use common::{flag, free_port, number, rss_bytes};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_client::MetaClient;
use tessera_client::meta::MetaTimeouts;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{FileKind, MetaOp, MetaReply};

const SERVER_ID: u64 = 1;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The deep tree's depth; its fanout follows from the file count, since ten
/// directories per level over eight levels would be 10^8 leaves.
const TREE_DEPTH: u32 = 8;
const TREE_FANOUT_MAX: u64 = 10;
/// Fewest files a leaf of the deep tree holds on average.
const LEAF_FILES_MIN: u64 = 10;
/// Share of the files in the deep tree, in percent.
const DEEP_PERCENT: u64 = 10;
/// Each read phase stops at whichever bound comes first, so a slow cold
/// store cannot stretch a run indefinitely.
const READ_TIME: Duration = Duration::from_secs(5);
const READ_CALLS_MAX: u64 = 200_000;
const HOT_FILES: u64 = 10_000;
const LOCAL_FILES: u64 = 100_000;
/// How long a restarted metaserver may take to answer before the run fails.
const RESTART_LIMIT: Duration = Duration::from_secs(600);

struct Options {
    dir: PathBuf,
    files: u64,
    dir_size: u64,
    concurrency: usize,
    cache_mib: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options {
        dir: PathBuf::from(
            flag(&args, "--dir").unwrap_or_else(|| "/var/tmp/tessera-scale-bench".into()),
        ),
        files: number(&args, "--files", 10_000_000),
        dir_size: number(&args, "--dir-size", 1_000_000),
        concurrency: number(&args, "--concurrency", 64),
        cache_mib: number(&args, "--cache-mib", 256),
    };
    assert!(options.files > 0, "--files must be at least 1");
    assert!(options.dir_size > 0, "--dir-size must be at least 1");
    assert!(options.concurrency > 0, "--concurrency must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if flag(&args, "--serve").is_some() {
        let port: u16 = number(&args, "--port", 0);
        let init = args.iter().any(|a| a == "--init");
        let config = common::config(&options.dir, SERVER_ID, port, options.cache_mib << 20);
        runtime.block_on(common::serve(config, init));
    } else {
        runtime.block_on(bench(&options));
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    common::data_dir(dir, SERVER_ID)
}

/// Starts the metaserver process and returns once it listens.
fn spawn(options: &Options, port: u16, init: bool) -> (Child, SocketAddr) {
    let extra = ["--cache-mib".to_string(), options.cache_mib.to_string()];
    common::spawn(&options.dir, SERVER_ID, port, init, &extra)
}

fn tree_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("list {}: {e}", path.display()))
    {
        let entry = entry.expect("directory entry");
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            tree_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn ino(reply: MetaReply) -> InodeId {
    match reply {
        MetaReply::Entry(attr) | MetaReply::Attr(attr) => attr.ino,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// splitmix64: random file picks that are a pure function of the call's
/// index, so a reply can be checked against the file its call asked for.
fn pick(seed: u64, i: u64, n: u64) -> u64 {
    let mut z = (seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % n
}

/// Where file `i` of the run lives: the first `big_files` fill the big
/// directories one after another, the rest spread over the deep tree's
/// leaves in contiguous runs.
struct Layout {
    dir_size: u64,
    big_files: u64,
    big_dirs: Vec<InodeId>,
    deep_files: u64,
    fanout: u64,
    tree_dirs: u64,
    leaves: Vec<InodeId>,
}

impl Layout {
    fn place(&self, i: u64) -> (InodeId, Vec<u8>) {
        if i < self.big_files {
            let dir = self.big_dirs[(i / self.dir_size) as usize];
            (dir, format!("f{:07}", i % self.dir_size).into_bytes())
        } else {
            let j = i - self.big_files;
            let leaf = j * self.leaves.len() as u64 / self.deep_files;
            (self.leaves[leaf as usize], format!("f{j}").into_bytes())
        }
    }

    fn part(&self, i: u64) -> String {
        if i < self.big_files {
            format!("big directory {}", i / self.dir_size + 1)
        } else {
            "deep tree".into()
        }
    }
}

/// Calls completed by a phase and the time they took.
struct Rate {
    calls: u64,
    secs: f64,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.calls as f64 / self.secs
    }
}

/// Runs calls `0..calls` over `concurrency` workers, each taking the next
/// index, until all are done or `limit` passes; `done` sees every reply.
async fn phase(
    client: &Arc<MetaClient>,
    concurrency: usize,
    calls: u64,
    limit: Option<Duration>,
    what: &'static str,
    make: impl Fn(u64) -> MetaOp + Send + Sync + 'static,
    done: impl Fn(u64, MetaReply) + Send + Sync + 'static,
) -> Rate {
    let (make, done) = (Arc::new(make), Arc::new(done));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, make, done, next) = (client.clone(), make.clone(), done.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut completed = 0u64;
            loop {
                if limit.is_some_and(|limit| started.elapsed() >= limit) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                let reply = client
                    .call(make(i))
                    .await
                    .unwrap_or_else(|e| panic!("{what} (call {i}) failed: {e}"));
                done(i, reply);
                completed += 1;
            }
            completed
        }));
    }
    let mut completed = 0;
    for task in tasks {
        completed += task.await.expect("a benchmark worker panicked");
    }
    Rate {
        calls: completed,
        secs: started.elapsed().as_secs_f64(),
    }
}

async fn mkdir(client: &MetaClient, parent: InodeId, name: &str) -> InodeId {
    ino(client
        .call(mkdir_op(parent, name.as_bytes().to_vec()))
        .await
        .unwrap_or_else(|e| panic!("mkdir {name}: {e}")))
}

fn mkdir_op(parent: InodeId, name: Vec<u8>) -> MetaOp {
    MetaOp::Mkdir {
        parent,
        name,
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

/// Makes the directories files go into: the big ones, and the deep tree
/// level by level (timed: directories are metadata too).
async fn make_layout(client: &Arc<MetaClient>, options: &Options) -> (Layout, Rate) {
    let deep_files = options.files * DEEP_PERCENT / 100;
    let big_files = options.files - deep_files;
    let mut big_dirs = Vec::new();
    for k in 0..big_files.div_ceil(options.dir_size) {
        big_dirs.push(mkdir(client, InodeId::ROOT, &format!("big-{k:03}")).await);
    }
    let fanout = (2..=TREE_FANOUT_MAX)
        .rev()
        .find(|f| f.pow(TREE_DEPTH) * LEAF_FILES_MIN <= deep_files)
        .unwrap_or(1);
    let mut level = vec![mkdir(client, InodeId::ROOT, "deep").await];
    let started = Instant::now();
    let mut tree_dirs = 0;
    for _ in 0..TREE_DEPTH {
        let parents = Arc::new(level);
        let count = parents.len() as u64 * fanout;
        let made = Arc::new(Mutex::new(vec![InodeId::ROOT; count as usize]));
        let (into, record) = (parents.clone(), made.clone());
        phase(
            client,
            options.concurrency,
            count,
            None,
            "mkdir in the deep tree",
            move |d| {
                mkdir_op(
                    into[(d / fanout) as usize],
                    format!("d{}", d % fanout).into_bytes(),
                )
            },
            move |d, reply| record.lock().expect("lock")[d as usize] = ino(reply),
        )
        .await;
        tree_dirs += count;
        level = Arc::try_unwrap(made)
            .expect("workers are done")
            .into_inner()
            .expect("lock");
    }
    let rate = Rate {
        calls: tree_dirs,
        secs: started.elapsed().as_secs_f64(),
    };
    let layout = Layout {
        dir_size: options.dir_size,
        big_files,
        big_dirs,
        deep_files,
        fanout,
        tree_dirs,
        leaves: level,
    };
    (layout, rate)
}

/// One row of the create table: the server as it stood when the count
/// reached `files`.
struct Milestone {
    files: u64,
    secs: f64,
    rss: u64,
}

struct Creates {
    rate: Rate,
    milestones: Vec<Milestone>,
    /// Create rate of every progress interval.
    intervals: Vec<f64>,
    /// Every file's inode, by index, for stats after the restart.
    inos: Vec<InodeId>,
}

/// Files per row of the create table: a round step (1, 2 or 5 times a
/// power of ten) giving 10 to 25 rows, so 10M files read in millions.
fn table_step(files: u64) -> u64 {
    let mut step = 1;
    for next in (0..).flat_map(|e| [2, 5, 10].map(|m| m * 10u64.pow(e))) {
        if next * 10 > files {
            return step;
        }
        step = next;
    }
    step
}

async fn create_files(
    client: &Arc<MetaClient>,
    options: &Options,
    layout: &Arc<Layout>,
    pid: u32,
) -> Creates {
    let files = options.files;
    let step = table_step(files);
    let done = Arc::new(AtomicU64::new(0));
    let inos: Arc<Vec<AtomicU64>> = Arc::new((0..files).map(|_| AtomicU64::new(0)).collect());
    let milestones = Arc::new(Mutex::new(Vec::new()));
    let intervals = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let monitor = tokio::spawn({
        let (done, intervals) = (done.clone(), intervals.clone());
        async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            let (mut last_files, mut last_at) = (0, Instant::now());
            loop {
                tick.tick().await;
                let (now_files, now) = (done.load(Ordering::Relaxed), Instant::now());
                let rate = (now_files - last_files) as f64 / (now - last_at).as_secs_f64();
                eprintln!(
                    "{:>6.0} s  {now_files:>11} files  {rate:>8.0} creates/s  server RSS {}",
                    started.elapsed().as_secs_f64(),
                    mib(rss_bytes(pid)),
                );
                intervals.lock().expect("lock").push(rate);
                (last_files, last_at) = (now_files, now);
            }
        }
    });
    let rate = phase(
        client,
        options.concurrency,
        files,
        None,
        "create",
        {
            let layout = layout.clone();
            move |i| {
                let (parent, name) = layout.place(i);
                MetaOp::Create {
                    parent,
                    name,
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    exclusive: true,
                }
            }
        },
        {
            let (inos, milestones) = (inos.clone(), milestones.clone());
            move |i, reply| {
                inos[i as usize].store(ino(reply).0, Ordering::Relaxed);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(step) || n == files {
                    milestones.lock().expect("lock").push(Milestone {
                        files: n,
                        secs: started.elapsed().as_secs_f64(),
                        rss: rss_bytes(pid),
                    });
                }
            }
        },
    )
    .await;
    monitor.abort();
    let mut milestones = std::mem::take(&mut *milestones.lock().expect("lock"));
    milestones.sort_by_key(|m| m.files);
    let intervals = std::mem::take(&mut *intervals.lock().expect("lock"));
    let inos = inos
        .iter()
        .map(|i| InodeId(i.load(Ordering::Relaxed)))
        .collect();
    Creates {
        rate,
        milestones,
        intervals,
        inos,
    }
}

/// Pages through a directory as `ls` would, checking the entry count.
async fn list(client: &MetaClient, dir: InodeId, plus: bool, expected: u64) -> (Rate, u64) {
    let started = Instant::now();
    let (mut listed, mut calls) = (0u64, 0u64);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let op = if plus {
            MetaOp::ReaddirPlus {
                ino: dir,
                after: after.take(),
                limit: 0,
            }
        } else {
            MetaOp::Readdir {
                ino: dir,
                after: after.take(),
                limit: 0,
            }
        };
        let reply = client
            .call(op)
            .await
            .unwrap_or_else(|e| panic!("readdir after {listed} entries: {e}"));
        let (count, last, more) = match reply {
            MetaReply::Dir { entries, more } => {
                (entries.len(), entries.last().map(|e| e.name.clone()), more)
            }
            MetaReply::DirPlus { entries, more } => (
                entries.len(),
                entries.last().map(|(e, _)| e.name.clone()),
                more,
            ),
            other => panic!("readdir replied {other:?}"),
        };
        listed += count as u64;
        calls += 1;
        if !more {
            break;
        }
        after = Some(last.expect("a page with more to come but no entries"));
    }
    assert_eq!(
        listed, expected,
        "the listing returned {listed} entries where {expected} files were created"
    );
    let rate = Rate {
        calls: listed,
        secs: started.elapsed().as_secs_f64(),
    };
    (rate, calls)
}

/// Creates and stats of empty files in one directory on the bench's disk,
/// one thread, nothing synced: the local yardstick for the figures above.
fn local_disk(dir: &Path) -> (Rate, Rate) {
    let path = dir.join("local-disk");
    std::fs::create_dir_all(&path).expect("local-disk dir");
    let name = |i: u64| path.join(format!("f{i:07}"));
    let started = Instant::now();
    for i in 0..LOCAL_FILES {
        File::create(name(i)).unwrap_or_else(|e| panic!("create {}: {e}", name(i).display()));
    }
    let create = Rate {
        calls: LOCAL_FILES,
        secs: started.elapsed().as_secs_f64(),
    };
    let started = Instant::now();
    for i in 0..LOCAL_FILES {
        std::fs::metadata(name(i)).unwrap_or_else(|e| panic!("stat {}: {e}", name(i).display()));
    }
    let stat = Rate {
        calls: LOCAL_FILES,
        secs: started.elapsed().as_secs_f64(),
    };
    std::fs::remove_dir_all(&path).expect("remove local-disk dir");
    (create, stat)
}

/// Lookups then stats of files `choose(i)` for call `i`, each reply checked
/// against the inode the create returned.
async fn reads(
    client: &Arc<MetaClient>,
    options: &Options,
    layout: &Arc<Layout>,
    inos: &Arc<Vec<InodeId>>,
    choose: impl Fn(u64) -> u64 + Clone + Send + Sync + 'static,
) -> (Rate, Rate) {
    let lookups = {
        let (layout, inos, choose_op, choose) =
            (layout.clone(), inos.clone(), choose.clone(), choose.clone());
        phase(
            client,
            options.concurrency,
            READ_CALLS_MAX,
            Some(READ_TIME),
            "lookup",
            move |i| {
                let (parent, name) = layout.place(choose_op(i));
                MetaOp::Lookup { parent, name }
            },
            move |i, reply| {
                assert_eq!(
                    ino(reply),
                    inos[choose(i) as usize],
                    "lookup of file {}",
                    choose(i)
                )
            },
        )
        .await
    };
    let stats = {
        let (inos_op, inos, choose_op) = (inos.clone(), inos.clone(), choose.clone());
        phase(
            client,
            options.concurrency,
            READ_CALLS_MAX,
            Some(READ_TIME),
            "stat",
            move |i| MetaOp::GetAttr {
                ino: inos_op[choose_op(i) as usize],
            },
            move |i, reply| {
                assert_eq!(
                    ino(reply),
                    inos[choose(i) as usize],
                    "stat of file {}",
                    choose(i)
                )
            },
        )
        .await
    };
    (lookups, stats)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// An integer with thousands separators, as docs/benchmarks.md writes them.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_sec(rate: &Rate) -> String {
    grouped(rate.per_sec().round() as u64)
}

async fn bench(options: &Options) {
    let dir = &options.dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    let ca = common::make_ca(dir, SERVER_ID);

    eprintln!("local disk: {LOCAL_FILES} empty files in one directory");
    let (local_create, local_stat) = local_disk(dir);

    let port = free_port();
    let (mut child, addr) = spawn(options, port, true);
    let client = Arc::new(common::connect(&ca, "bench-client", vec![addr]));
    let (layout, mkdirs) = make_layout(&client, options).await;
    eprintln!(
        "{} big directories, deep tree of {} directories (fanout {}, {} leaves): {} mkdir/s",
        layout.big_dirs.len(),
        layout.tree_dirs,
        layout.fanout,
        layout.leaves.len(),
        per_sec(&mkdirs)
    );
    let layout = Arc::new(layout);
    let rss_empty = rss_bytes(child.id());
    eprintln!(
        "creating {} files at concurrency {}",
        grouped(options.files),
        options.concurrency
    );
    let creates = create_files(&client, options, &layout, child.id()).await;
    let rss_created = rss_bytes(child.id());
    let disk_created = tree_bytes(&data_dir(dir));
    eprintln!(
        "created {} files: {} creates/s, server RSS {}, {} on disk",
        grouped(creates.rate.calls),
        per_sec(&creates.rate),
        mib(rss_created),
        mib(disk_created)
    );
    let inos = Arc::new(creates.inos);
    drop(client);

    eprintln!("killing the metaserver (SIGKILL) and starting it again");
    child.kill().expect("kill the metaserver");
    child.wait().expect("reap the metaserver");
    let started = Instant::now();
    let (mut child, addr) = spawn(options, port, false);
    let listening = started.elapsed();
    let probe = common::connect(&ca, "bench-client", vec![addr]).with_timeouts(MetaTimeouts {
        attempt: Duration::from_millis(200),
        deadline: Duration::from_millis(200),
    });
    let probed = pick(0x5eed, 0, options.files);
    let mut attempts = 0u32;
    let answered = loop {
        attempts += 1;
        match probe
            .call(MetaOp::GetAttr {
                ino: inos[probed as usize],
            })
            .await
        {
            Ok(reply) => {
                assert_eq!(ino(reply), inos[probed as usize], "stat after the restart");
                break started.elapsed();
            }
            Err(e) if started.elapsed() < RESTART_LIMIT => {
                if attempts == 1 {
                    eprintln!("  not answering yet: {e}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                panic!("the restarted metaserver did not answer within {RESTART_LIMIT:?}: {e}")
            }
        }
    };
    let rss_restarted = rss_bytes(child.id());
    eprintln!(
        "listening after {:.2} s, first stat after {:.2} s ({attempts} attempts)",
        listening.as_secs_f64(),
        answered.as_secs_f64()
    );
    drop(probe);
    let client = Arc::new(common::connect(&ca, "bench-client", vec![addr]));

    eprintln!(
        "cold reads: random files among all {}",
        grouped(options.files)
    );
    let files = options.files;
    let (cold_lookup, cold_stat) = reads(&client, options, &layout, &inos, move |i| {
        pick(0xc01d, i, files)
    })
    .await;
    // Evenly spaced, so the hot files are distinct and span every directory.
    let hot_files = HOT_FILES.min(files);
    let hot: Arc<Vec<u64>> = Arc::new((0..hot_files).map(|i| i * files / hot_files).collect());
    let hot_pick = {
        let hot = hot.clone();
        move |i: u64| hot[(i % hot.len() as u64) as usize]
    };
    eprintln!("warm reads: {} hot files", grouped(hot.len() as u64));
    // One untimed pass so the hot set is cached before it is measured.
    {
        let (layout, hot) = (layout.clone(), hot.clone());
        phase(
            &client,
            options.concurrency,
            hot.len() as u64,
            None,
            "lookup of the hot set",
            move |i| {
                let (parent, name) = layout.place(hot[i as usize]);
                MetaOp::Lookup { parent, name }
            },
            |_, _| {},
        )
        .await;
    }
    let (warm_lookup, warm_stat) = reads(&client, options, &layout, &inos, hot_pick).await;

    let listed_dir = layout.big_dirs.first().copied();
    let listed_size = options.dir_size.min(layout.big_files);
    let listings = match listed_dir {
        Some(big) => {
            eprintln!("listing a directory of {} entries", grouped(listed_size));
            let plain = list(&client, big, false, listed_size).await;
            let plus = list(&client, big, true, listed_size).await;
            Some((plain, plus))
        }
        None => None,
    };

    drop(client);
    drop(child.stdin.take());
    child.wait().expect("stop the metaserver");
    let disk_end = tree_bytes(&data_dir(dir));

    // Results.
    let interval_rates: Vec<String> = creates
        .intervals
        .iter()
        .map(|rate| grouped(rate.round() as u64))
        .collect();
    println!("````markdown");
    println!("## Metaserver at scale: {} files", grouped(files));
    println!();
    println!(
        "Command (release build; one voter in its own process on loopback, with its \
         RocksDB under `--dir`; the bench and the metaserver share the machine):"
    );
    println!();
    println!("```sh");
    println!(
        "cargo run --release -p tessera-meta --example scale_bench -- --dir {} --files {} \
         --dir-size {} --concurrency {} --cache-mib {}",
        dir.display(),
        files,
        options.dir_size,
        options.concurrency,
        options.cache_mib
    );
    println!("```");
    println!();
    println!(
        "Layout: {} files in {} directories of up to {} entries, filled one after another, \
         then {} files ({} %) in the {} leaves of a tree of depth {TREE_DEPTH} and fanout {} \
         ({} directories, made at {} mkdir/s). Creates at concurrency {} over one client \
         connection. Server RSS is VmRSS of the metaserver process; its growth per \
         file is counted from {} before the first create.",
        grouped(layout.big_files),
        layout.big_dirs.len(),
        grouped(options.dir_size),
        grouped(layout.deep_files),
        DEEP_PERCENT,
        grouped(layout.leaves.len() as u64),
        layout.fanout,
        grouped(layout.tree_dirs),
        per_sec(&mkdirs),
        options.concurrency,
        mib(rss_empty),
    );
    println!();
    println!(
        "| files | created into | creates/s over the step | server RSS | RSS growth per file |"
    );
    println!("|---|---|---|---|---|");
    let mut previous = (0u64, 0f64);
    for m in &creates.milestones {
        let (first, last) = (layout.part(previous.0), layout.part(m.files - 1));
        let into = if first == last {
            first
        } else {
            format!("{first} to {last}")
        };
        let rate = (m.files - previous.0) as f64 / (m.secs - previous.1);
        println!(
            "| {} | {into} | {} | {} | {} B |",
            grouped(m.files),
            grouped(rate.round() as u64),
            mib(m.rss),
            grouped(m.rss.saturating_sub(rss_empty) / m.files)
        );
        previous = (m.files, m.secs);
    }
    println!();
    println!(
        "Creates/s per {} s interval: {}.",
        PROGRESS_EVERY.as_secs(),
        if interval_rates.is_empty() {
            "(the run was shorter than one interval)".to_string()
        } else {
            interval_rates.join(", ")
        }
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| creates/s over the whole run | {} ({} files in {:.1} s) |",
        per_sec(&creates.rate),
        grouped(creates.rate.calls),
        creates.rate.secs
    );
    println!("| server RSS after the creates | {} |", mib(rss_created));
    println!(
        "| data_dir after the creates | {}, {} B per file |",
        mib(disk_created),
        grouped(disk_created / files)
    );
    println!(
        "| data_dir at the end of the run | {}, {} B per file |",
        mib(disk_end),
        grouped(disk_end / files)
    );
    println!(
        "| restart after SIGKILL: spawn to listening | {:.2} s |",
        listening.as_secs_f64()
    );
    println!(
        "| restart after SIGKILL: spawn to the first stat answered | {:.2} s |",
        answered.as_secs_f64()
    );
    println!(
        "| server RSS right after the restart | {} |",
        mib(rss_restarted)
    );
    println!();
    println!(
        "Reads at concurrency {}, each phase {} s or {} calls, whichever ends first; \
         every reply checked against the inode its create returned. Cold: right after the \
         restart, random files among all {}. Warm: {} hot files, read once before measuring.",
        options.concurrency,
        READ_TIME.as_secs(),
        grouped(READ_CALLS_MAX),
        grouped(files),
        grouped(hot.len() as u64),
    );
    println!();
    println!("| cache | lookup/s | stat/s |");
    println!("|---|---|---|");
    println!(
        "| cold | {} | {} |",
        per_sec(&cold_lookup),
        per_sec(&cold_stat)
    );
    println!(
        "| warm | {} | {} |",
        per_sec(&warm_lookup),
        per_sec(&warm_stat)
    );
    println!();
    if let Some(((plain, plain_calls), (plus, plus_calls))) = &listings {
        println!(
            "Listing of one directory of {} entries, one call at a time:",
            grouped(listed_size)
        );
        println!();
        println!("| call | seconds | entries/s | calls |");
        println!("|---|---|---|---|");
        println!(
            "| Readdir | {:.2} | {} | {} |",
            plain.secs,
            per_sec(plain),
            grouped(*plain_calls)
        );
        println!(
            "| ReaddirPlus | {:.2} | {} | {} |",
            plus.secs,
            per_sec(plus),
            grouped(*plus_calls)
        );
        println!();
    }
    println!(
        "Local disk in the same run, under `--dir`: {} empty files in one directory, one \
         thread, nothing synced (the metaserver syncs its log):",
        grouped(LOCAL_FILES)
    );
    println!();
    println!("| operation | files/s |");
    println!("|---|---|");
    println!("| create (`File::create`) | {} |", per_sec(&local_create));
    println!("| stat, warm | {} |", per_sec(&local_stat));
    println!("````");
    let _ = std::fs::remove_dir_all(dir);
}
