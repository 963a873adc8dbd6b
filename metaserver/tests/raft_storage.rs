//! openraft's storage conformance suite against the real RocksDB log and
//! state machine: durability of votes and appends, truncation, purging,
//! snapshots built, installed and read back.

use std::sync::Arc;
use tessera_meta::log_store::{CF_LOG, CF_RAFT, LogStore};
use tessera_meta::sm_store::{CF_STATE, StateMachine};
use tessera_meta::types::{StorageError, TypeConfig};
use tessera_proto::meta::Policy;

struct Builder;

impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
    for Builder
{
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = Arc::new(
            rocksdb::DB::open_cf(&options, dir.path(), [CF_LOG, CF_RAFT, CF_STATE])
                .expect("open rocksdb"),
        );
        let log = LogStore::new(db.clone()).expect("log store");
        let sm = StateMachine::open(db, Policy::Replicas(1), 0, 1 << 20).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn the_rocksdb_store_passes_openraft_suite() {
    openraft::testing::Suite::test_all(Builder).expect("storage suite");
}
