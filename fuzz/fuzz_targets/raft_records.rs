//! Raft records as the Raft log (`raft/`), the state database, local snapshots and archive segments
//! hold them (src/raft/codec): log entries, votes, log ids (the purge marker, the applied
//! id), memberships, snapshot metas, commands and results, and netsy 0.1's bincode/JSON
//! forms. Input: a selector byte, then the record. Every record that decodes re-encodes
//! to a fixed point; a netsy 0.1 record converts to one that does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsy::raft::codec::{self, command, legacy};
use netsy_fuzz::{fixed_point, select};

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 12) else { return };
    match kind {
        0 => {
            fixed_point(bytes, codec::decode_entry, codec::encode_entry);
        }
        1 => {
            fixed_point(bytes, codec::decode_vote, codec::encode_vote);
        }
        2 => {
            fixed_point(bytes, codec::decode_log_id, codec::encode_log_id);
        }
        3 => {
            fixed_point(bytes, codec::decode_membership, codec::encode_membership);
        }
        4 => {
            // The current form, or netsy 0.1's JSON (starting with `{`).
            fixed_point(bytes, codec::decode_snapshot_meta, codec::encode_snapshot_meta);
        }
        5 => {
            if let Some(c) = fixed_point(bytes, codec::decode_command, codec::encode_command) {
                assert_eq!(command::encoded_len(&c), codec::encode_command(&c).len(), "encoded_len");
            }
        }
        6 => {
            fixed_point(bytes, codec::decode_result, codec::encode_result);
        }
        7 => {
            if let Ok(e) = legacy::decode_entry(bytes) {
                fixed_point(&codec::encode_entry(&e), codec::decode_entry, codec::encode_entry).expect("converted entry");
            }
        }
        8 => {
            if let Ok(v) = legacy::decode_vote(bytes) {
                fixed_point(&codec::encode_vote(&v), codec::decode_vote, codec::encode_vote).expect("converted vote");
            }
        }
        9 => {
            if let Ok(id) = legacy::decode_log_id(bytes) {
                fixed_point(&codec::encode_log_id(&id), codec::decode_log_id, codec::encode_log_id).expect("converted log id");
            }
        }
        10 => {
            if let Ok(Some(id)) = legacy::decode_applied(bytes) {
                fixed_point(&codec::encode_log_id(&id), codec::decode_log_id, codec::encode_log_id).expect("converted applied id");
            }
        }
        _ => {
            if let Ok(m) = legacy::decode_membership(bytes) {
                fixed_point(&codec::encode_membership(&m), codec::decode_membership, codec::encode_membership)
                    .expect("converted membership");
            }
        }
    }
});
