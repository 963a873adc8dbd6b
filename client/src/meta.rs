//! Metadata calls with leader discovery.
//!
//! A client that remembers the leader sends a call there alone, so in the
//! steady state the followers carry none of its traffic. A client that
//! knows no leader (every new `tessera` command, mount or gateway), or whose
//! remembered leader fails or stays silent for [`LEADER_GRACE`], asks every
//! configured member at once and keeps the first useful answer: a reply, or
//! a `NotLeader` naming the leader, which is then asked unless it is being
//! asked already. A dead member therefore costs nothing while another one
//! answers, where asking members in turn cost a whole attempt timeout on
//! every call. Members that fail, or that know no leader yet (an election),
//! are asked again after a short back-off; a member that names a leader is
//! asked again if that leader fails or after [`LEADER_GRACE`] (its view may
//! be stale: the leader it names may be the one that died). The call's
//! deadline cuts every attempt short, so no attempt outlives its call.
//!
//! Every attempt of one call, to whichever member and however many at once,
//! carries the same request id. That makes sending a mutation to several
//! members safe: followers answer `NotLeader` without acting, only the
//! leader applies it, and an attempt that reaches a leader after another
//! attempt already committed is answered from the leader's table of recent
//! ids rather than applied again.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tessera_proto::config::{ClientConfig, IoOptions};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::RequestId;
use tessera_proto::meta::{MetaCall, MetaOp, MetaReply};
use tessera_proto::rpc::{CallOptions, Peer, RpcClient};
use tessera_proto::session::SessionCall;
use tessera_proto::tls::Role;
use tessera_proto::wire::Method;
use tokio::time::Instant;

use crate::session::SessionSlot;

/// Default of `io.meta_call_deadline_ms`.
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Default of `io.meta_attempt_timeout_ms`.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a remembered leader has a call to itself before every member is
/// asked as well. Long enough that a healthy leader answers nearly every
/// call alone; short enough that a leader that died costs a call about this
/// much rather than a whole attempt timeout.
pub const LEADER_GRACE: Duration = Duration::from_secs(1);
/// First and largest pause before a member that failed is asked again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How long metadata calls wait (`[io]` in `client.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaTimeouts {
    /// Longest one member may take over one attempt.
    pub attempt: Duration,
    /// Longest a call keeps trying as a whole; it also bounds every attempt.
    pub deadline: Duration,
}

impl Default for MetaTimeouts {
    fn default() -> MetaTimeouts {
        MetaTimeouts {
            attempt: ATTEMPT_TIMEOUT,
            deadline: CALL_DEADLINE,
        }
    }
}

impl MetaTimeouts {
    /// The timeouts a client configuration asks for. Zero is refused: it
    /// would fail every call without sending it.
    pub fn from_io(io: &IoOptions) -> Result<MetaTimeouts, Error> {
        for (key, value) in [
            ("meta_attempt_timeout_ms", io.meta_attempt_timeout_ms),
            ("meta_call_deadline_ms", io.meta_call_deadline_ms),
        ] {
            if value == 0 {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "io.{key} is 0; set it to the milliseconds a metadata call may wait, or remove it for the default"
                    ),
                ));
            }
        }
        Ok(MetaTimeouts {
            attempt: Duration::from_millis(io.meta_attempt_timeout_ms),
            deadline: Duration::from_millis(io.meta_call_deadline_ms),
        })
    }
}

/// The metaserver group as one endpoint. Shared by every task of a client
/// process, so the leader one call finds is the leader the next call asks.
pub struct MetaClient {
    rpc: RpcClient,
    members: Vec<SocketAddr>,
    leader: Mutex<Option<SocketAddr>>,
    timeouts: MetaTimeouts,
    /// The session calls are made under, once one was opened.
    pub(crate) session: Mutex<Option<SessionSlot>>,
    pub(crate) session_opening: tokio::sync::Mutex<()>,
}

/// Who may answer a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Only the leader: redirects are followed and members asked again
    /// until the deadline.
    Leader,
    /// Any member: each is asked once.
    Any,
}

/// What one failed attempt means for the call.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The answer to the call, though an error: the leader refused it.
    Final,
    /// The member named the leader.
    Redirect(SocketAddr),
    /// The member is unreachable, slow, or knows no leader: ask it again.
    Retry,
    /// The member refused our connection (certificate, protocol version);
    /// asking it again within this call cannot help.
    Refused,
}

