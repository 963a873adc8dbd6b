//! `tessera dev` as a real process: starts a cluster on a folder, writes a
//! client configuration that works, stops cleanly on SIGINT, and a restart
//! with the same folder keeps what was created.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tessera_client::MetaClient;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{MetaOp, MetaReply, Policy};

fn start_dev(dir: &std::path::Path, port: u16, metrics: u16) -> std::process::Child {
    start_dev_with(dir, port, metrics, &[])
}

fn start_dev_with(
    dir: &std::path::Path,
    port: u16,
    metrics: u16,
    extra: &[&str],
) -> std::process::Child {
    let mut child = Command::new(common::tessera_bin())
        .args(["dev", "--data"])
        .arg(dir)
        .args([
            "--meta-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tessera dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("stop with Ctrl-C") => break,
            Some(Ok(_)) => {}
            _ => panic!("tessera dev exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

fn interrupt(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "tessera dev exited with {status} on SIGINT"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tessera dev did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli_output(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(common::tessera_bin())
        .args(args)
        .arg("--config")
        .arg(dir.join("client.toml"))
        .output()
        .expect("run tessera")
}

fn cli(dir: &std::path::Path, args: &[&str]) -> String {
    let out = cli_output(dir, args);
    assert!(
        out.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn client(dir: &std::path::Path) -> MetaClient {
    let config: tessera_proto::config::ClientConfig =
        tessera_proto::config::load(Some(&dir.join("client.toml")), &[]).expect("client.toml");
    MetaClient::from_config(&config).await.expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_cluster_and_keeps_it_across_restarts() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let (port, metrics) = (common::free_port(), common::free_port());
    let dev = start_dev(&dir, port, metrics);
    let meta = client(&dir).await;
    meta.call(MetaOp::Mkdir {
        parent: InodeId::ROOT,
        name: b"keep".to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    })
    .await
    .unwrap();
    let MetaReply::Entry(keep) = meta
        .call(MetaOp::Lookup {
            parent: InodeId::ROOT,
            name: b"keep".to_vec(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    meta.call(MetaOp::SetPolicy {
        ino: keep.ino,
        policy: Policy::Ec { data: 2, parity: 1 },
    })
    .await
    .unwrap();
    let text = common::scrape(format!("127.0.0.1:{metrics}").parse().unwrap());
    assert!(
        text.contains("tessera_meta_raft_term"),
        "metrics missing the metaserver"
    );
    assert!(
        text.contains("tessera_chunk_pieces"),
        "metrics missing the chunkservers"
    );
    // Files under both policies, written through the file commands.
    let local = root.path().join("local");
    std::fs::write(&local, common::pattern(7, 5 << 20)).unwrap();
    for remote in ["/root-file", "/keep/coded-file"] {
        cli(&dir, &["put", local.to_str().unwrap(), remote]);
    }
    // An S3 access key, kept in the replicated state.
    let created = cli(&dir, &["admin", "key", "create", "--description", "ci key"]);
    let key_id = created
        .lines()
        .find_map(|l| l.strip_prefix("access key id"))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no key id in {created}"));
    assert!(created.contains("secret access key"), "{created}");
    let listed = cli(&dir, &["admin", "key", "list"]);
    assert!(
        listed.contains(&key_id) && listed.contains("ci key"),
        "{listed}"
    );
    assert!(
        !listed.contains("secret"),
        "a listing shows no secret: {listed}"
    );
    interrupt(dev);

    let dev = start_dev(&dir, port, metrics);
    for remote in ["/root-file", "/keep/coded-file"] {
        let back = root.path().join("back");
        cli(&dir, &["get", remote, back.to_str().unwrap()]);
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&local).unwrap(),
            "{remote} changed across the restart"
        );
    }
    let meta = client(&dir).await;
    let MetaReply::Entry(again) = meta
        .call(MetaOp::Lookup {
            parent: InodeId::ROOT,
            name: b"keep".to_vec(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(again.ino, keep.ino);
    assert_eq!(
        meta.call(MetaOp::GetPolicy { ino: keep.ino })
            .await
            .unwrap(),
        MetaReply::Policy(Policy::Ec { data: 2, parity: 1 })
    );
    assert!(
        cli(&dir, &["admin", "key", "list"]).contains(&key_id),
        "key lost in the restart"
    );
    cli(&dir, &["admin", "key", "delete", &key_id]);
    assert!(!cli(&dir, &["admin", "key", "list"]).contains(&key_id));
    let again = cli_output(&dir, &["admin", "key", "delete", &key_id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no access key"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    interrupt(dev);
}

/// Metric names (`tessera_...`) named in the alert rules and the Grafana
/// dashboard under deploy/.
fn deployed_metric_names() -> std::collections::BTreeSet<String> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut names = std::collections::BTreeSet::new();
    for file in ["prometheus/tessera.rules.yml", "grafana/tessera.json"] {
        let text = std::fs::read_to_string(deploy.join(file))
            .unwrap_or_else(|e| panic!("read deploy/{file}: {e}"));
        let bytes = text.as_bytes();
        let mut at = 0;
        while let Some(found) = text[at..].find("tessera_") {
            let start = at + found;
            let before = start.checked_sub(1).map(|i| bytes[i]);
            let mut end = start;
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            // A name, not the tail of another word.
            if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                names.insert(text[start..end].to_string());
            }
            at = end;
        }
    }
    names
}

/// Every metric the alert rules and the dashboard in deploy/ name is on a
/// running cluster's `/metrics` once the cluster has done what makes each
/// series exist (a file written, an S3 request, a drain, a session).
#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_served() {
    let names = deployed_metric_names();
    assert!(names.len() > 20, "too few metric names found: {names:?}");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let (port, metrics, s3) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let dev = start_dev_with(&dir, port, metrics, &["--s3", &format!("127.0.0.1:{s3}")]);
    let local = root.path().join("local");
    std::fs::write(&local, common::pattern(3, 3 << 20)).unwrap();
    cli(&dir, &["put", local.to_str().unwrap(), "/file"]);
    cli(&dir, &["admin", "node", "drain", "3"]);
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", s3)).expect("connect S3");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("S3 request");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
    let addr = format!("127.0.0.1:{metrics}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let text = common::scrape(addr);
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| !text.contains(&format!("\n{name}")))
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    interrupt(dev);
    assert!(
        missing.is_empty(),
        "named in deploy/ but not served: {missing:?}"
    );
}

/// Every piece file under a `tessera dev` folder holding at least `bytes`.
fn piece_files_over(dir: &std::path::Path, bytes: u64) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.components().any(|c| c.as_os_str() == "pieces")
                && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= bytes
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn flip_piece_byte(piece: &std::path::Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(piece)
        .expect("open piece");
    // Past the piece file's 4 KiB header.
    let at = 4096 + at;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.read_exact(&mut byte).expect("read");
    byte[0] ^= 0x10;
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.write_all(&byte).expect("write");
    file.sync_all().expect("sync");
}

fn drop_page_cache() {
    // Root only (as the mount itself): otherwise reads through the mount
    // could be served by the kernel's cache instead of the cluster.
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache (needs root)");
}

/// Stops `tessera dev` (and so its mount) if a test fails before it does.
struct DevGuard(Option<std::process::Child>);

impl Drop for DevGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One read: where, how long, and whether it covers the flipped byte.
struct Probe {
    offset: u64,
    length: u64,
}

/// A flipped byte on disk is never returned, by any way in (the mount,
/// `tessera get`, S3 GET with and without ranges), at aligned and unaligned
/// offsets, small and large: with one of three copies bad every read is
/// exact; with all three bad every read covering the byte fails and every
/// other read is exact or fails, never wrong. The client widens every read
/// to whole blocks and checks them against the hashes the chunkserver sends
/// (which no longer hashes what it sends), so this is the end-to-end check.
#[test]
fn a_flipped_byte_is_never_returned_by_the_mount_get_or_s3() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let mnt = root.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (port, metrics, s3) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut dev = DevGuard(Some(start_dev_with(
        &dir,
        port,
        metrics,
        &[
            "--mount",
            mnt.to_str().unwrap(),
            "--s3",
            &format!("127.0.0.1:{s3}"),
        ],
    )));
    let size: u64 = 3 << 20;
    let data = common::pattern(11, size as usize);
    cli(&dir, &["mkdir", "/vbucket"]);
    cli(&dir, &["policy", "set", "/vbucket", "replicas:3"]);
    let local = root.path().join("local");
    std::fs::write(&local, &data).unwrap();
    cli(&dir, &["put", local.to_str().unwrap(), "/vbucket/file"]);
    let pieces = piece_files_over(&dir, size);
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    let data = &data[..];
    // In block 17 (64 KiB blocks), not at a block boundary.
    let bad: u64 = (17 << 16) + 1234;

    let credentials = std::fs::read_to_string(dir.join("s3-credentials")).expect("credentials");
    let field = |name: &str| {
        credentials
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_prefix('=')
                    .map(str::trim)
            })
            .expect("credential field")
            .to_string()
    };
    let user = format!(
        "{}:{}",
        field("aws_access_key_id"),
        field("aws_secret_access_key")
    );
    // S3 GET with curl's own SigV4 signing; `None` when it failed (an
    // error status, or a body cut short).
    let s3_get = |range: Option<(u64, u64)>| -> Option<Vec<u8>> {
        let out_path = root.path().join("s3-out");
        let _ = std::fs::remove_file(&out_path);
        let mut command = Command::new("curl");
        command
            .args([
                "-s",
                "-f",
                "--max-time",
                "60",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .args([
                "--user",
                &user,
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            ])
            .arg("-o")
            .arg(&out_path);
        if let Some((from, to)) = range {
            command.args(["-H", &format!("Range: bytes={from}-{to}")]);
        }
        let status = command
            .arg(format!("http://127.0.0.1:{s3}/vbucket/file"))
            .status()
            .expect("run curl");
        status
            .success()
            .then(|| std::fs::read(&out_path).expect("curl output"))
    };
    let probes = [
        Probe {
            offset: 0,
            length: 4096,
        },
        Probe {
            offset: bad - 10,
            length: 100,
        },
        Probe {
            offset: bad - 1,
            length: 1,
        },
        Probe {
            offset: 1 << 20,
            length: 1 << 20,
        },
        Probe {
            offset: 17 << 16,
            length: 1 << 16,
        },
        Probe {
            offset: (2 << 20) + 7,
            length: 5000,
        },
        Probe {
            offset: 0,
            length: size,
        },
    ];

    for phase in ["one copy bad", "every copy bad"] {
        match phase {
            "one copy bad" => flip_piece_byte(&pieces[0], bad),
            _ => {
                // The bad copy may have been met, quarantined and replaced
                // by repair: wait until three copies have stood still for
                // three seconds, then make every good one bad.
                let deadline = std::time::Instant::now() + Duration::from_secs(90);
                let mut steady = 0;
                while steady < 3 {
                    assert!(std::time::Instant::now() < deadline, "copies never settled");
                    std::thread::sleep(Duration::from_secs(1));
                    steady = match piece_files_over(&dir, size).len() {
                        3 => steady + 1,
                        _ => 0,
                    };
                }
                for piece in piece_files_over(&dir, size) {
                    let stored = std::fs::read(&piece).expect("read piece");
                    if stored[4096 + bad as usize] == data[bad as usize] {
                        flip_piece_byte(&piece, bad);
                    }
                }
            }
        }
        let all_bad = phase == "every copy bad";
        for probe in &probes {
            let expected = &data[probe.offset as usize..(probe.offset + probe.length) as usize];
            let covers = probe.offset <= bad && bad < probe.offset + probe.length;
            let judge = |how: &str, got: Option<Vec<u8>>| match got {
                Some(got) => {
                    assert!(
                        got == expected,
                        "{phase}: {how} at {} for {} returned wrong bytes",
                        probe.offset,
                        probe.length
                    );
                    assert!(
                        !(all_bad && covers),
                        "{phase}: {how} at {} for {} succeeded over a byte bad in every copy",
                        probe.offset,
                        probe.length
                    );
                }
                None => assert!(
                    all_bad,
                    "{phase}: {how} at {} for {} failed with a good copy left",
                    probe.offset, probe.length
                ),
            };

            drop_page_cache();
            let mount_read = {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(mnt.join("vbucket/file")).expect("open");
                let mut buf = vec![0u8; probe.length as usize];
                file.read_exact_at(&mut buf, probe.offset)
                    .ok()
                    .map(|()| buf)
            };
            judge("a read through the mount", mount_read);

            let range = (probe.offset, probe.offset + probe.length - 1);
            judge("an S3 ranged GET", s3_get(Some(range)));
        }
        let back = root.path().join("back");
        let _ = std::fs::remove_file(&back);
        let got = cli_output(&dir, &["get", "/vbucket/file", back.to_str().unwrap()]);
        if all_bad {
            assert!(!got.status.success(), "get succeeded over a bad byte");
            assert!(!back.exists(), "a failed get left its file");
        } else {
            assert!(
                got.status.success(),
                "{}",
                String::from_utf8_lossy(&got.stderr)
            );
            assert!(
                std::fs::read(&back).unwrap() == data,
                "get returned wrong bytes"
            );
        }
        let whole = s3_get(None);
        if all_bad {
            assert!(whole.is_none(), "an S3 GET succeeded over a bad byte");
        } else {
            assert!(
                whole.as_deref() == Some(data),
                "S3 GET returned wrong bytes"
            );
        }
    }
    interrupt(dev.0.take().expect("dev"));
}
