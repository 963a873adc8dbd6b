//! The scheduler on hand-made cluster states: order by margin, the grace
//! period, rebuild planning, drains.
use super::*;
use crate::types::Command;
use tessera_proto::chunk::{DiskReport, LoadReport, PieceInfo};

fn disk() -> Vec<DiskReport> {
    vec![DiskReport {
        path: "/d".into(),
        capacity_bytes: 1 << 40,
        free_bytes: 1 << 40,
        reserve_bytes: 0,
        pieces: 0,
    }]
}

/// A state with `nodes` registered chunkservers and committed chunks
/// placed as given.
fn cluster(nodes: u64, chunks: &[(Policy, Vec<u64>)]) -> State {
    let mut state = State::new(Policy::Replicas(3), 0);
    for n in 1..=nodes {
        state
            .apply(&Command::Register {
                name: format!("c{n}"),
                address: format!("127.0.0.1:{n}"),
                labels: Default::default(),
                now_ns: 0,
            })
            .expect("register");
    }
    for (i, (policy, placed)) in chunks.iter().enumerate() {
        state.set_chunk(
            ChunkId(i as u64 + 1),
            Some(&ChunkRecord {
                policy: *policy,
                nodes: placed.iter().map(|n| NodeId(*n)).collect(),
                state: ChunkState::Committed { length: 1 << 20 },
                checksums: Vec::new(),
            }),
        );
    }
    state
}

