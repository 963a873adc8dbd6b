//! Cluster-wide locks through real mounts of one `deploy/local-cluster.sh`
//! cluster: flock and fcntl locks taken on one mount hold against the
//! other; a blocked waiter is woken by an unlock elsewhere, ended by a
//! signal, or refused with EDEADLK; a SIGKILLed mount's locks go at its
//! session's expiry and not before; locks and waiters outlive the
//! metaserver leader; sqlite runs from both mounts at once.
//!
//! Each lock owner is a `tests/locks/lockctl.py` process (a process is a
//! POSIX lock owner, an open file description a flock owner).

mod common;

use common::cluster::{Cluster, Mount};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const EAGAIN: &str = "err 11";
const EINTR: &str = "err 4";
const EDEADLK: &str = "err 35";
const EIO: &str = "err 5";

/// One cluster at a time: each starts several daemons and two mounts.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tessera-locks")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn python() -> String {
    std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A lock owner process.
struct Owner {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Owner {
    fn new(name: &str) -> Owner {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/locks/lockctl.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lockctl.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Owner {
            child,
            stdin,
            lines,
            name: name.into(),
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to lockctl");
        self.stdin.flush().unwrap();
    }

    /// The answer to the last command, if it comes within `limit`.
    fn reply_within(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.reply_within(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{}: no answer to `{command}`", self.name))
    }

    fn ok(&mut self, command: &str) {
        let answer = self.ask(command);
        assert_eq!(answer, "ok", "{}: `{command}`", self.name);
    }

    fn open(&mut self, path: &Path) -> u32 {
        let answer = self.ask(&format!("open {}", path.display()));
        answer
            .strip_prefix("ok ")
            .and_then(|fd| fd.parse().ok())
            .unwrap_or_else(|| panic!("{}: open {}: {answer}", self.name, path.display()))
    }

    fn pid(&mut self) -> u32 {
        let answer = self.ask("pid");
        answer.strip_prefix("ok ").unwrap().parse().unwrap()
    }

    /// Asserts the command blocks (no answer for a while).
    fn blocks(&mut self, command: &str) {
        self.send(command);
        if let Some(answer) = self.reply_within(Duration::from_millis(1500)) {
            panic!("{}: `{command}` did not block: {answer}", self.name);
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sessions as `tessera admin session list --json` shows them.
fn sessions(cluster: &Cluster) -> Vec<serde_json::Value> {
    let listed: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["admin", "session", "list", "--json"])).unwrap();
    listed.as_array().cloned().unwrap_or_default()
}

fn session_of(cluster: &Cluster, mount: &Mount) -> serde_json::Value {
    let wanted = mount.path.display().to_string();
    sessions(cluster)
        .into_iter()
        .find(|s| s["info"]["mount_point"] == wanted.as_str())
        .unwrap_or_else(|| panic!("no session for {wanted}"))
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn file(mount: &Mount, name: &str) -> PathBuf {
    mount.path.join(name)
}

#[test]
fn locks_hold_across_two_mounts() {
    let _serial = serial();
    let cluster = Cluster::up(31500, 1, 3);
    let dir = scratch();
    let a = Mount::new(&cluster, dir.path(), "a", &[]);
    let b = Mount::new(&cluster, dir.path(), "b", &[]);
    std::fs::write(file(&a, "f"), b"locked").unwrap();

    // flock: exclusive on A keeps B out, shared locks coexist.
    let mut pa = Owner::new("A1");
    let mut pb = Owner::new("B1");
    let fa = pa.open(&file(&a, "f"));
    let fb = pb.open(&file(&b, "f"));
    pa.ok(&format!("flock {fa} ex nowait"));
    assert_eq!(pb.ask(&format!("flock {fb} ex nowait")), EAGAIN);
    assert_eq!(pb.ask(&format!("flock {fb} sh nowait")), EAGAIN);
    // flock(1) from the shell too.
    let shell = Command::new("flock")
        .args(["-n", "-x"])
        .arg(file(&b, "f"))
        .arg("true")
        .status()
        .unwrap();
    assert!(
        !shell.success(),
        "flock -n took a lock held on the other mount"
    );
    pb.blocks(&format!("flock {fb} ex wait"));
    pa.ok(&format!("flock {fa} un nowait"));
    assert_eq!(
        pb.reply_within(Duration::from_secs(30)).as_deref(),
        Some("ok"),
        "the blocked flock was not granted after the unlock"
    );
    assert_eq!(pa.ask(&format!("flock {fa} sh nowait")), EAGAIN);
    pb.ok(&format!("flock {fb} sh nowait"));
    pa.ok(&format!("flock {fa} sh nowait"));
    pa.ok(&format!("flock {fa} un nowait"));
    pb.ok(&format!("flock {fb} un nowait"));
    // flock and fcntl locks are separate families.
    pa.ok(&format!("flock {fa} ex nowait"));
    pb.ok(&format!("lock {fb} w 0 10 nowait"));
    pb.ok(&format!("lock {fb} u 0 0 nowait"));
    // A flock goes with the last close of its open file description. The
    // kernel sends that close to the mount (FUSE_RELEASE) after close(2)
    // has returned, so the lock goes shortly after, not at once.
    pa.ok(&format!("close {fa}"));
    let released = Instant::now();
    while pb.ask(&format!("flock {fb} ex nowait")) != "ok" {
        assert!(
            released.elapsed() < Duration::from_secs(20),
            "a flock outlived the last close of its file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pb.ok(&format!("flock {fb} un nowait"));
    let fa = pa.open(&file(&a, "f"));

    // fcntl ranges conflict exactly where they overlap.
    pa.ok(&format!("lock {fa} w 0 100 nowait"));
    pb.ok(&format!("lock {fb} w 100 100 nowait"));
    assert_eq!(pb.ask(&format!("lock {fb} w 99 1 nowait")), EAGAIN);
    assert_eq!(pb.ask(&format!("lock {fb} r 50 10 nowait")), EAGAIN);
    // F_GETLK names the holder; its pid only on the holder's own mount.
    assert_eq!(pb.ask(&format!("getlk {fb} r 50 10")), "held w 0 100 0");
    let mut pa2 = Owner::new("A2");
    let fa2 = pa2.open(&file(&a, "f"));
    let pid = pa.pid();
    assert_eq!(
        pa2.ask(&format!("getlk {fa2} r 150 10")),
        "held w 100 100 0",
        "B's lock seen from A"
    );
    assert_eq!(
        pa2.ask(&format!("getlk {fa2} r 50 10")),
        format!("held w 0 100 {pid}")
    );
    assert_eq!(pa2.ask(&format!("getlk {fa2} r 300 10")), "free");
    // Splitting: unlocking the middle frees exactly it.
    pa.ok(&format!("lock {fa} u 40 20 nowait"));
    pb.ok(&format!("lock {fb} r 45 10 nowait"));
    assert_eq!(pb.ask(&format!("lock {fb} r 39 2 nowait")), EAGAIN);
    assert_eq!(pb.ask(&format!("lock {fb} r 60 1 nowait")), EAGAIN);
    pb.ok(&format!("lock {fb} u 0 0 nowait"));

    // F_SETLKW on B is woken by the unlock on A.
    pb.blocks(&format!("lock {fb} w 10 10 wait"));
    pa.ok(&format!("lock {fa} u 0 0 nowait"));
    assert_eq!(
        pb.reply_within(Duration::from_secs(30)).as_deref(),
        Some("ok"),
        "the F_SETLKW waiter was not woken"
    );
    assert_eq!(pa.ask(&format!("lock {fa} r 15 1 nowait")), EAGAIN);
    pb.ok(&format!("lock {fb} u 0 0 nowait"));

    // A signal ends the wait with EINTR and leaves nothing queued.
    pa.ok(&format!("lock {fa} w 0 1 nowait"));
    pb.ok("alarm 1.5");
    assert_eq!(pb.ask(&format!("lock {fb} w 0 1 wait")), EINTR);
    let listed = session_of(&cluster, &b);
    assert_eq!(
        listed["waiting"], 0,
        "an interrupted wait stayed queued: {listed}"
    );
    pa.ok(&format!("lock {fa} u 0 0 nowait"));
    // Had the interrupted request stayed queued, B would hold it now.
    pa2.ok(&format!("lock {fa2} w 0 1 nowait"));
    pa2.ok(&format!("lock {fa2} u 0 0 nowait"));

    // Two owners locking in opposite order: one gets EDEADLK.
    pa.ok(&format!("lock {fa} w 0 1 nowait"));
    pb.ok(&format!("lock {fb} w 1 1 nowait"));
    pa.blocks(&format!("lock {fa} w 1 1 wait"));
    assert_eq!(pb.ask(&format!("lock {fb} w 0 1 wait")), EDEADLK);
    pb.ok(&format!("lock {fb} u 0 0 nowait"));
    assert_eq!(
        pa.reply_within(Duration::from_secs(30)).as_deref(),
        Some("ok")
    );

    // Closing any descriptor of the file drops the process's locks on it.
    let another = pa.open(&file(&a, "f"));
    pa.ok(&format!("close {another}"));
    pb.ok(&format!("lock {fb} w 0 10 nowait"));
    pb.ok(&format!("lock {fb} u 0 0 nowait"));
    assert_eq!(cluster_locks(&cluster), 0, "locks left behind");

    // An evicted mount answers EIO on the handles of its old session
    // (locks included) and locks again through new opens.
    pb.ok(&format!("lock {fb} w 0 10 nowait"));
    let id = session_of(&cluster, &b)["id"].as_u64().unwrap();
    cluster.ok(&["admin", "session", "evict", &id.to_string()]);
    pa.ok(&format!("lock {fa} w 0 10 nowait"));
    assert_eq!(pb.ask(&format!("lock {fb} w 20 10 nowait")), EIO);
    let fb = pb.open(&file(&b, "f"));
    assert_eq!(pb.ask(&format!("lock {fb} w 0 10 nowait")), EAGAIN);
    pb.ok(&format!("lock {fb} w 20 10 nowait"));
    drop((pa, pa2, pb));
    a.unmount();
    b.unmount();
}

/// Locks held over the whole cluster, from the leader's metrics.
fn cluster_locks(cluster: &Cluster) -> u64 {
    let leader = cluster.meta_leader();
    let port = cluster.base + 2000 + leader as u16 - 1;
    // The gauge is refreshed every few seconds.
    std::thread::sleep(Duration::from_secs(6));
    let text = cluster.metrics_text(port);
    text.lines()
        .find(|l| l.starts_with("tessera_meta_locks_held"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no tessera_meta_locks_held in:\n{text}"))
}

#[test]
fn a_killed_mounts_locks_go_at_its_session_expiry_and_not_before() {
    let _serial = serial();
    let expiry = Duration::from_secs(4);
    let cluster = Cluster::up_with(32500, 1, 3, "[session]\nexpiry_ms = 4000", "");
    let dir = scratch();
    let mut a = Mount::new(&cluster, dir.path(), "a", &[]);
    let b = Mount::new(&cluster, dir.path(), "b", &[]);
    std::fs::write(file(&a, "f"), b"x").unwrap();
    let mut pa = Owner::new("A");
    let mut pb = Owner::new("B");
    let fa = pa.open(&file(&a, "f"));
    let fb = pb.open(&file(&b, "f"));
    pa.ok(&format!("flock {fa} ex nowait"));
    pa.ok(&format!("lock {fa} w 0 0 nowait"));
    // A waiter on B, blocked when A dies: granted by A's expiry.
    let mut waiter = Owner::new("B-waiter");
    let fw = waiter.open(&file(&b, "f"));
    waiter.blocks(&format!("lock {fw} r 5 5 wait"));

    a.sigkill();
    let killed = Instant::now();
    assert_eq!(pb.ask(&format!("flock {fb} ex nowait")), EAGAIN);
    assert_eq!(pb.ask(&format!("lock {fb} w 0 1 nowait")), EAGAIN);
    assert_eq!(
        waiter.reply_within(Duration::from_secs(60)).as_deref(),
        Some("ok"),
        "the waiter was not granted after the dead mount's expiry"
    );
    let granted = killed.elapsed();
    assert!(
        granted + Duration::from_secs(1) >= expiry,
        "granted {granted:?} after the kill, before the {expiry:?} expiry"
    );
    pb.ok(&format!("flock {fb} ex nowait"));
    assert_eq!(
        pb.ask(&format!("lock {fb} w 0 10 nowait")),
        EAGAIN,
        "the granted reader's range"
    );
    pb.ok(&format!("lock {fb} w 20 10 nowait"));
    drop((pa, pb, waiter));
    b.unmount();
}

#[test]
fn locks_and_waiters_survive_the_leader_killed() {
    let _serial = serial();
    let cluster = Cluster::up(33500, 3, 3);
    let dir = scratch();
    let a = Mount::new(&cluster, dir.path(), "a", &[]);
    let b = Mount::new(&cluster, dir.path(), "b", &[]);
    std::fs::write(file(&a, "f"), b"x").unwrap();
    let mut pa = Owner::new("A");
    let mut pb = Owner::new("B");
    let mut pc = Owner::new("B2");
    let fa = pa.open(&file(&a, "f"));
    let fb = pb.open(&file(&b, "f"));
    let fc = pc.open(&file(&b, "f"));
    pa.ok(&format!("lock {fa} w 0 100 nowait"));
    pa.ok(&format!("flock {fa} sh nowait"));
    pb.blocks(&format!("lock {fb} w 50 1 wait"));
    pc.blocks(&format!("flock {fc} ex wait"));
    let before: Vec<(u64, u64)> = [&a, &b]
        .iter()
        .map(|m| {
            let s = session_of(&cluster, m);
            (s["locks"].as_u64().unwrap(), s["waiting"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(before, vec![(2, 0), (0, 2)]);

    let leader = cluster.meta_leader();
    cluster.sigkill(&format!("meta-{leader}"));
    wait_until("a new leader", Duration::from_secs(60), || {
        let out = cluster.tessera(&["admin", "status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success()
            && text
                .split("leader ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|id| id.trim().parse::<usize>().ok())
                .is_some_and(|id| id != leader)
    });
    let after: Vec<(u64, u64)> = [&a, &b]
        .iter()
        .map(|m| {
            let s = session_of(&cluster, m);
            (s["locks"].as_u64().unwrap(), s["waiting"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(after, before, "locks or waiters lost with the leader");
    // Still held: B cannot take them; still queued: unlocking wakes them.
    let mut pd = Owner::new("B3");
    let fd = pd.open(&file(&b, "f"));
    assert_eq!(pd.ask(&format!("lock {fd} r 0 1 nowait")), EAGAIN);
    pa.ok(&format!("lock {fa} u 0 0 nowait"));
    assert_eq!(
        pb.reply_within(Duration::from_secs(60)).as_deref(),
        Some("ok")
    );
    pa.ok(&format!("flock {fa} un nowait"));
    assert_eq!(
        pc.reply_within(Duration::from_secs(60)).as_deref(),
        Some("ok")
    );
    drop((pa, pb, pc, pd));
    a.unmount();
    b.unmount();
}

/// sqlite's rollback journal keeps writers apart with fcntl locks alone:
/// from two mounts at once, every transaction must land and the database
/// stay whole.
#[test]
fn sqlite_from_two_mounts_loses_no_transaction() {
    let _serial = serial();
    let txns: usize = std::env::var("TESSERA_SQLITE_TXNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let writers_per_mount = 4;
    let cluster = Cluster::up(34500, 1, 3);
    let dir = scratch();
    let a = Mount::new(&cluster, dir.path(), "a", &[]);
    let b = Mount::new(&cluster, dir.path(), "b", &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/locks/sqlite_writer.py");
    let setup = Command::new(python())
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('pragma journal_mode=delete')\n\
             c.execute('create table rows(writer integer, seq integer, primary key(writer, seq))')\n\
             c.execute('create table counter(n integer)')\n\
             c.execute('insert into counter values (0)')\n\
             c.close()",
        )
        .arg(file(&a, "db"))
        .status()
        .unwrap();
    assert!(setup.success(), "creating the database failed");
    let started = Instant::now();
    let writers: Vec<(String, Child)> = (0..2 * writers_per_mount)
        .map(|w| {
            let mount = if w % 2 == 0 { &a } else { &b };
            let child = Command::new(python())
                .arg(&script)
                .arg(file(mount, "db"))
                .arg(w.to_string())
                .arg(txns.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (format!("writer {w}"), child)
        })
        .collect();
    for (name, child) in writers {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "{} transactions from two mounts in {:?}",
        2 * writers_per_mount * txns,
        started.elapsed()
    );
    for mount in [&a, &b] {
        let check = Command::new(python())
            .arg("-c")
            .arg(
                "import sqlite3,sys\n\
                 c=sqlite3.connect(sys.argv[1])\n\
                 print(c.execute('pragma integrity_check').fetchone()[0])\n\
                 print(c.execute('select count(*) from rows').fetchone()[0])\n\
                 print(c.execute('select n from counter').fetchone()[0])\n\
                 print(c.execute('select count(distinct writer) from rows').fetchone()[0])",
            )
            .arg(file(mount, "db"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&check.stdout).into_owned();
        let total = 2 * writers_per_mount * txns;
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                "ok".to_string(),
                total.to_string(),
                total.to_string(),
                (2 * writers_per_mount).to_string()
            ],
            "the database after the writers, read on {}: {}",
            mount.path.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    a.unmount();
    b.unmount();
}

/// The cgroup (v2) a cut-off mount runs in, so a packet filter can drop
/// its traffic to the metaservers alone.
const CUT_CGROUP: &str = "tessera-locks-cut";

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split(' ');
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .expect("no cgroup2 hierarchy mounted; the partition test needs one")
}

/// Drops (or stops dropping) the cut-off cgroup's packets to the
/// metaservers' ports.
fn filter(add: bool, ports: &str) {
    let status = Command::new("iptables")
        .args([if add { "-I" } else { "-D" }, "OUTPUT"])
        .args(["-p", "udp", "--dport", ports])
        .args(["-m", "cgroup", "--path", CUT_CGROUP, "-j", "DROP"])
        .status()
        .expect("run iptables");
    assert!(
        status.success(),
        "iptables {} failed",
        if add { "-I" } else { "-D" }
    );
}

#[test]
fn a_partitioned_mount_loses_its_lock_at_expiry_and_never_writes_after() {
    let _serial = serial();
    let base = 35500u16;
    let cluster = Cluster::up_with(base, 1, 3, "[session]\nexpiry_ms = 4000", "");
    let dir = scratch();
    let cgroup = cgroup2_root().join(CUT_CGROUP);
    std::fs::create_dir_all(&cgroup).expect("create the test's cgroup");
    // The mount starts inside the cgroup: a socket belongs to the cgroup
    // of the process that opened it.
    let config = cluster.config();
    let a = Mount::with_command(dir.path(), "a", |path| {
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec {} mount {} --config {}",
            cgroup.display(),
            common::tessera_bin(),
            path.display(),
            config.display()
        ));
        command
    });
    let b = Mount::new(&cluster, dir.path(), "b", &[]);
    std::fs::write(file(&a, "f"), b"before").unwrap();
    let mut pa = Owner::new("A");
    let mut pb = Owner::new("B");
    let fa = pa.open(&file(&a, "f"));
    let fb = pb.open(&file(&b, "f"));
    pa.ok(&format!("flock {fa} ex nowait"));
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .open(file(&a, "f"))
        .unwrap();

    let ports = format!("{base}:{}", base + 2);
    filter(true, &ports);
    struct Unfilter(String);
    impl Drop for Unfilter {
        fn drop(&mut self) {
            filter(false, &self.0);
        }
    }
    let unfilter = Unfilter(ports);
    let cut = Instant::now();
    assert_eq!(pb.ask(&format!("flock {fb} ex nowait")), EAGAIN);
    pb.send(&format!("flock {fb} ex wait"));
    let granted = pb.reply_within(Duration::from_secs(60));
    let after = cut.elapsed();
    assert_eq!(granted.as_deref(), Some("ok"), "B never got the lock");
    assert!(
        after + Duration::from_secs(1) >= Duration::from_secs(4),
        "B got the lock {after:?} after the cut, before the expiry"
    );
    // A's session ran out of trust before B got the lock: A's writes fail.
    use std::io::Write as _;
    let written = handle.write_all(b"after").and_then(|()| handle.sync_all());
    let err = written.expect_err("the cut-off mount wrote after its session ran out");
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert_eq!(std::fs::read(file(&b, "f")).unwrap(), b"before");

    // Reconnected: A works again under a new session, without the lock.
    drop(unfilter);
    drop(handle);
    wait_until(
        "the cut-off mount to work again",
        Duration::from_secs(60),
        || std::fs::write(file(&a, "g"), b"again").is_ok(),
    );
    assert_eq!(std::fs::read(file(&b, "g")).unwrap(), b"again");
    let mut pa2 = Owner::new("A2");
    let fa2 = pa2.open(&file(&a, "f"));
    assert_eq!(pa2.ask(&format!("flock {fa2} ex nowait")), EAGAIN);
    pb.ok(&format!("flock {fb} un nowait"));
    pa2.ok(&format!("flock {fa2} ex nowait"));
    drop((pa, pa2, pb));
    a.unmount();
    b.unmount();
    let _ = std::fs::remove_dir(&cgroup);
}
