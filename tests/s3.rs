//! The S3 gateway against real clients: `tessera dev --s3` as a process
//! (with a FUSE mount of the same cluster when running as root), and the
//! awscli and boto3 checks of tests/s3/s3_test.py run against it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    data: PathBuf,
    s3: String,
    metrics: String,
    log: PathBuf,
}

impl Dev {
    fn start(data: &Path, mount: Option<&Path>, base: u16) -> Dev {
        let log = data.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let s3 = format!("127.0.0.1:{}", base);
        let metrics = format!("127.0.0.1:{}", base + 1);
        let mut command = Command::new(common::tessera_bin());
        command
            .args(["dev", "--data"])
            .arg(data)
            .args(["--meta-listen", &format!("127.0.0.1:{}", base + 2)])
            .args(["--metrics-listen", &metrics])
            .args(["--s3", &s3])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(mount) = mount {
            command.arg("--mount").arg(mount);
        }
        let mut child = command.spawn().expect("spawn tessera dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("stop with Ctrl-C") => break,
                Some(Ok(_)) => {}
                _ => panic!(
                    "tessera dev exited before it was ready: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Dev {
            child,
            data: data.to_path_buf(),
            s3,
            metrics,
            log,
        }
    }

    fn credentials(&self) -> PathBuf {
        self.data.join("s3-credentials")
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "tessera dev exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tessera dev did not stop on SIGINT");
    }

    fn metrics_text(&self) -> String {
        let mut stream = std::net::TcpStream::connect(&self.metrics).expect("metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv_tool(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".cache/tessera/venv/bin").join(name);
    path.exists().then_some(path)
}

/// The real-client checks. `.ci/run` installs awscli and boto3; elsewhere
/// the test says what is missing and how to get it, and fails under CI.
#[test]
fn s3_clients_against_tessera_dev() {
    let (Some(python), Some(aws)) = (
        venv_tool("TESSERA_PYTHON", "python"),
        venv_tool("AWS_CLI", "aws"),
    ) else {
        let message = "awscli and boto3 are not installed: run .ci/run, or create \
                       ~/.cache/tessera/venv with `pip install awscli boto3`";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("tessera-s3")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let data = dir.path().join("data");
    let mount = dir.path().join("mnt");
    let use_mount = tessera_fuse::running_as_root() && Path::new("/dev/fuse").exists();
    let dev = Dev::start(&data, use_mount.then_some(mount.as_path()), 31_000);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/s3/s3_test.py");
    let mut run = Command::new(&python);
    run.arg(&script)
        .env("S3_ENDPOINT", format!("http://{}", dev.s3))
        .env("AWS_SHARED_CREDENTIALS_FILE", dev.credentials())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CLI", &aws)
        .env("TESSERA_BIN", common::tessera_bin())
        .env("TESSERA_CLIENT_CONFIG", data.join("client.toml"))
        .env(
            "TESSERA_MOUNT",
            if use_mount {
                mount.as_os_str()
            } else {
                "".as_ref()
            },
        );
    let status = run.status().expect("run tests/s3/s3_test.py");
    let log = std::fs::read_to_string(&dev.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    assert!(status.success(), "s3_test.py failed; gateway log:\n{log}");

    let metrics = dev.metrics_text();
    for needle in [
        "tessera_s3_requests_total{operation=\"PutObject\",status=\"200\"}",
        "tessera_s3_requests_total{operation=\"GetObject\",status=\"206\"}",
        "tessera_s3_request_seconds_bucket{operation=\"ListObjectsV2\"",
        "status=\"403\"",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}");
    }

    standalone_gateway(&dev, &aws, &python, dir.path());

    // A restart keeps the key the first start made.
    let before = std::fs::read_to_string(dev.credentials()).expect("credentials");
    assert!(before.contains("aws_access_key_id = TK"), "{before}");
    dev.stop();
    let dev = Dev::start(&data, None, 31_000);
    let after = std::fs::read_to_string(dev.credentials()).expect("credentials");
    assert_eq!(before, after, "a restart made a new key");
    dev.stop();
}

/// `tessera gateway --config F` as its own process over the dev cluster:
/// the same key works there, it serves what the other gateway wrote,
/// virtual-hosted-style requests under its `domain` reach their buckets,
/// and SIGTERM stops it cleanly.
fn standalone_gateway(dev: &Dev, aws: &Path, python: &Path, dir: &Path) {
    let client = std::fs::read_to_string(dev.data.join("client.toml")).expect("client.toml");
    let mut config =
        String::from("listen = \"127.0.0.1:31010\"\ndomain = \"s3.tessera.test\"\n[client]\n");
    for line in client.lines() {
        match line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(table) => config.push_str(&format!("[client.{table}]\n")),
            None => config.push_str(&format!("{line}\n")),
        }
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).expect("write gateway.toml");
    let mut gateway = common::Daemon::start(
        &["gateway", "--config", path.to_str().expect("utf-8 path")],
        &dir.join("gateway.log"),
    );
    let run = |args: &[&str]| {
        let out = Command::new(aws)
            .args(args)
            .args(["--endpoint-url", "http://127.0.0.1:31010"])
            .env("AWS_SHARED_CREDENTIALS_FILE", dev.credentials())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .expect("run aws");
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let source = dir.join("standalone.txt");
    std::fs::write(&source, b"through the standalone gateway\n").expect("write");
    run(&["s3", "mb", "s3://standalone"]);
    run(&[
        "s3",
        "cp",
        source.to_str().expect("utf-8"),
        "s3://standalone/a/b.txt",
    ]);
    let listed = run(&["s3", "ls", "--recursive", "s3://standalone"]);
    assert!(listed.contains("a/b.txt"), "{listed}");
    let got = run(&["s3", "cp", "s3://standalone/a/b.txt", "-"]);
    assert_eq!(got, "through the standalone gateway\n");
    run(&["s3", "rm", "s3://standalone/a/b.txt"]);
    run(&["s3", "rb", "s3://standalone"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/s3/s3_test.py");
    let status = Command::new(python)
        .arg(&script)
        .args(["--only", "virtual_hosted"])
        .env("S3_ENDPOINT", "http://127.0.0.1:31010")
        .env("S3_VIRTUAL_DOMAIN", "s3.tessera.test")
        .env("AWS_SHARED_CREDENTIALS_FILE", dev.credentials())
        .env("AWS_CLI", aws)
        .status()
        .expect("run the virtual-hosted check");
    assert!(status.success(), "the virtual-hosted check failed");
    let _ = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = gateway.child.try_wait() {
            assert!(
                status.success(),
                "tessera gateway exited with {status} on SIGTERM"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tessera gateway did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
