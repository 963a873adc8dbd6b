//! `tessera admin`: cluster status, chunkservers, repair, metaserver
//! members, S3 keys and client sessions. Every command takes `--json` for scripts; the text
//! form is for people.

use crate::keys;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use tessera_client::MetaClient;
use tessera_gateway::grants::{self, Perms};
use tessera_proto::NodeId;
use tessera_proto::meta::{
    Fsck, FsckReply, MetaOp, MetaReply, NodeAction, NodeAdmin, RedundancyStatus, RepairQueue,
    RepairQueueReply, Status, StatusReply,
};
use tessera_proto::rpc::{CallOptions, Peer};
use tessera_proto::session::{CloseSession, ListSessions, SessionId};
use tessera_proto::tls::Role;

/// Options every admin command shares.
#[derive(Args, Clone)]
pub struct Common {
    /// Client configuration (client.toml) naming the metaservers.
    #[arg(long, env = "TESSERA_CONFIG")]
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Members, leader, chunkservers with their state and space, and the
    /// redundancy table: chunks by healthy pieces against pieces needed,
    /// degraded and misplaced chunks, repair rate and time to full
    /// redundancy.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Chunkservers: list, drain, undrain, remove.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Cross-check the namespace, the chunk map and the chunkservers'
    /// inventories: unreadable, last-margin, under-replicated and orphaned
    /// chunks, extents pointing nowhere, pieces no chunk places, and the
    /// files whose bytes are at risk. Reads only (repair is the healing
    /// loop's); exits 1 when it finds anything.
    Fsck {
        #[command(flatten)]
        common: Common,
        /// Entries of each list to show at most (up to 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The repair queue and the jobs running now.
    Repair {
        #[command(flatten)]
        common: Common,
        /// Queued chunks to show at most.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Metaserver group membership (needs a metaserver certificate).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// S3 access keys, kept in the metaservers' replicated state.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Client sessions: every mount, gateway and writing command holds one.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
}

#[derive(Subcommand)]
pub enum SessionCommand {
    /// Every live session: id, kind, host, pid, mount point, age, time
    /// since its last renewal, open handles, locks held (and waiting).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// End a session now, with the cleanup of an expiry: its open handles
    /// are released (unlinked files it kept go), its locks released (their
    /// waiters granted) and its temporary files deleted. The client gets an error
    /// on what it held and opens a new session.
    Evict {
        id: u64,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Every registered chunkserver with its state (up, suspect, down,
    /// drained, removed), space, and the pieces the chunk map still places
    /// on it.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Move every piece off a chunkserver while it keeps serving reads;
    /// new pieces stop going to it.
    Drain {
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Let a drained chunkserver take new pieces again.
    Undrain {
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Forget a chunkserver. Refused while it holds the only readable
    /// pieces of any chunk; drain it first.
    Remove {
        id: u64,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key and print its id and secret (shown only this once).
    /// It reaches the buckets it creates and those granted to it with
    /// `allow`, or every bucket with --all-buckets.
    Create {
        #[command(flatten)]
        common: Common,
        /// What the key is for, shown by `list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Reach every bucket (an administrator's key), not only granted ones.
        #[arg(long)]
        all_buckets: bool,
    },
    /// Grant a key read, write or owner rights on a bucket (added to what it
    /// holds there).
    Allow {
        id: String,
        bucket: String,
        #[command(flatten)]
        perms: PermFlags,
        #[command(flatten)]
        common: Common,
    },
    /// Withdraw rights on a bucket from a key (all of them without flags).
    Deny {
        id: String,
        bucket: String,
        #[command(flatten)]
        perms: PermFlags,
        #[command(flatten)]
        common: Common,
    },
    /// Make a key reach every bucket (`all`) or only its grants (`granted`);
    /// keys from before grants reach every bucket until narrowed.
    Scope {
        id: String,
        #[arg(value_parser = ["all", "granted"])]
        scope: String,
        #[command(flatten)]
        common: Common,
    },
    /// The buckets a key reaches and what it may do in each.
    Info {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// List keys (ids, descriptions, creation times; never secrets).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Delete a key: requests signed with it are refused from then on.
    Delete {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
pub struct PermFlags {
    /// Read objects, listings and the bucket's settings.
    #[arg(long)]
    read: bool,
    /// Write and delete objects, multipart uploads, object tags.
    #[arg(long)]
    write: bool,
    /// Change the bucket's settings (ACL, CORS, versioning) and delete it.
    #[arg(long)]
    owner: bool,
}

impl PermFlags {
    fn perms(&self) -> Perms {
        Perms {
            read: self.read,
            write: self.write,
            owner: self.owner,
        }
    }
}

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Add a metaserver: it joins as a learner, catches up (from a snapshot if
    /// needed), then becomes a voter unless --learner.
    Add {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        node: u64,
        #[arg(long)]
        address: String,
        #[arg(long)]
        learner: bool,
    },
    /// Remove a metaserver from the group.
    Remove {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        node: u64,
    },
}

async fn connect(common: &Common) -> Result<MetaClient> {
    let config = tessera_proto::config::load(Some(&common.config), &[])
        .with_context(|| format!("load client config {}", common.config.display()))?;
    Ok(MetaClient::from_config(&config).await?)
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A line of JSON for commands whose text answer is a sentence.
#[derive(Serialize)]
struct Done<'a> {
    ok: bool,
    message: &'a str,
}

fn report(common: &Common, message: &str) -> Result<()> {
    if common.json {
        print_json(&Done { ok: true, message })
    } else {
        println!("{message}");
        Ok(())
    }
}

pub async fn run(command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Status { common } => {
            let client = connect(&common).await?;
            let status = leader_status(&client).await?;
            if common.json {
                let mut value = serde_json::to_value(&status)?;
                value["chunkservers"] = chunkservers_json(&status)?;
                print_json(&value)
            } else {
                print_status(&status);
                Ok(())
            }
        }
        AdminCommand::Node { command } => run_node(command).await,
        AdminCommand::Repair { common, limit } => {
            let client = connect(&common).await?;
            let reply = client
                .leader_call(&RepairQueue { limit })
                .await
                .context("ask the metaserver leader for the repair queue")?;
            if common.json {
                print_json(&reply)
            } else {
                print_repair(&reply);
                Ok(())
            }
        }
        AdminCommand::Fsck { common, limit } => {
            let client = connect(&common).await?;
            let reply = client
                .leader_call(&Fsck { limit })
                .await
                .context("ask the metaserver leader for a fsck")?;
            if common.json {
                print_json(&reply)?;
            } else {
                print_fsck(&reply);
            }
            if reply.found_problems() {
                bail!("fsck found problems (listed above)");
            }
            Ok(())
        }
        AdminCommand::Member { command } => run_member(command).await,
        AdminCommand::Key { command } => run_key(command).await,
        AdminCommand::Session { command } => run_session(command).await,
    }
}

/// Chunkservers for scripts: each with its `id` (the node id the `node`
/// commands take) and `name`.
fn chunkservers_json(status: &StatusReply) -> Result<serde_json::Value> {
    let mut list = Vec::new();
    for cs in &status.chunkservers {
        let mut value = serde_json::to_value(cs)?;
        value["id"] = cs.node.0.into();
        list.push(value);
    }
    Ok(serde_json::Value::Array(list))
}

/// Status from the leader, which alone knows chunkserver liveness and
/// redundancy; a follower's answer names it.
async fn leader_status(client: &MetaClient) -> Result<StatusReply> {
    let status = client
        .any_call(&Status)
        .await
        .context("ask the metaservers for status (are they running? is client.toml right?)")?;
    let leader_address = status
        .leader
        .filter(|leader| *leader != status.answered_by)
        .and_then(|leader| status.members.iter().find(|m| m.node == leader))
        .and_then(|m| m.address.parse().ok());
    // Bounded by the client's own deadlines: a leader that died since the
    // follower last heard from it must not hold the command up.
    let timeouts = client.timeouts();
    let options = CallOptions {
        timeout: timeouts.attempt.min(timeouts.deadline),
        retries: 0,
        request_id: None,
    };
    Ok(match leader_address {
        Some(addr) => client
            .rpc()
            .call(Peer::new(addr, Role::Meta), &Status, options)
            .await
            .unwrap_or(status),
        None => status,
    })
}

async fn run_node(command: NodeCommand) -> Result<()> {
    let (common, id, action) = match command {
        NodeCommand::List { common } => {
            let client = connect(&common).await?;
            let status = leader_status(&client).await?;
            if common.json {
                return print_json(&chunkservers_json(&status)?);
            }
            print_chunkservers(&status);
            return Ok(());
        }
        NodeCommand::Drain { id, common } => (common, id, NodeAction::Drain),
        NodeCommand::Undrain { id, common } => (common, id, NodeAction::Undrain),
        NodeCommand::Remove { id, common } => (common, id, NodeAction::Remove),
    };
    let client = connect(&common).await?;
    let reply = client
        .leader_call(&NodeAdmin {
            node: NodeId(id),
            action,
        })
        .await
        .with_context(|| format!("{action:?} chunkserver {id}").to_lowercase())?;
    report(&common, &reply.message)
}

async fn run_session(command: SessionCommand) -> Result<()> {
    match command {
        SessionCommand::List { common } => {
            let client = connect(&common).await?;
            let sessions = client
                .leader_call(&ListSessions)
                .await
                .context("list sessions")?;
            if common.json {
                return print_json(&sessions);
            }
            let now_ns = tessera_proto::token::unix_now_ns();
            println!(
                "{:>8}  {:<8} {:<20} {:>8}  {:>9}  {:>9}  {:>7}  {:>9}  WHERE",
                "ID", "KIND", "HOST", "PID", "AGE", "RENEWED", "HANDLES", "LOCKS"
            );
            for s in &sessions {
                let age_s = now_ns.saturating_sub(s.opened_ns).max(0) / 1_000_000_000;
                println!(
                    "{:>8}  {:<8} {:<20} {:>8}  {:>8}s  {:>7}ms  {:>7}  {:>9}  {}",
                    s.id.0,
                    s.info.kind.name(),
                    s.info.host,
                    s.info.pid,
                    age_s,
                    s.renewed_ms_ago,
                    s.handles,
                    if s.waiting > 0 {
                        format!("{}+{}w", s.locks, s.waiting)
                    } else {
                        s.locks.to_string()
                    },
                    s.info.mount_point
                );
            }
            println!("{} session(s)", sessions.len());
            Ok(())
        }
        SessionCommand::Evict { id, common } => {
            let client = connect(&common).await?;
            client
                .leader_call(&CloseSession {
                    id: SessionId(id),
                    evict: true,
                })
                .await
                .with_context(|| format!("evict session {id}"))?;
            report(
                &common,
                &format!("session {id} evicted; what it held is released"),
            )
        }
    }
}

async fn run_member(command: MemberCommand) -> Result<()> {
    match command {
        MemberCommand::Add {
            common,
            node,
            address,
            learner,
        } => {
            let client = connect(&common).await?;
            let message = tessera_proto::meta::AddMember {
                node: NodeId(node),
                address: address.clone(),
                voter: !learner,
            };
            client
                .leader_call(&message)
                .await
                .context("add the member")?;
            let role = if learner { "learner" } else { "voter" };
            report(
                &common,
                &format!("added metaserver {node} at {address} as a {role}"),
            )
        }
        MemberCommand::Remove { common, node } => {
            let client = connect(&common).await?;
            let message = tessera_proto::meta::RemoveMember { node: NodeId(node) };
            client
                .leader_call(&message)
                .await
                .context("remove the member")?;
            report(&common, &format!("removed metaserver {node}"))
        }
    }
}

#[derive(Serialize)]
struct CreatedKey<'a> {
    id: &'a str,
    secret: &'a str,
}

#[derive(Serialize)]
struct KeyListed<'a> {
    id: &'a str,
    description: &'a str,
    created_ns: i64,
    all_buckets: bool,
}

#[derive(Serialize)]
struct KeyGrant {
    bucket: String,
    read: bool,
    write: bool,
    owner: bool,
}

async fn run_key(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Create {
            common,
            description,
            all_buckets,
        } => {
            let client = connect(&common).await?;
            let (id, secret) = keys::create(&client, &description, all_buckets).await?;
            if common.json {
                return print_json(&CreatedKey {
                    id: &id,
                    secret: &secret,
                });
            }
            println!("access key id      {id}");
            println!("secret access key  {secret}");
            println!("the secret is not shown again; keep it somewhere safe");
            if !all_buckets {
                println!(
                    "it reaches the buckets it creates; grant others with `tessera admin key allow {id} BUCKET --read --write`"
                );
            }
        }
        KeyCommand::List { common } => {
            let client = connect(&common).await?;
            let reply = client
                .call(MetaOp::ListScopedAccessKeys)
                .await
                .context("list access keys")?;
            let MetaReply::ScopedAccessKeys(keys) = reply else {
                bail!("the metaserver answered {reply:?} to a key listing");
            };
            if common.json {
                let listed: Vec<KeyListed> = keys
                    .iter()
                    .map(|k| KeyListed {
                        id: &k.info.id,
                        description: &k.info.description,
                        created_ns: k.info.created_ns,
                        all_buckets: k.all_buckets,
                    })
                    .collect();
                return print_json(&listed);
            }
            if keys.is_empty() {
                println!("no access keys; create one with `tessera admin key create`");
            }
            for key in keys {
                let created = std::time::UNIX_EPOCH
                    + std::time::Duration::from_nanos(key.info.created_ns.max(0) as u64);
                let age = std::time::SystemTime::now()
                    .duration_since(created)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let scope = if key.all_buckets {
                    "all buckets"
                } else {
                    "granted buckets"
                };
                println!(
                    "{}  {scope:<15}  created {} s ago  {}",
                    key.info.id, age, key.info.description
                );
            }
        }
        KeyCommand::Delete { id, common } => {
            let client = connect(&common).await?;
            client
                .call(MetaOp::DeleteAccessKey { id: id.clone() })
                .await
                .with_context(|| format!("delete access key {id}"))?;
            report(&common, &format!("deleted access key {id}"))?;
        }
        KeyCommand::Allow {
            id,
            bucket,
            perms,
            common,
        } => {
            let perms = perms.perms();
            if perms.is_empty() {
                bail!("say what to allow: --read, --write and/or --owner");
            }
            let client = connect(&common).await?;
            known_key(&client, &id).await?;
            let now = grants::allow(&client, &id, &bucket, perms)
                .await
                .with_context(|| format!("grant {id} on bucket {bucket}"))?;
            report(
                &common,
                &format!(
                    "{id} may now {} bucket {bucket} (gateways see it within a second)",
                    describe(now)
                ),
            )?;
        }
        KeyCommand::Deny {
            id,
            bucket,
            perms,
            common,
        } => {
            let mut perms = perms.perms();
            if perms.is_empty() {
                perms = Perms::ALL;
            }
            let client = connect(&common).await?;
            let now = grants::deny(&client, &id, &bucket, perms)
                .await
                .with_context(|| format!("withdraw {id}'s rights on bucket {bucket}"))?;
            let left = if now.is_empty() {
                format!("{id} no longer reaches bucket {bucket}")
            } else {
                format!("{id} may still {} bucket {bucket}", describe(now))
            };
            report(
                &common,
                &format!("{left} (gateways see it within a second)"),
            )?;
        }
        KeyCommand::Scope { id, scope, common } => {
            let client = connect(&common).await?;
            let all_buckets = scope == "all";
            client
                .call(MetaOp::SetAccessKeyScope {
                    id: id.clone(),
                    all_buckets,
                })
                .await
                .with_context(|| format!("change the scope of access key {id}"))?;
            let what = if all_buckets {
                "every bucket"
            } else {
                "only the buckets granted to it"
            };
            report(&common, &format!("{id} now reaches {what}"))?;
        }
        KeyCommand::Info { id, common } => {
            let client = connect(&common).await?;
            let all_buckets = known_key(&client, &id).await?;
            let held: Vec<KeyGrant> = grants::all_grants(&client)
                .await
                .context("read the buckets' grants")?
                .into_iter()
                .filter(|(_, key, _)| *key == id)
                .map(|(bucket, _, p)| KeyGrant {
                    bucket,
                    read: p.read,
                    write: p.write,
                    owner: p.owner,
                })
                .collect();
            if common.json {
                return print_json(&serde_json::json!({
                    "id": id,
                    "all_buckets": all_buckets,
                    "grants": held,
                }));
            }
            if all_buckets {
                println!("{id} reaches every bucket");
            }
            if held.is_empty() && !all_buckets {
                println!("{id} reaches no bucket yet");
            }
            for grant in held {
                let perms = Perms {
                    read: grant.read,
                    write: grant.write,
                    owner: grant.owner,
                };
                println!("{:<64}  {}", grant.bucket, describe(perms));
            }
        }
    }
    Ok(())
}

/// Whether the key reaches every bucket; an error naming it if unknown.
async fn known_key(client: &tessera_client::MetaClient, id: &str) -> Result<bool> {
    match client
        .call(MetaOp::GetScopedAccessKey { id: id.to_string() })
        .await
        .with_context(|| format!("look up access key {id} (see `tessera admin key list`)"))?
    {
        MetaReply::ScopedAccessKey { all_buckets, .. } => Ok(all_buckets),
        other => bail!("the metaserver answered {other:?} to a key lookup"),
    }
}

fn describe(perms: Perms) -> String {
    let mut out = Vec::new();
    if perms.read {
        out.push("read");
    }
    if perms.write {
        out.push("write");
    }
    if perms.owner {
        out.push("own");
    }
    out.join(", ")
}

fn print_status(status: &StatusReply) {
    let leader = status
        .leader
        .map(|l| l.0.to_string())
        .unwrap_or_else(|| "none".into());
    let or_dash = |v: Option<u64>| v.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "metaservers (answered by {}, leader {leader}, term {}, commit index {}, applied {})",
        status.answered_by.0,
        status.term,
        or_dash(status.commit_index),
        or_dash(status.applied_index),
    );
    for member in &status.members {
        println!(
            "  {:>4}  {:<22} {:<9} matched {:<8} last contact {}",
            member.node.0,
            member.address,
            member.role,
            or_dash(member.matched_index),
            member
                .last_contact_ms
                .map(|ms| format!("{ms} ms ago"))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "namespace: {} inodes, {} MiB in files",
        status.namespace.inodes,
        status.namespace.file_bytes >> 20
    );
    print_chunkservers(status);
    if status.leader == Some(status.answered_by) {
        print_redundancy(&status.redundancy);
    }
}

fn print_chunkservers(status: &StatusReply) {
    let from_leader = status.leader == Some(status.answered_by);
    if from_leader {
        println!("chunkservers");
    } else {
        println!("chunkservers (liveness and space are known to the leader only)");
    }
    for cs in &status.chunkservers {
        println!(
            "  {:>4}  {:<12} {:<22} {:<8} free {:>8} MiB of {:>8} MiB  pieces {:>6}  mapped {:>6}  rack {:?}",
            cs.node.0,
            cs.name,
            cs.address,
            if from_leader { cs.state.as_str() } else { "?" },
            cs.free_bytes >> 20,
            cs.capacity_bytes >> 20,
            cs.pieces,
            cs.mapped_pieces,
            cs.rack
        );
    }
}

/// The redundancy matrix: one row per policy, one column per count of
/// healthy pieces, as MooseFS's `mfscli -SIC` shows it.
fn print_redundancy(r: &RedundancyStatus) {
    println!(
        "redundancy: {} chunks, {} degraded, {} one failure from loss, {} unreadable, {} misplaced",
        r.chunks, r.degraded, r.endangered, r.unavailable, r.misplaced
    );
    let widest = r.rows.iter().map(|row| row.chunks.len()).max().unwrap_or(0);
    if widest > 0 {
        let header: String = (0..widest).map(|p| format!("{p:>8}")).collect();
        println!("  {:<12} {:>6}  healthy pieces:{header}", "policy", "needs");
        for row in &r.rows {
            let cells: String = row.chunks.iter().map(|c| format!("{c:>8}")).collect();
            println!(
                "  {:<12} {:>6}  {:<15}{cells}",
                row.policy.to_string(),
                row.needed,
                ""
            );
        }
    }
    let rate = r.repair_bytes_per_s / (1024.0 * 1024.0);
    let eta = match r.eta_s {
        Some(s) => format!("{s} s to full redundancy"),
        None if r.degraded == 0 => "fully redundant".into(),
        None => "no repair progress measured yet".into(),
    };
    println!(
        "repair: {} chunks queued, {} jobs running, {rate:.1} MiB/s, {eta}",
        r.queue_length, r.jobs_running
    );
}

fn print_fsck(reply: &FsckReply) {
    println!(
        "checked {} chunks and {} extents{}",
        reply.chunks,
        reply.extents,
        if reply.inventories_complete {
            ""
        } else {
            " (a live chunkserver has not reported its inventory yet: its pieces counted unverified)"
        }
    );
    let rows = [
        ("unreadable chunks", reply.unreadable),
        ("chunks at their last margin", reply.last_margin),
        ("under-replicated chunks", reply.under_replicated),
        ("orphaned chunks", reply.orphaned_chunks),
        ("extents missing their chunk", reply.dangling_extents),
        ("orphaned pieces", reply.orphaned_pieces),
        ("files at risk", reply.files_at_risk),
    ];
    for (what, count) in rows {
        println!("  {what:<28} {count}");
    }
    if !reply.chunk_list.is_empty() {
        println!("chunks:");
        for c in &reply.chunk_list {
            println!(
                "  {}  {:<9} held {}/{} (needs {})  {}",
                c.chunk,
                c.policy.to_string(),
                c.held,
                c.width,
                c.needed,
                c.problem
            );
        }
    }
    if !reply.file_list.is_empty() {
        println!("files:");
        for f in &reply.file_list {
            let path = f.path.as_deref().unwrap_or("(no path found)");
            println!("  inode {}  {}  {}  {}", f.ino.0, path, f.chunk, f.problem);
        }
    }
    if !reply.piece_list.is_empty() {
        println!("orphaned pieces:");
        for (node, piece) in &reply.piece_list {
            println!("  node {}  {}", node.0, piece);
        }
    }
    if reply.truncated {
        println!("(lists cut short; --limit shows more, up to 200 of each)");
    }
    if !reply.found_problems() {
        println!("no problems found");
    }
}

fn print_repair(reply: &RepairQueueReply) {
    print_redundancy(&reply.redundancy);
    if reply.running.is_empty() {
        println!("no jobs running");
    } else {
        println!("running:");
        for job in &reply.running {
            let targets: Vec<String> = job.targets.iter().map(|t| t.0.to_string()).collect();
            println!(
                "  job {:>6}  {:<10} {}  pieces {:?} -> nodes {}  on node {}  for {} s",
                job.job,
                job.kind,
                job.chunk,
                job.pieces,
                targets.join(","),
                job.executor.0,
                job.age_ms / 1000
            );
        }
    }
    println!(
        "queued: {} (showing {})",
        reply.queue_length,
        reply.queued.len()
    );
    for q in &reply.queued {
        println!(
            "  {}  {:<10} {:<9} margin {:>2}  pieces {:?}  waiting {} s",
            q.chunk,
            q.kind,
            q.policy.to_string(),
            q.margin,
            q.pieces,
            q.waiting_ms / 1000
        );
    }
}
