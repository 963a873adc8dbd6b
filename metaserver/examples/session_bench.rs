//! What idle client sessions cost a metaserver: N sessions opened, then
//! renewed as fast as C concurrent renewers can, with the leader's
//! resident memory and CPU time before and after. One member, its own
//! process (this binary with `--serve`), real QUIC on loopback.
//!
//! Run: `cargo run --release -p tessera-meta --example session_bench --
//! [--dir DIR] [--sessions N] [--concurrency C] [--seconds S]`

mod common;

use common::{flag, number};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tessera_meta::server::DEFAULT_CACHE_BYTES;
use tessera_proto::meta::Status;
use tessera_proto::session::{OpenSession, RenewSession, SessionId, SessionInfo, SessionKind};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        flag(&args, "--dir").unwrap_or_else(|| "/var/tmp/tessera-session-bench".into()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(id) = flag(&args, "--serve") {
        let id: u64 = id.parse().expect("--serve ID");
        let port: u16 = number(&args, "--port", 0);
        let config = common::config(&dir, id, port, DEFAULT_CACHE_BYTES);
        runtime.block_on(common::serve(config, args.iter().any(|a| a == "--init")));
        return;
    }
    let sessions: u64 = number(&args, "--sessions", 10_000);
    let concurrency: u64 = number(&args, "--concurrency", 64);
    let seconds: u64 = number(&args, "--seconds", 20);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = common::make_ca(&dir, 1);
    let (mut child, addr) = common::spawn(&dir, 1, common::free_port(), true, &[]);
    let pid = child.id();
    runtime.block_on(async {
        let client = Arc::new(common::connect(&ca, "bench-client", vec![addr]));
        // The first call waits for the election.
        let started = Instant::now();
        while client
            .leader_call(&OpenSession { info: info(0) })
            .await
            .is_err()
        {
            assert!(started.elapsed() < Duration::from_secs(30), "no leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rss_before = common::rss_bytes(pid);
        let cpu_before = cpu_seconds(pid);

        let started = Instant::now();
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= sessions {
                        return;
                    }
                    let reply = client
                        .leader_call(&OpenSession { info: info(n) })
                        .await
                        .expect("open session");
                    ids.lock().unwrap().push(reply.id);
                }
            }));
        }
        for task in tasks {
            task.await.expect("opener");
        }
        let opened = started.elapsed();
        let ids: Arc<Vec<SessionId>> = Arc::new(std::mem::take(&mut *ids.lock().unwrap()));
        let rss_opened = common::rss_bytes(pid);
        let cpu_opened = cpu_seconds(pid);
        println!(
            "opened {sessions} sessions in {:.2} s ({:.0}/s); leader RSS {} -> {} MiB",
            opened.as_secs_f64(),
            sessions as f64 / opened.as_secs_f64(),
            rss_before >> 20,
            rss_opened >> 20
        );

        let renewed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let (client, ids, renewed) = (client.clone(), ids.clone(), renewed.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = t as usize;
                while Instant::now() < deadline {
                    let id = ids[i % ids.len()];
                    client
                        .leader_call(&RenewSession { id })
                        .await
                        .expect("renew");
                    renewed.fetch_add(1, Ordering::Relaxed);
                    i += concurrency as usize;
                }
            }));
        }
        for task in tasks {
            task.await.expect("renewer");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let renewals = renewed.load(Ordering::Relaxed);
        let cpu_renewed = cpu_seconds(pid);

        // The same number of round trips of a call that reads nothing (the
        // member's status) at the same concurrency: the transport's own
        // rate on this machine, in the same run.
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds.div_ceil(4));
        let baseline_started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, done) = (client.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    client.any_call(&Status).await.expect("status");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.expect("status caller");
        }
        let statuses = done.load(Ordering::Relaxed) as f64;
        println!(
            "baseline: status round trips {:.0}/s with {concurrency} callers",
            statuses / baseline_started.elapsed().as_secs_f64()
        );
        let cpu_renewing = cpu_renewed - cpu_opened;
        let rss_after = common::rss_bytes(pid);
        // A client renews every quarter of the expiry (60 s by default).
        let needed = sessions as f64 / 15.0;
        println!(
            "renewals: {renewals} in {elapsed:.1} s = {:.0}/s with {concurrency} renewers; \
             leader CPU {:.0} us per renewal; {sessions} idle sessions need {needed:.0}/s \
             ({:.1}% of one core); leader RSS {} MiB (cpu while opening {:.1} s)",
            renewals as f64 / elapsed,
            cpu_renewing * 1e6 / renewals.max(1) as f64,
            100.0 * needed * cpu_renewing / renewals.max(1) as f64,
            rss_after >> 20,
            cpu_opened - cpu_before,
        );
    });
    drop(child.stdin.take());
    let _ = child.wait();
}

fn info(n: u64) -> SessionInfo {
    SessionInfo {
        kind: SessionKind::Mount,
        host: format!("host-{}", n % 100),
        pid: n as u32,
        mount_point: format!("/mnt/bench-{n}"),
        version: "bench".into(),
    }
}

/// User plus system CPU seconds of `pid`, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state field that follows the name.
    (ticks(11) + ticks(12)) / 100.0
}
