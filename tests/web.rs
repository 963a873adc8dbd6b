//! The metaservers' status page in a real browser: headless Chromium reads
//! the page of a three-member cluster from the leader and from a follower
//! (which shows the leader's view), runs its script, and reads it again
//! after a chunkserver is killed with SIGKILL. Screenshots are kept under
//! the target folder (`web-artifacts/`) for people to look at.

mod common;

use common::cluster::Cluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Metaservers 44000.., chunkservers 44100.., metrics 46000.. and 46100..
const BASE: u16 = 44000;
const CHROMIUM: &str = "/usr/bin/chromium";
const CHUNKSERVERS: usize = 3;

fn page_url(cluster: &Cluster, member: usize) -> String {
    format!(
        "http://127.0.0.1:{}/",
        cluster.base + 2000 + member as u16 - 1
    )
}

/// Where screenshots go: `$CARGO_TARGET_DIR/web-artifacts`, else beside
/// the test binary's target folder.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("web-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts folder");
    dir
}

/// Headless Chromium with a profile of its own, nothing fetched from the
/// network but the page.
struct Browser {
    profile: tempfile::TempDir,
}

impl Browser {
    fn new() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the status page is tested in a real browser; \
             run `apt-get install chromium` (CI installs it in .ci/test)"
        );
        Browser {
            profile: tempfile::tempdir().expect("browser profile"),
        }
    }

    /// Runs Chromium on `url` with `args`, killing it after a minute.
    fn run(&self, args: &[&str], url: &str) -> String {
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
        let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chromium") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {args:?} {url} ran for a minute");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        assert!(status.success(), "chromium {args:?} {url}: {status}\n{err}");
        out
    }

    /// The DOM after the page's script ran for a while of virtual time
    /// (long enough for two of its refreshes).
    fn dom(&self, url: &str) -> String {
        let dom = self.run(&["--virtual-time-budget=12000", "--dump-dom"], url);
        assert!(
            dom.contains("id=\"status\""),
            "no status page at {url}:\n{dom}"
        );
        dom
    }

    fn screenshot(&self, url: &str, name: &str, size: &str) -> PathBuf {
        let path = artifacts().join(name);
        let _ = std::fs::remove_file(&path);
        self.run(
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={size}"),
                "--hide-scrollbars",
            ],
            url,
        );
        assert!(path.exists(), "no screenshot at {}", path.display());
        println!("screenshot: {}", path.display());
        path
    }
}

/// The attributes of every `<tag` start tag whose `class` is `class`.
fn elements(dom: &str, tag: &str, class: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    dom.match_indices(&open)
        .filter_map(|(at, _)| {
            let rest = &dom[at + open.len()..];
            let attrs = attributes(&rest[..rest.find('>')?]);
            (attrs.get("class").map(String::as_str) == Some(class)).then_some(attrs)
        })
        .collect()
}

/// `name="value"` pairs as Chromium serializes them.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        out.insert(name, rest[value_start..value_start + len].to_string());
        rest = &rest[value_start + len + 1..];
    }
    out
}

/// The attributes of the element with `id`.
fn by_id(dom: &str, id: &str) -> BTreeMap<String, String> {
    let needle = format!("id=\"{id}\"");
    let at = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let start = dom[..at].rfind('<').expect("tag start");
    let end = at + dom[at..].find('>').expect("tag end");
    let tag = &dom[start + 1..end];
    attributes(&tag[tag.find(' ').unwrap_or(tag.len())..])
}

fn chunkserver_states(dom: &str) -> BTreeMap<String, String> {
    elements(dom, "tr", "chunkserver")
        .into_iter()
        .map(|row| (row["data-name"].clone(), row["data-state"].clone()))
        .collect()
}

