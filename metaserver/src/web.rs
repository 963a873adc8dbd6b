//! The status page at `/` of a metaserver's HTTP listener (the one that
//! serves `/metrics`), and `/status.json` with the same data for scripts.
//!
//! The server renders everything, so every string from the cluster is
//! escaped in one place ([`esc`]); the script only swaps in a fresh
//! `/fragment` every few seconds, and without scripts a `<noscript>` refresh
//! reloads the page. Read-only, and as unauthenticated as `/metrics`: the
//! listener belongs on loopback or behind an authenticating proxy.
//!
//! Only the leader knows chunkserver liveness, load, redundancy and
//! sessions, so a follower asks the leader over the RPC path the admin CLI
//! uses (`Status`, `ListSessions`, as a metaserver) and renders that,
//! saying so. The leader's HTTP address is nowhere in the cluster's state,
//! which rules out a redirect. When the leader does not answer, the follower
//! renders its own view under a warning.

use crate::service::MetaService;
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_proto::chunk::LoadReport;
use tessera_proto::ids::NodeId;
use tessera_proto::meta::{Status, StatusReply};
use tessera_proto::obs::{HttpResponse, Routes};
use tessera_proto::rpc::{CallOptions, Peer, RpcClient};
use tessera_proto::session::{ListSessions, SessionStatus};
use tessera_proto::tls::Role;
use tokio::sync::watch;

/// Between two samples of the charts' history.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// An hour of samples: what the charts span.
const HISTORY_LEN: usize = 360;
/// A follower's calls to the leader stay well inside the responder's 5 s,
/// so a dead leader costs a warning on the page, not a timed-out request.
const LEADER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an open page refreshes itself.
const REFRESH_MS: u64 = 5_000;
/// Sessions listed on the page; `/status.json` has them all.
const SESSIONS_SHOWN: usize = 100;
/// A member the leader has not heard from for this long is a problem.
const MEMBER_SILENT_MS: u64 = 10_000;

const SCRIPT: &str = include_str!("web/status.js");
const STYLE: &str = include_str!("web/status.css");

/// The script comes from this origin and nothing else; styles are inline
/// (the capacity bars' widths); nothing may frame the page.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
    style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One point of the charts.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// Summed over chunkservers heard from recently.
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub applied_index: u64,
    /// Raft entries applied per second since the sample before; none for
    /// the first sample after a start or a gap.
    pub commits_per_s: Option<f64>,
}

/// Everything one render shows; `/status.json` serializes it as it is.
#[derive(Serialize)]
struct View {
    /// The member whose listener answered.
    served_by: u64,
    /// `status` is the leader's, fetched over RPC by this follower.
    proxied: bool,
    /// `healthy`, `degraded` or `critical`.
    health: &'static str,
    /// What keeps the cluster from being healthy, for people.
    problems: Vec<String>,
    /// Why the view may be incomplete.
    notes: Vec<String>,
    status: StatusReply,
    /// Reads and writes in flight per chunkserver id: only the leader's
    /// memory holds them and `Status` does not carry them, so a follower's
    /// page goes without.
    load: BTreeMap<u64, LoadReport>,
    /// From the leader; none when it did not answer.
    sessions: Option<Vec<SessionStatus>>,
    generated_ms: u64,
    history: Vec<Sample>,
}

/// The page's state: the service to ask, a client to reach the leader with,
/// and the last hour of samples.
pub struct StatusPage {
    service: Arc<MetaService>,
    client: RpcClient,
    history: Mutex<History>,
}

/// The last [`HISTORY_LEN`] samples, oldest first.
#[derive(Default)]
struct History(VecDeque<Sample>);

impl History {
    fn record(&mut self, status: &StatusReply, at_ms: u64) {
        let (capacity, free) = live_space(status);
        let applied = status.applied_index.unwrap_or(0);
        let gap = SAMPLE_INTERVAL.as_millis() as u64 * 3;
        let commits_per_s = self.0.back().and_then(|last| {
            let ms = at_ms.checked_sub(last.at_ms)?;
            let entries = applied.checked_sub(last.applied_index)?;
            (ms > 0 && ms < gap).then(|| entries as f64 * 1000.0 / ms as f64)
        });
        if self.0.len() >= HISTORY_LEN {
            self.0.pop_front();
        }
        self.0.push_back(Sample {
            at_ms,
            capacity_bytes: capacity,
            used_bytes: capacity.saturating_sub(free),
            applied_index: applied,
            commits_per_s,
        });
    }
}