/// A registry where `alive` nodes heartbeat and list every piece the
/// map places on them.
fn registry(state: &State, alive: &[u64], now: Instant) -> Registry {
    let mut registry = Registry::default();
    for n in alive {
        let node = NodeId(*n);
        registry.heartbeat(node, disk(), LoadReport::default(), now);
        let pieces: Vec<PieceInfo> = state
            .chunks_from(ChunkId::default(), usize::MAX)
            .into_iter()
            .flat_map(|(chunk, r)| {
                r.nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, holder)| **holder == node)
                    .map(|(index, _)| PieceInfo {
                        piece: PieceId {
                            chunk,
                            index: index as u8,
                        },
                        length: 1 << 20,
                        checksum: [0; 32],
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        registry.inventory_page(node, 1, &pieces, true, now);
    }
    registry
}

fn settings(down_after_s: u64, jobs_per_node: usize) -> RepairSettings {
    RepairSettings {
        down_after_s,
        jobs_per_node,
        ..RepairSettings::default()
    }
}

#[test]
fn margin_zero_goes_before_margin_one_even_when_slots_are_scarce() {
    // Nodes 1 and 2 are gone: chunks 1-10 keep one copy (margin 0),
    // chunks 11-20 two (margin 1).
    let mut chunks = Vec::new();
    for _ in 0..10 {
        chunks.push((Policy::Replicas(3), vec![1, 2, 3]));
    }
    for _ in 0..10 {
        chunks.push((Policy::Replicas(3), vec![1, 4, 5]));
    }
    let mut state = cluster(7, &chunks);
    let now = Instant::now();
    let registry = registry(&state, &[3, 4, 5, 6, 7], now);
    let mut healing = Healing::new(settings(0, 1), now);
    let mut repaired_first_margin_one = None;
    for pass in 0..40 {
        let views = healing.views(&state, &registry, now);
        let assessment = healing.assess(&state, &views, now);
        if assessment.queue.is_empty() {
            break;
        }
        let jobs = healing.plan(&state, &views, &assessment, 0);
        assert!(!jobs.is_empty(), "pass {pass} started nothing");
        for job in jobs {
            let margin_zero = job.chunk.0 <= 10;
            let gone = [NodeId(1), NodeId(2)];
            let still_zero = state
                .chunks_from(ChunkId::default(), usize::MAX)
                .into_iter()
                .map(|(_, r)| r)
                .filter(|r| r.nodes.iter().filter(|n| !gone.contains(n)).count() == 1)
                .count();
            if !margin_zero && repaired_first_margin_one.is_none() {
                repaired_first_margin_one = Some(still_zero);
            }
            let Ok(crate::types::Applied::Job(id)) =
                state.apply(&Command::StartJob { job: job.clone() })
            else {
                panic!("job refused: {job:?}");
            };
            // Done at once: the new pieces replace the lost ones.
            state
                .apply(&Command::FinishJob {
                    job: id,
                    sealed: job.pieces.clone(),
                })
                .expect("finish");
        }
    }
    assert_eq!(
        repaired_first_margin_one,
        Some(0),
        "a margin-1 chunk was repaired while margin-0 chunks waited"
    );
    let views = healing.views(&state, &registry, now);
    assert!(healing.assess(&state, &views, now).queue.is_empty());
}

#[test]
fn a_suspect_holder_is_waited_for_unless_the_chunk_is_at_its_last_margin() {
    let state = cluster(
        6,
        &[
            (Policy::Replicas(3), vec![1, 2, 3]),
            (Policy::Replicas(3), vec![1, 5, 6]),
            (Policy::Ec { data: 2, parity: 1 }, vec![1, 4, 5]),
        ],
    );
    let now = Instant::now();
    // Node 1 silent (suspect, grace 600 s); node 2 too.
    let registry = registry(&state, &[3, 4, 5, 6], now);
    let mut healing = Healing::new(settings(600, 4), now);
    let views = healing.views(&state, &registry, now);
    assert_eq!(views[&NodeId(1)].state_name(), "suspect");
    let assessment = healing.assess(&state, &views, now);
    // Chunk 1 is down to one copy: repaired now. Chunk 2 has two and
    // waits; chunk 3 (ec 2+1) has two of three, margin 0: now.
    let queued: Vec<u64> = assessment.queue.iter().map(|c| c.chunk.0).collect();
    assert_eq!(queued, vec![1, 3], "{:?}", assessment.queue);
    assert_eq!(assessment.status.degraded, 3);
    assert_eq!(assessment.status.endangered, 2);
    // Past the grace period everything goes.
    let later = now + Duration::from_secs(601);
    let registry = self::registry(&state, &[3, 4, 5, 6], later);
    let views = healing.views(&state, &registry, later);
    assert_eq!(views[&NodeId(1)].state_name(), "down");
    let assessment = healing.assess(&state, &views, later);
    assert_eq!(assessment.queue.len(), 3);
}

#[test]
fn erasure_coded_losses_become_one_rebuild_with_distinct_targets() {
    let state = cluster(
        8,
        &[(Policy::Ec { data: 4, parity: 2 }, vec![1, 2, 3, 4, 5, 6])],
    );
    let now = Instant::now();
    let registry = registry(&state, &[3, 4, 5, 6, 7, 8], now);
    let mut healing = Healing::new(settings(0, 4), now);
    let views = healing.views(&state, &registry, now);
    let assessment = healing.assess(&state, &views, now);
    let jobs = healing.plan(&state, &views, &assessment, 0);
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let mut targets: Vec<u64> = job.pieces.iter().map(|(_, n)| n.0).collect();
    targets.sort();
    assert_eq!(targets, vec![7, 8]);
    let JobSource::Rebuild { sources } = &job.source else {
        panic!("{job:?}")
    };
    assert_eq!(sources.len(), 4);
    assert!(job.pieces.iter().any(|(_, n)| *n == job.executor));
}

#[test]
fn a_drained_holder_is_a_source_not_redundancy() {
    let mut state = cluster(4, &[(Policy::Replicas(3), vec![1, 2, 3])]);
    state
        .apply(&Command::SetNodeAdmin {
            node: NodeId(1),
            state: Some(NodeAdminState::Drained),
        })
        .expect("drain");
    let now = Instant::now();
    let registry = registry(&state, &[1, 2, 3, 4], now);
    let mut healing = Healing::new(settings(600, 4), now);
    let views = healing.views(&state, &registry, now);
    let assessment = healing.assess(&state, &views, now);
    assert_eq!(assessment.queue.len(), 1);
    assert_eq!(assessment.queue[0].kind, JobKind::Drain);
    let jobs = healing.plan(&state, &views, &assessment, 0);
    assert_eq!(jobs[0].pieces, vec![(0, NodeId(4))]);
}