fn classify(err: &Error, addr: SocketAddr) -> Outcome {
    match err.code {
        ErrorCode::NotLeader => match err
            .redirect
            .as_deref()
            .and_then(|r| r.parse::<SocketAddr>().ok())
        {
            Some(leader) if leader != addr => Outcome::Redirect(leader),
            _ => Outcome::Retry,
        },
        ErrorCode::Unauthenticated | ErrorCode::VersionMismatch => Outcome::Refused,
        ErrorCode::Cancelled => Outcome::Retry,
        code if code.is_retryable() => Outcome::Retry,
        _ => Outcome::Final,
    }
}

/// The members being asked during one call.
struct Round<F> {
    in_flight: FuturesUnordered<F>,
    asking: HashSet<SocketAddr>,
    /// When each waiting member is asked again.
    again: HashMap<SocketAddr, Instant>,
    /// Members that named a leader, by that leader: asked again soon if it
    /// fails.
    waiting_on: HashMap<SocketAddr, Vec<SocketAddr>>,
    backoff: HashMap<SocketAddr, Duration>,
    /// Not to be asked again in this call.
    done: HashSet<SocketAddr>,
}

impl<F: Future> Round<F> {
    fn new() -> Round<F> {
        Round {
            in_flight: FuturesUnordered::new(),
            asking: HashSet::new(),
            again: HashMap::new(),
            waiting_on: HashMap::new(),
            backoff: HashMap::new(),
            done: HashSet::new(),
        }
    }

    /// Whether `addr` is asked now, will be asked again, or is given up.
    fn taken(&self, addr: SocketAddr) -> bool {
        self.asking.contains(&addr) || self.again.contains_key(&addr) || self.done.contains(&addr)
    }

    fn launch(&mut self, addr: SocketAddr, attempt: F) {
        self.again.remove(&addr);
        self.asking.insert(addr);
        self.in_flight.push(attempt);
    }

    fn next_backoff(&mut self, addr: SocketAddr) -> Duration {
        let slot = self.backoff.entry(addr).or_insert(BACKOFF_MIN);
        let now = *slot;
        *slot = (*slot * 2).min(BACKOFF_MAX);
        now
    }

    /// Asks `addr` again after its back-off (sooner if already due sooner).
    fn retry(&mut self, addr: SocketAddr, now: Instant) {
        let at = now + self.next_backoff(addr);
        let entry = self.again.entry(addr).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// `addr` named `leader`: it is asked again when `leader` fails, or
    /// after [`LEADER_GRACE`] in case its view is stale.
    fn wait_on(&mut self, addr: SocketAddr, leader: SocketAddr, now: Instant) {
        self.again.entry(addr).or_insert(now + LEADER_GRACE);
        self.waiting_on.entry(leader).or_default().push(addr);
    }

    /// `addr` failed: those waiting on it as their leader are asked again.
    fn failed(&mut self, addr: SocketAddr, now: Instant) {
        for member in self.waiting_on.remove(&addr).unwrap_or_default() {
            if self.again.contains_key(&member) {
                self.retry(member, now);
            }
        }
    }

    /// Members due to be asked again, taken off the schedule.
    fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let due: Vec<SocketAddr> = self
            .again
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(addr, _)| *addr)
            .collect();
        for addr in &due {
            self.again.remove(addr);
        }
        due
    }

    fn next_wake(&self) -> Option<Instant> {
        self.again.values().min().copied()
    }
}