/// Capacity and free bytes summed over the chunkservers heard from
/// recently, as `statfs` counts them.
fn live_space(status: &StatusReply) -> (u64, u64) {
    status
        .chunkservers
        .iter()
        .filter(|c| c.alive)
        .fold((0, 0), |(c, f), cs| {
            (c + cs.capacity_bytes, f + cs.free_bytes)
        })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl StatusPage {
    pub fn new(service: Arc<MetaService>, client: RpcClient) -> Arc<StatusPage> {
        Arc::new(StatusPage {
            service,
            client,
            history: Mutex::default(),
        })
    }

    /// `/`, `/fragment` (the page's body, for its refresh), `/status.json`
    /// and `/status.js`, for [`tessera_proto::obs::serve_http`].
    pub fn routes(self: &Arc<StatusPage>) -> Routes {
        let page = self.clone();
        Arc::new(move |path: &str| {
            let page = page.clone();
            let answer: BoxFuture<'static, HttpResponse> = match path {
                "/" => Box::pin(async move { page.html(true).await }),
                "/fragment" => Box::pin(async move { page.html(false).await }),
                "/status.json" => Box::pin(async move { page.json().await }),
                "/status.js" => {
                    Box::pin(async { HttpResponse::ok("text/javascript; charset=utf-8", SCRIPT) })
                }
                _ => return None,
            };
            Some(answer)
        })
    }

    /// Samples capacity and the applied index every [`SAMPLE_INTERVAL`]
    /// until `shutdown`. Every member samples the leader's view, so the
    /// charts read the same on any member's page.
    pub async fn sample_loop(self: Arc<StatusPage>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let view = self.view(false).await;
            // A member's own view without a leader knows no chunkserver.
            if view.status.leader == Some(view.status.answered_by) {
                self.history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(&view.status, unix_ms());
            }
        }
    }

    /// The leader's status (this member's own when it leads or the leader
    /// is out of reach), with what goes with it.
    async fn view(&self, with_sessions: bool) -> View {
        let own = self.service.status();
        let me = own.answered_by;
        let mut notes = Vec::new();
        let mut proxied = false;
        let mut sessions = None;
        let mut load = BTreeMap::new();
        let status = if own.leader == Some(me) {
            if with_sessions {
                match self.service.list_sessions() {
                    Ok(list) => sessions = Some(list),
                    Err(err) => notes.push(format!("sessions: {err}")),
                }
            }
            let registry = self
                .service
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            load = registry
                .live
                .iter()
                .map(|(node, live)| (node.0, live.load.clone()))
                .collect();
            own
        } else {
            match leader_address(&own) {
                Err(why) => {
                    notes.push(why);
                    own
                }
                Ok((leader, addr)) => {
                    let peer = Peer::new(addr, Role::Meta);
                    let options = CallOptions {
                        timeout: LEADER_CALL_TIMEOUT,
                        retries: 0,
                        request_id: None,
                    };
                    let listing = async {
                        if with_sessions {
                            self.client.call(peer, &ListSessions, options).await.ok()
                        } else {
                            None
                        }
                    };
                    let (answer, listing) =
                        tokio::join!(self.client.call(peer, &Status, options), listing);
                    match answer {
                        Ok(status) => {
                            proxied = true;
                            sessions = listing;
                            if status.leader != Some(status.answered_by) {
                                notes.push(format!(
                                    "metaserver {} no longer leads; this view may lag",
                                    leader.0
                                ));
                            }
                            status
                        }
                        Err(err) => {
                            notes.push(format!(
                                "the leader (metaserver {} at {addr}) did not answer: {err}. \
                                 This is metaserver {}'s own view: chunkserver liveness, \
                                 redundancy and sessions are known only to the leader.",
                                leader.0, me.0
                            ));
                            own
                        }
                    }
                }
            }
        };
        let (health, problems) = health(&status, proxied || status.leader == Some(me));
        View {
            served_by: me.0,
            proxied,
            health,
            problems,
            notes,
            status,
            load,
            sessions,
            generated_ms: unix_ms(),
            history: Vec::new(),
        }
    }

    async fn full_view(&self) -> View {
        let mut view = self.view(true).await;
        view.history = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .iter()
            .cloned()
            .collect();
        view
    }

    async fn html(&self, whole_page: bool) -> HttpResponse {
        let view = self.full_view().await;
        let mut out = String::with_capacity(32 * 1024);
        if whole_page {
            page(&mut out, &view);
        } else {
            fragment(&mut out, &view);
        }
        HttpResponse::ok("text/html; charset=utf-8", out)
            .with_header("Content-Security-Policy", CSP)
            .with_header("Referrer-Policy", "no-referrer")
    }

    async fn json(&self) -> HttpResponse {
        let view = self.full_view().await;
        match serde_json::to_vec_pretty(&view) {
            Ok(body) => HttpResponse::ok("application/json", body),
            Err(err) => HttpResponse {
                status: "500 Internal Server Error",
                content_type: "text/plain; charset=utf-8",
                headers: Vec::new(),
                body: format!("encode status: {err}\n").into_bytes(),
            },
        }
    }
}