fn admin_status(cluster: &Cluster) -> Option<Value> {
    let out = cluster.tessera(&["admin", "status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

/// `/status.json` straight from the listener.
fn status_json(url: &str) -> Value {
    use std::io::{Read, Write};
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect the status page");
    stream
        .write_all(b"GET /status.json HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request status.json");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read status.json");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let body = text.split_once("\r\n\r\n").expect("body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("status.json ({e}): {body}"))
}

#[test]
fn the_status_page_shows_the_cluster_and_a_killed_chunkserver() {
    let browser = Browser::new();
    let cluster = Cluster::up(BASE, 3, CHUNKSERVERS);
    let file = common::random_file(cluster.dir.path(), "data", 3 << 20);
    cluster.ok(&["put", &file.display().to_string(), "/data"]);
    let leader = cluster.meta_leader();
    let follower = (1..=3).find(|m| *m != leader).expect("a follower");
    let leader_url = page_url(&cluster, leader);
    let follower_url = page_url(&cluster, follower);

    let json = status_json(&leader_url);
    assert_eq!(json["health"], "healthy", "{json:#}");
    assert_eq!(json["proxied"], false);
    assert_eq!(
        json["status"]["chunkservers"].as_array().map(Vec::len),
        Some(CHUNKSERVERS)
    );

    // The leader's page, after its script replaced the body at least once.
    let dom = browser.dom(&leader_url);
    assert_eq!(by_id(&dom, "health")["data-health"], "healthy", "{dom}");
    let body = dom
        .find("<body")
        .map(|at| &dom[at + 5..])
        .unwrap_or_default();
    let refreshes: u32 = attributes(&body[..body.find('>').unwrap_or(0)])
        .get("data-refreshes")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        refreshes >= 1,
        "the page's script never refreshed it:\n{dom}"
    );
    assert_eq!(by_id(&dom, "chunkservers")["data-count"], "3");
    let states = chunkserver_states(&dom);
    let expected: BTreeMap<String, String> = (1..=CHUNKSERVERS)
        .map(|k| (format!("chunk-{k}"), "up".to_string()))
        .collect();
    assert_eq!(states, expected, "{dom}");
    let members = elements(&dom, "tr", "metaserver");
    assert_eq!(members.len(), 3, "{dom}");
    let leaders: Vec<_> = members
        .iter()
        .filter(|m| m["data-role"] == "leader")
        .map(|m| m["data-node"].clone())
        .collect();
    assert_eq!(leaders, vec![leader.to_string()], "{dom}");
    assert!(dom.contains("data-policy=\"replicas:3\""), "{dom}");
    browser.screenshot(&leader_url, "status.png", "1280,1600");

    // A follower shows the leader's view, fetched over RPC, and says so.
    let dom = browser.dom(&follower_url);
    let served = by_id(&dom, "served");
    assert_eq!(served["data-proxied"], "true", "{dom}");
    assert_eq!(served["data-served-by"], follower.to_string());
    assert_eq!(served["data-answered-by"], leader.to_string());
    assert_eq!(chunkserver_states(&dom), expected, "{dom}");
    browser.screenshot(&follower_url, "status-phone.png", "390,1400");

    // Kill a chunkserver; once the leader no longer counts it up, both
    // pages show it down or suspect and the cluster no longer healthy.
    cluster.sigkill_chunk(2);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = admin_status(&cluster).and_then(|s| {
            s["chunkservers"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "chunk-2")
                .and_then(|c| c["state"].as_str().map(str::to_string))
        });
        if state.as_deref().is_some_and(|s| s != "up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chunk-2 still {state:?} 90 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for url in [&leader_url, &follower_url] {
        let dom = browser.dom(url);
        let states = chunkserver_states(&dom);
        assert_eq!(states.len(), CHUNKSERVERS, "{dom}");
        let killed = states.get("chunk-2").map(String::as_str);
        assert!(
            matches!(killed, Some("suspect" | "down")),
            "chunk-2 shows as {killed:?} on {url}:\n{dom}"
        );
        assert_eq!(states["chunk-1"], "up");
        assert_eq!(states["chunk-3"], "up");
        assert_ne!(by_id(&dom, "health")["data-health"], "healthy", "{dom}");
        assert!(dom.contains("(chunk-2) is "), "no problem named:\n{dom}");
    }
    browser.screenshot(&leader_url, "status-chunkserver-killed.png", "1280,1600");
}
