//! The state database's WAL checkpointer, off the apply path (the store's commits do not
//! checkpoint; see `Store::checkpoint_in_background`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{MvccError, Reader, Store};

/// Above this many WAL pages, the writer copies the last few itself so the WAL starts over.
const WAL_RESTART_PAGES: i64 = 4096;
/// The reader passes until at most this many pages are left for the writer.
const WRITER_FINISH_PAGES: i64 = 256;
const MAX_READER_PASSES: usize = 4;

/// Copies the WAL into the main file every second until the task is dropped. Once the
/// WAL holds more than `WAL_RESTART_PAGES`, the writer copies the last few pages itself
/// so that the WAL starts over. A page written several times within the second is copied
/// once: under random-key writes a longer interval copies fewer pages (every 100 ms cost
/// 5–10% more CPU per write in a 3-member cluster). Neither the copies nor the commits
/// sync (see `mvcc::boot`): the kernel writes the pages out in its own time, and a page
/// rewritten meanwhile reaches the disk once.
pub async fn run(store: Arc<Mutex<Store>>, reader: Reader) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        if let Err(e) = reader.run(move |reader| pass(reader, &store)).await {
            tracing::warn!(error = %crate::error_chain(&e), "state database checkpoint failed");
        }
    }
}

/// Passes beside the writer until little is left, so that the writer (which holds up
/// applies meanwhile) copies only the frames of the last moment.
fn pass(reader: &Reader, store: &Mutex<Store>) -> Result<(), MvccError> {
    if copy_beside_writer(reader, WAL_RESTART_PAGES)? {
        return Ok(());
    }
    let mut store = store.lock().map_err(|_| MvccError::Storage("store lock poisoned".into()))?;
    store.finish_checkpoint()
}

/// Copies the WAL into the database file beside the writer, pass after pass, until at
/// most `WRITER_FINISH_PAGES` are left for the writer (or `MAX_READER_PASSES` passes).
/// Returns true, without more passes, once the WAL holds no more than `small` pages.
pub(super) fn copy_beside_writer(reader: &Reader, small: i64) -> Result<bool, MvccError> {
    for _ in 0..MAX_READER_PASSES {
        let (pages, copied) = reader.checkpoint()?;
        if pages <= small {
            return Ok(true);
        }
        if pages - copied <= WRITER_FINISH_PAGES {
            break;
        }
    }
    Ok(false)
}