/// The leader's id and RPC address, or why there is none to ask.
fn leader_address(own: &StatusReply) -> Result<(NodeId, SocketAddr), String> {
    let Some(leader) = own.leader else {
        return Err(format!(
            "no leader is elected (as metaserver {} sees it): this is its own view",
            own.answered_by.0
        ));
    };
    let address = own
        .members
        .iter()
        .find(|m| m.node == leader)
        .map(|m| m.address.as_str())
        .unwrap_or_default();
    address.parse().map(|addr| (leader, addr)).map_err(|_| {
        format!(
            "the leader (metaserver {}) has no usable address ({address:?}): this is metaserver {}'s own view",
            leader.0, own.answered_by.0
        )
    })
}

/// The verdict at the top of the page and the reasons for it. `leaders`:
/// the status is the leader's, so liveness and redundancy in it are real.
fn health(status: &StatusReply, leaders: bool) -> (&'static str, Vec<String>) {
    let mut problems = Vec::new();
    let mut critical = false;
    if status.leader.is_none() {
        critical = true;
        problems.push("no metaserver leads: writes wait for an election".to_string());
    }
    if !leaders {
        problems.push("the leader's view is out of reach".to_string());
        return (if critical { "critical" } else { "degraded" }, problems);
    }
    let r = &status.redundancy;
    if r.unavailable > 0 {
        critical = true;
        problems.push(format!(
            "{} unreadable until a holder returns",
            plural(r.unavailable, "chunk", "chunks")
        ));
    }
    if r.endangered > 0 {
        problems.push(format!(
            "{} one failure from loss",
            plural(r.endangered, "chunk", "chunks")
        ));
    }
    if r.degraded > r.endangered {
        problems.push(format!(
            "{} below full redundancy",
            plural(r.degraded - r.endangered, "chunk", "chunks")
        ));
    }
    for cs in &status.chunkservers {
        if cs.state == "suspect" || cs.state == "down" {
            problems.push(format!(
                "chunkserver {} ({}) is {}",
                cs.node.0, cs.name, cs.state
            ));
        }
    }
    let alive = status.chunkservers.iter().filter(|c| c.alive).count();
    if alive == 0 {
        critical = true;
        problems.push("no chunkserver is up".to_string());
    }
    for member in &status.members {
        if Some(member.node) == status.leader {
            continue;
        }
        match member.last_contact_ms {
            Some(ms) if ms < MEMBER_SILENT_MS => {}
            Some(ms) => problems.push(format!(
                "metaserver {} not heard from for {}",
                member.node.0,
                duration(ms)
            )),
            None => problems.push(format!(
                "metaserver {} not heard from since this leader took over",
                member.node.0
            )),
        }
    }
    let verdict = if critical {
        "critical"
    } else if problems.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    (verdict, problems)
}