/// Keeps the error that tells the operator most: a refused connection
/// (certificates, versions) says what to fix; anything else, the latest.
fn keep_error(kept: &mut Option<Error>, err: Error) {
    let refused = |e: &Error| {
        matches!(
            e.code,
            ErrorCode::Unauthenticated | ErrorCode::VersionMismatch
        )
    };
    if kept
        .as_ref()
        .is_none_or(|old| !refused(old) || refused(&err))
    {
        *kept = Some(err);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl MetaClient {
    /// A client for `members`, with the default timeouts.
    pub fn new(rpc: RpcClient, members: Vec<SocketAddr>) -> Result<MetaClient, Error> {
        if members.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "no metaserver address configured; list the metaservers as `meta` in client.toml",
            ));
        }
        // A member listed twice (or two names for one address) would be
        // dialed twice at once for nothing.
        let mut unique = Vec::with_capacity(members.len());
        for addr in members {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        Ok(MetaClient {
            rpc,
            members: unique,
            leader: Mutex::new(None),
            timeouts: MetaTimeouts::default(),
            session: Mutex::new(None),
            session_opening: tokio::sync::Mutex::new(()),
        })
    }

    /// The same client waiting `timeouts` instead.
    pub fn with_timeouts(mut self, timeouts: MetaTimeouts) -> MetaClient {
        self.timeouts = timeouts;
        self
    }

    /// For callers that also talk to a member directly and should give up
    /// when a metadata call would.
    pub fn timeouts(&self) -> MetaTimeouts {
        self.timeouts
    }

    /// Connects with a client configuration (`client.toml`).
    pub async fn from_config(config: &ClientConfig) -> Result<MetaClient, Error> {
        let timeouts = MetaTimeouts::from_io(&config.io)?;
        let identity = config.tls.load()?;
        let rpc = RpcClient::new(
            &identity,
            &config.transport,
            "0.0.0.0:0"
                .parse()
                .map_err(|_| Error::internal("bind address"))?,
        )?;
        let mut members = Vec::new();
        for address in &config.meta {
            let resolved = tokio::net::lookup_host(address).await.map_err(|e| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("metaserver address {address:?}: {e}"),
                )
            })?;
            members.extend(resolved);
        }
        Ok(MetaClient::new(rpc, members)?.with_timeouts(timeouts))
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    fn remembered(&self) -> Option<SocketAddr> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, leader: Option<SocketAddr>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// One namespace operation, with a fresh request id.
    pub async fn call(&self, op: MetaOp) -> Result<MetaReply, Error> {
        self.call_with_id(RequestId::fresh(), op).await
    }

    /// One namespace operation under `request_id` (reuse it to retry a call
    /// whose outcome is unknown), under the session if one is held.
    pub async fn call_with_id(
        &self,
        request_id: RequestId,
        op: MetaOp,
    ) -> Result<MetaReply, Error> {
        let Some(session) = self.current_session().await? else {
            return self.leader_call(&MetaCall { request_id, op }).await;
        };
        let result = self
            .leader_call(&SessionCall {
                session,
                request_id,
                op,
            })
            .await;
        if let Err(err) = &result
            && err.code == ErrorCode::SessionExpired
        {
            self.session_ended(session);
        }
        result
    }

    /// Any metaserver method, answered by the leader.
    pub async fn leader_call<M: Method + Clone>(&self, message: &M) -> Result<M::Response, Error> {
        self.dial(message, Want::Leader).await
    }

    /// A method any member answers (status): the first member that does.
    pub async fn any_call<M: Method + Clone>(&self, message: &M) -> Result<M::Response, Error> {
        self.dial(message, Want::Any).await
    }

    async fn dial<M: Method>(&self, message: &M, want: Want) -> Result<M::Response, Error> {
        let started = Instant::now();
        let deadline = started + self.timeouts.deadline;
        let request_id = RequestId::fresh();
        // A call sent to several members at once must not also be retried
        // by the RPC layer: the round asks again itself, on its schedule.
        // Status (`any_call`) keeps one quick retry, for a pooled connection
        // that died idle.
        let retries = match want {
            Want::Leader => 0,
            Want::Any => 1,
        };
        let attempt = |addr: SocketAddr| {
            let options = CallOptions {
                timeout: self
                    .timeouts
                    .attempt
                    .min(deadline.saturating_duration_since(Instant::now())),
                retries,
                request_id: Some(request_id),
            };
            async move {
                let result = self
                    .rpc
                    .call(Peer::new(addr, Role::Meta), message, options)
                    .await;
                (addr, result)
            }
        };
        let remembered = self.remembered();
        let mut round = Round::new();
        let mut last_error: Option<Error> = None;
        let mut joined = false;
        let grace_end = match remembered {
            Some(leader) => {
                round.launch(leader, attempt(leader));
                started + LEADER_GRACE
            }
            None => started,
        };
        let work = async {
            loop {
                let now = Instant::now();
                for addr in round.due(now) {
                    if !round.asking.contains(&addr) {
                        round.launch(addr, attempt(addr));
                    }
                }
                if !joined && (round.in_flight.is_empty() || now >= grace_end) {
                    joined = true;
                    for &addr in &self.members {
                        if !round.taken(addr) {
                            round.launch(addr, attempt(addr));
                        }
                    }
                }
                if round.in_flight.is_empty() && round.again.is_empty() {
                    // Every member failed in a way asking again cannot mend.
                    return None;
                }
                let wake = match (round.next_wake(), joined) {
                    (Some(at), false) => Some(at.min(grace_end)),
                    (None, false) => Some(grace_end),
                    (at, true) => at,
                };
                tokio::select! {
                    Some((addr, result)) = round.in_flight.next() => {
                        round.asking.remove(&addr);
                        let err = match result {
                            Ok(reply) => return Some(Ok((addr, reply))),
                            Err(err) => err,
                        };
                        let now = Instant::now();
                        round.failed(addr, now);
                        let outcome = classify(&err, addr);
                        tracing::debug!(method = M::NAME, %addr, ?outcome, error = %err, "metaserver attempt did not answer the call");
                        match (outcome, want) {
                            (Outcome::Final, _) => return Some(Err(err)),
                            (Outcome::Redirect(leader), Want::Leader) => {
                                if !round.taken(leader) {
                                    round.launch(leader, attempt(leader));
                                }
                                round.wait_on(addr, leader, now);
                            }
                            (Outcome::Retry, Want::Leader) => round.retry(addr, now),
                            (Outcome::Refused, _) | (_, Want::Any) => {
                                round.done.insert(addr);
                            }
                        }
                        keep_error(&mut last_error, err);
                    }
                    () = sleep_until(wake) => {}
                }
            }
        };
        let ended = tokio::time::timeout_at(deadline, work).await;
        match ended {
            Ok(Some(Ok((addr, reply)))) => {
                if want == Want::Leader {
                    self.remember(Some(addr));
                }
                Ok(reply)
            }
            Ok(Some(Err(err))) => Err(err),
            Ok(None) => {
                self.remember(None);
                let err = last_error.unwrap_or_else(|| {
                    Error::new(ErrorCode::Unavailable, "no metaserver answered")
                });
                let code = match err.code {
                    ErrorCode::NotLeader => ErrorCode::Unavailable,
                    code => code,
                };
                Err(Error::new(
                    code,
                    format!(
                        "no metaserver of {} answered {} ({err}); check that they are running and that client.toml `meta` and `tls` are right",
                        self.member_list(),
                        M::NAME
                    ),
                ))
            }
            Err(_) => {
                self.remember(None);
                Err(self.deadline_error::<M>(want, &round.asking, last_error))
            }
        }
    }

    fn member_list(&self) -> String {
        let names: Vec<String> = self.members.iter().map(|m| m.to_string()).collect();
        names.join(", ")
    }

    fn deadline_error<M: Method>(
        &self,
        want: Want,
        silent: &HashSet<SocketAddr>,
        last_error: Option<Error>,
    ) -> Error {
        let mut detail = Vec::new();
        if !silent.is_empty() {
            let mut silent: Vec<String> = silent.iter().map(|a| a.to_string()).collect();
            silent.sort();
            detail.push(format!("no reply yet from {}", silent.join(", ")));
        }
        if let Some(err) = &last_error {
            detail.push(format!("last error: {err}"));
        }
        // Members still silent at the deadline make it a timeout (down or
        // unreachable); members that all answered without a leader make it
        // unavailable (no election won); otherwise the last error says why.
        let code = match last_error.map(|e| e.code) {
            Some(code) if silent.is_empty() && code != ErrorCode::NotLeader => code,
            Some(ErrorCode::NotLeader) if silent.is_empty() => ErrorCode::Unavailable,
            _ => ErrorCode::Timeout,
        };
        let (whom, needed) = match want {
            Want::Leader => ("no metaserver leader answered", "a majority of them is"),
            Want::Any => ("no metaserver answered", "they are"),
        };
        Error::new(
            code,
            format!(
                "{whom} {} within {} ms (members {}; {}); check that {needed} running and reachable, or raise io.meta_call_deadline_ms in client.toml",
                M::NAME,
                self.timeouts.deadline.as_millis(),
                self.member_list(),
                if detail.is_empty() {
                    "nothing answered".to_string()
                } else {
                    detail.join("; ")
                },
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    //! Real QUIC on loopback against fake metaservers whose part (leader,
    //! follower, silent, refusing) each test sets; a dead member is a bound
    //! UDP socket that never reads, so dialing it hangs as dialing a killed
    //! host does.

    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;
    use tessera_proto::rpc::{Call, RpcMetrics, RpcServer, Service, TransportOptions};
    use tessera_proto::tls::{self, Identity};

    #[derive(Clone, Debug)]
    enum Part {
        Lead,
        Follow(Option<SocketAddr>),
        Silent,
        Refuse(ErrorCode),
    }

    struct FakeMeta {
        part: Mutex<Part>,
        /// The RPC request id of every call received.
        seen: Mutex<Vec<RequestId>>,
    }

    impl FakeMeta {
        fn set(&self, part: Part) {
            *self.part.lock().unwrap() = part;
        }

        fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    impl Service for FakeMeta {
        async fn handle(&self, call: &mut Call) -> Result<(), Error> {
            let _: MetaCall = call.decode()?;
            self.seen.lock().unwrap().push(call.request_id());
            let part = self.part.lock().unwrap().clone();
            match part {
                Part::Lead => call.respond(&MetaReply::Done, 0).await,
                Part::Follow(leader) => Err(Error::not_leader(leader.map(|a| a.to_string()))),
                Part::Silent => {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Err(Error::internal("slept"))
                }
                Part::Refuse(code) => Err(Error::new(code, "refused by the test")),
            }
        }
    }

    struct Cluster {
        dir: PathBuf,
        servers: Vec<(RpcServer, Arc<FakeMeta>)>,
        /// Never read: a member that died with its host.
        holes: Vec<std::net::UdpSocket>,
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    impl Cluster {
        fn new() -> Cluster {
            let dir =
                std::env::temp_dir().join(format!("tessera-meta-{:016x}", rand::random::<u64>()));
            tls::ca_init(&dir).unwrap();
            tls::ca_issue(&dir, Role::Meta, "meta").unwrap();
            tls::ca_issue(&dir, Role::Client, "client").unwrap();
            Cluster {
                dir,
                servers: Vec::new(),
                holes: Vec::new(),
            }
        }

        fn server(&mut self, part: Part) -> (SocketAddr, Arc<FakeMeta>) {
            let identity = Identity::load_from_dir(&self.dir, "meta").unwrap();
            let fake = Arc::new(FakeMeta {
                part: Mutex::new(part),
                seen: Mutex::new(Vec::new()),
            });
            let server = RpcServer::start(
                &identity,
                &TransportOptions::loopback(),
                loopback(),
                fake.clone(),
                RpcMetrics::unregistered(),
            )
            .unwrap();
            let addr = server.local_addr().unwrap();
            self.servers.push((server, fake.clone()));
            (addr, fake)
        }

        fn hole(&mut self) -> SocketAddr {
            let socket = std::net::UdpSocket::bind(loopback()).unwrap();
            let addr = socket.local_addr().unwrap();
            self.holes.push(socket);
            addr
        }

        fn client(
            &self,
            members: Vec<SocketAddr>,
            attempt_ms: u64,
            deadline_ms: u64,
        ) -> MetaClient {
            let identity = Identity::load_from_dir(&self.dir, "client").unwrap();
            let rpc = RpcClient::new(&identity, &TransportOptions::loopback(), loopback()).unwrap();
            MetaClient::new(rpc, members)
                .unwrap()
                .with_timeouts(MetaTimeouts {
                    attempt: Duration::from_millis(attempt_ms),
                    deadline: Duration::from_millis(deadline_ms),
                })
        }
    }

    fn stat() -> MetaOp {
        MetaOp::StatFs
    }

    #[tokio::test]
    async fn a_dead_first_member_costs_nothing_and_the_leader_is_then_asked_alone() {
        let mut cluster = Cluster::new();
        let dead = cluster.hole();
        let (leader, leading) = cluster.server(Part::Lead);
        let (follower, following) = cluster.server(Part::Follow(Some(leader)));
        // Each attempt may take longer than the whole call: a client that
        // asked members in turn would spend its deadline on the dead one.
        let client = cluster.client(vec![dead, follower, leader], 60_000, 3_000);

        let started = Instant::now();
        let reply = client.call(stat()).await.unwrap();
        assert_eq!(reply, MetaReply::Done);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let ids: HashSet<RequestId> = leading
            .seen
            .lock()
            .unwrap()
            .iter()
            .chain(following.seen.lock().unwrap().iter())
            .copied()
            .collect();
        assert_eq!(ids.len(), 1, "attempts of one call carry one request id");

        let (to_leader, to_follower) = (leading.calls(), following.calls());
        client.call(stat()).await.unwrap();
        assert_eq!(leading.calls(), to_leader + 1);
        assert_eq!(
            following.calls(),
            to_follower,
            "a known leader is asked alone"
        );
    }

    #[tokio::test]
    async fn a_redirect_to_an_unlisted_leader_is_followed() {
        let mut cluster = Cluster::new();
        let dead = cluster.hole();
        let (leader, leading) = cluster.server(Part::Lead);
        let (follower, _) = cluster.server(Part::Follow(Some(leader)));
        let client = cluster.client(vec![dead, follower], 60_000, 3_000);
        client.call(stat()).await.unwrap();
        assert_eq!(leading.calls(), 1);
    }

    #[tokio::test]
    async fn the_deadline_bounds_every_attempt() {
        let mut cluster = Cluster::new();
        let members = vec![cluster.hole(), cluster.hole()];
        let client = cluster.client(members.clone(), 60_000, 300);
        let started = Instant::now();
        let err = client.call(stat()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.code, ErrorCode::Timeout, "{err}");
        assert!(err.message.contains(&members[0].to_string()), "{err}");
        assert!(err.message.contains("meta_call_deadline_ms"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_leader_is_left_after_the_grace() {
        let mut cluster = Cluster::new();
        let (first, old) = cluster.server(Part::Lead);
        let (second, new) = cluster.server(Part::Follow(Some(first)));
        let client = cluster.client(vec![first, second], 60_000, 10_000);
        client.call(stat()).await.unwrap();

        old.set(Part::Silent);
        new.set(Part::Lead);
        let started = Instant::now();
        client.call(stat()).await.unwrap();
        let took = started.elapsed();
        assert!(took >= LEADER_GRACE && took < LEADER_GRACE * 3, "{took:?}");

        let to_old = old.calls();
        client.call(stat()).await.unwrap();
        assert_eq!(old.calls(), to_old, "the new leader is remembered");
    }

    #[tokio::test]
    async fn members_naming_a_dead_leader_are_asked_again() {
        let mut cluster = Cluster::new();
        let dead = cluster.hole();
        let (b, member_b) = cluster.server(Part::Follow(Some(dead)));
        let (c, member_c) = cluster.server(Part::Follow(Some(dead)));
        let client = cluster.client(vec![dead, b, c], 60_000, 5_000);
        let elect = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            member_c.set(Part::Lead);
            member_b.set(Part::Follow(Some(c)));
        });
        let started = Instant::now();
        client.call(stat()).await.unwrap();
        assert!(
            started.elapsed() < LEADER_GRACE * 3,
            "{:?}",
            started.elapsed()
        );
        elect.await.unwrap();
    }

    #[tokio::test]
    async fn an_election_is_waited_out() {
        let mut cluster = Cluster::new();
        let (addr, member) = cluster.server(Part::Follow(None));
        let client = cluster.client(vec![addr], 60_000, 5_000);
        let elect = {
            let member = member.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                member.set(Part::Lead);
            })
        };
        client.call(stat()).await.unwrap();
        elect.await.unwrap();
        assert!(member.calls() > 1);
    }

    #[tokio::test]
    async fn the_leaders_refusal_is_the_answer() {
        let mut cluster = Cluster::new();
        let dead = cluster.hole();
        let (leader, leading) = cluster.server(Part::Refuse(ErrorCode::NotFound));
        let client = cluster.client(vec![dead, leader], 60_000, 5_000);
        let err = client.call(stat()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{err}");
        assert_eq!(leading.calls(), 1, "a refusal is not retried");
    }

    #[tokio::test]
    async fn any_call_takes_the_first_member_that_answers() {
        let mut cluster = Cluster::new();
        let dead = cluster.hole();
        let (addr, _) = cluster.server(Part::Lead);
        let client = cluster.client(vec![dead, addr], 60_000, 3_000);
        let message = MetaCall {
            request_id: RequestId::fresh(),
            op: stat(),
        };
        let started = Instant::now();
        client.any_call(&message).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_example_configuration_sets_the_timeouts() {
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/client.example.toml");
        let config: ClientConfig = tessera_proto::config::load(
            Some(&example),
            &[
                "io.meta_attempt_timeout_ms=60000".into(),
                "io.meta_call_deadline_ms=3000".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            MetaTimeouts::from_io(&config.io).unwrap(),
            MetaTimeouts {
                attempt: Duration::from_secs(60),
                deadline: Duration::from_secs(3),
            }
        );
        let plain: ClientConfig = tessera_proto::config::load(Some(&example), &[]).unwrap();
        assert_eq!(plain.io, IoOptions::default());
    }

    #[test]
    fn zero_timeouts_are_refused_by_name() {
        let io = IoOptions {
            meta_attempt_timeout_ms: 0,
            ..IoOptions::default()
        };
        let err = MetaTimeouts::from_io(&io).unwrap_err();
        assert!(err.message.contains("meta_attempt_timeout_ms"), "{err}");
        assert_eq!(
            MetaTimeouts::from_io(&IoOptions::default()).unwrap(),
            MetaTimeouts::default()
        );
    }
}
