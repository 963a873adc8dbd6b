//! A cluster of separate processes started by `deploy/local-cluster.sh`,
//! and FUSE mounts of it run as `tessera mount` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A local cluster, stopped when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh")
}

impl Cluster {
    pub fn up(base: u16, meta: usize, chunk: usize) -> Cluster {
        Cluster::up_with(base, meta, chunk, "", "")
    }

    /// A cluster whose metaserver and chunkserver configurations end with
    /// the given TOML tables (`local-cluster.sh --meta-toml/--chunk-toml`).
    pub fn up_with(
        base: u16,
        meta: usize,
        chunk: usize,
        meta_toml: &str,
        chunk_toml: &str,
    ) -> Cluster {
        Cluster::up_args(
            base,
            meta,
            chunk,
            &["--meta-toml", meta_toml, "--chunk-toml", chunk_toml],
        )
    }

    /// A cluster started with more `local-cluster.sh up` options.
    pub fn up_args(base: u16, meta: usize, chunk: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("tessera-cluster")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let cluster = Cluster { dir, base };
        let status = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(cluster.root())
            .args(["--meta", &meta.to_string(), "--chunk", &chunk.to_string()])
            .args([
                "--base-port",
                &base.to_string(),
                "--bin",
                super::tessera_bin(),
            ])
            .args(["--timeout", "120"])
            .args(extra)
            .status()
            .expect("run local-cluster.sh");
        assert!(status.success(), "local-cluster.sh up failed");
        cluster
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    pub fn config(&self) -> PathBuf {
        self.root().join("client.toml")
    }

    /// Runs a file command against this cluster.
    pub fn tessera(&self, args: &[&str]) -> Output {
        Command::new(super::tessera_bin())
            .args(args)
            .env("TESSERA_CONFIG", self.config())
            .env("NO_COLOR", "1")
            .output()
            .expect("run tessera")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.tessera(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (chunk-K, piece index) of every piece of the file's chunks, from
    /// `stat`.
    pub fn pieces_of(&self, remote: &str) -> Vec<(usize, usize)> {
        self.ok(&["stat", remote])
            .lines()
            .filter_map(|line| {
                let rest = line.trim().strip_prefix("piece ")?;
                let index: usize = rest.split(' ').next()?.parse().ok()?;
                let address = rest.rsplit('(').next()?.trim_end_matches(')');
                Some((self.chunk_of(address), index))
            })
            .collect()
    }

    /// The pid of chunkserver `chunk-K`.
    pub fn chunk_pid(&self, k: usize) -> u32 {
        self.pid_of(&format!("chunk-{k}"))
    }

    /// Which chunkserver (K of `chunk-K`) listens on `address`.
    pub fn chunk_of(&self, address: &str) -> usize {
        let port: u16 = address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        (port - self.base - 100) as usize + 1
    }

    pub fn sigkill_chunk(&self, k: usize) {
        self.sigkill(&format!("chunk-{k}"));
    }

    pub fn metrics_text(&self, port: u16) -> String {
        super::scrape(format!("127.0.0.1:{port}").parse().expect("addr"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(self.root())
            .status();
    }
}

impl Cluster {
    /// The pid of a daemon named in DIR/pids (`meta-K`, `chunk-K`).
    pub fn pid_of(&self, name: &str) -> u32 {
        let pids = std::fs::read_to_string(self.root().join("pids")).expect("pids");
        pids.lines()
            .find_map(|line| {
                let (n, pid) = line.split_once(' ')?;
                (n == name).then(|| pid.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in {pids}"))
    }

    /// The node id of the metaserver leader, from `tessera admin status`.
    pub fn meta_leader(&self) -> usize {
        let status = self.ok(&["admin", "status"]);
        status
            .split("leader ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|id| id.trim().parse().ok())
            .unwrap_or_else(|| panic!("no leader in status:\n{status}"))
    }

    /// Starts `chunk-K` again (after a kill) as its own session, logging
    /// where `local-cluster.sh` does, and records its pid for `down`.
    // The daemon outlives this call on purpose: `local-cluster.sh down`
    // stops it by the pid recorded here, as it does the others.
    #[allow(clippy::zombie_processes)]
    pub fn restart_chunk(&self, k: usize) {
        use std::os::unix::process::CommandExt;
        let name = format!("chunk-{k}");
        let config = self.root().join(&name).join("chunk.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join(&name).join("log"))
            .expect("chunkserver log");
        let child = Command::new(super::tessera_bin())
            .arg("chunk")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chunkserver");
        let pids_path = self.root().join("pids");
        let pids = std::fs::read_to_string(&pids_path).expect("pids");
        let rewritten: String = pids
            .lines()
            .map(|line| match line.split_once(' ') {
                Some((n, _)) if n == name => format!("{name} {}\n", child.id()),
                _ => format!("{line}\n"),
            })
            .collect();
        std::fs::write(&pids_path, rewritten).expect("write pids");
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`) to a daemon.
    pub fn signal(&self, name: &str, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid_of(name).to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {name}");
    }

    pub fn sigkill(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid_of(name).to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {name}");
    }
}

/// A `tessera mount` process; SIGTERM unmounts it when dropped.
pub struct Mount {
    child: Option<Child>,
    pub path: PathBuf,
    log: PathBuf,
}

impl Mount {
    /// Mounts `cluster` on a fresh directory under `dir`, with extra
    /// `tessera mount` flags.
    pub fn new(cluster: &Cluster, dir: &Path, name: &str, extra: &[&str]) -> Mount {
        Mount::with_config(&cluster.config(), dir, name, extra)
    }

    /// Mounts with a client configuration of the test's own.
    pub fn with_config(config: &Path, dir: &Path, name: &str, extra: &[&str]) -> Mount {
        Mount::with_command(dir, name, |path| {
            let mut command = Command::new(super::tessera_bin());
            command
                .arg("mount")
                .arg(path)
                .arg("--config")
                .arg(config)
                .args(extra);
            command
        })
    }

    /// Mounts on `dir/name` with the command `command` builds for the
    /// mount point (one that ends by exec'ing `tessera mount`).
    pub fn with_command(dir: &Path, name: &str, command: impl FnOnce(&Path) -> Command) -> Mount {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).expect("mount point");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("mount log");
        let child = command(&path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn tessera mount");
        let mount = Mount {
            child: Some(child),
            path,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !mount.is_mounted() {
            assert!(
                Instant::now() < deadline,
                "the mount did not appear; log:\n{}",
                mount.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        mount
    }

    pub fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let wanted = self.path.to_string_lossy().into_owned();
        mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(wanted.as_str()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would: the kernel keeps a dead mount behind.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the mount commits open files and unmounts.
    pub fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            self.terminate(child);
        }
        if self.is_mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }

    fn terminate(&self, mut child: Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success() || std::thread::panicking(),
                        "tessera mount exited with {status}; log:\n{}",
                        self.log_text()
                    );
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}