// ------------------------------------------------------------- rendering

macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

// After `w!`, which it uses (macros are in scope textually).
mod render;
use render::*;

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::meta::{ChunkserverStatus, MemberStatus, RedundancyStatus};

    fn status() -> StatusReply {
        StatusReply {
            answered_by: NodeId(1),
            leader: Some(NodeId(1)),
            term: 3,
            commit_index: Some(40),
            applied_index: Some(40),
            members: vec![MemberStatus {
                node: NodeId(1),
                address: "127.0.0.1:7500".into(),
                role: "leader".into(),
                last_contact_ms: Some(0),
                matched_index: Some(40),
            }],
            chunkservers: vec![ChunkserverStatus {
                node: NodeId(7),
                name: "<script>alert('x')</script>".into(),
                address: "127.0.0.1:7600".into(),
                rack: "r\"1".into(),
                zone: String::new(),
                alive: true,
                state: "up".into(),
                capacity_bytes: 4 << 30,
                free_bytes: 1 << 30,
                pieces: 12,
                mapped_pieces: 12,
                last_heartbeat_ms_ago: 300,
            }],
            chunks_under_replicated: 0,
            redundancy: RedundancyStatus {
                from_leader: true,
                ..Default::default()
            },
            namespace: Default::default(),
        }
    }

    fn view(status: StatusReply, history: Vec<Sample>) -> View {
        let (health, problems) = health(&status, true);
        View {
            served_by: 1,
            proxied: false,
            health,
            problems,
            notes: Vec::new(),
            status,
            load: BTreeMap::new(),
            sessions: Some(Vec::new()),
            generated_ms: 1_000_000_000,
            history,
        }
    }

    #[test]
    fn cluster_strings_are_escaped_everywhere() {
        let mut out = String::new();
        page(&mut out, &view(status(), Vec::new()));
        assert!(!out.contains("<script>alert"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(out.contains("r&quot;1"));
        assert!(out.contains("data-health=\"healthy\""));
        assert!(out.contains("data-state=\"up\""));
        assert_eq!(
            out.matches("<script").count(),
            1,
            "only the page's own script"
        );
    }

    #[test]
    fn a_silent_chunkserver_makes_the_cluster_degraded() {
        let mut status = status();
        status.chunkservers[0].state = "suspect".into();
        let (verdict, problems) = health(&status, true);
        assert_eq!(verdict, "degraded");
        assert!(problems[0].contains("suspect"), "{problems:?}");
        status.leader = None;
        assert_eq!(health(&status, true).0, "critical");
        assert_eq!(health(&self::status(), false).0, "degraded");
    }

    #[test]
    fn samples_become_rates_and_the_history_keeps_an_hour() {
        let mut history = History::default();
        let mut status = status();
        let step = SAMPLE_INTERVAL.as_millis() as u64;
        for i in 0..(HISTORY_LEN as u64 + 5) {
            status.applied_index = Some(40 + i * 20);
            history.record(&status, 1_000_000 + i * step);
        }
        assert_eq!(history.0.len(), HISTORY_LEN);
        let last = history.0.back().unwrap();
        assert_eq!(last.capacity_bytes, 4 << 30);
        assert_eq!(last.used_bytes, 3 << 30);
        assert_eq!(last.commits_per_s, Some(2.0));
        // After a gap the rate starts over instead of averaging across it.
        history.record(&status, last.at_ms + step * 10);
        assert_eq!(history.0.back().unwrap().commits_per_s, None);

        let mut out = String::new();
        let samples: Vec<Sample> = history.0.iter().cloned().collect();
        let end = samples.last().unwrap().at_ms;
        let mut shown = view(status, samples);
        shown.generated_ms = end;
        fragment(&mut out, &shown);
        assert!(out.contains("id=\"svg-capacity\""), "{out}");
        assert!(out.contains("id=\"svg-commits\""), "{out}");
    }
}
