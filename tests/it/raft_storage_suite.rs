//! openraft's storage conformance suite against netsy's log store and state machine.

use std::sync::{Arc, Mutex};

use netsy::mvcc::{Reader, Store};
use netsy::raft::state_machine::StateMachine;
use netsy::raft::wal::LogStore;
use netsy::raft::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(dir.path())?;
        let state = dir.path().join("state.db");
        let store = Store::open(&state).expect("state store");
        let sm = StateMachine::new(
            Arc::new(Mutex::new(store)),
            Reader::new(&state),
            &dir.path().join("snapshots"),
            netsy::raft::gate::ArchiveGate::new(false),
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage suite");
}
