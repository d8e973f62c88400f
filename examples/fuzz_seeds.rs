//! Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from netsy's own
//! encoders, so each target starts from real records: `cargo run --example fuzz_seeds --
//! fuzz/corpus`. Each seed is the target's selector byte followed by one record (see the
//! target's doc comment in fuzz/fuzz_targets/). Deterministic: the same netsy writes the
//! same seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use netsy::archive::manifest::{ClusterManifest, Member, Members, NodeRecord};
use netsy::archive::segment;
use netsy::archive::snapshot::{self, SnapshotHeader};
use netsy::core::forward::wire as errors;
use netsy::core::CoreError;
use netsy::mesh::{canonical, keys, models, timefmt};
use netsy::mvcc::validate::InvalidRequest;
use netsy::mvcc::{Command, CommandResult, MvccError};
use netsy::proto::etcdserverpb::{
    compare, request_op, AlarmMember, AlarmType, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantResponse, PutRequest, PutResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use netsy::proto::peer as wire;
use netsy::raft::codec::{self, command};
use netsy::raft::{LogId, NodeId, PeerNode, TypeConfig};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership, StoredMembership, Vote};
use prost::Message;
use serde_json::json;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Corpus {
    dir: PathBuf,
    n: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Result<Corpus> {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Corpus { dir, n: 0 })
    }

    /// One seed: `selector` then `bytes`.
    fn add(&mut self, selector: u8, bytes: &[u8]) -> Result {
        let mut seed = vec![selector];
        seed.extend_from_slice(bytes);
        self.add_raw(&seed)
    }

    fn add_raw(&mut self, seed: &[u8]) -> Result {
        self.n += 1;
        std::fs::write(self.dir.join(format!("seed-{:03}", self.n)), seed)?;
        Ok(())
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership<NodeId, PeerNode> {
    let node = |name: &str, member_id: u64| PeerNode {
        name: name.into(),
        member_id,
        peer_url: format!("https://{name}:2381"),
        client_url: format!("https://{name}:2378"),
    };
    let voters: BTreeSet<NodeId> = [1, 2].into_iter().collect();
    let nodes: BTreeMap<NodeId, PeerNode> = [(1, node("netsy-0", 0xa1)), (2, node("netsy-1", 0xb2)), (3, node("netsy-2", 0xc3))]
        .into_iter()
        .collect();
    Membership::new(vec![voters], nodes)
}

fn commands() -> Vec<Command> {
    let put = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    };
    vec![
        Command::Put(PutRequest {
            key: b"/registry/pods/default/a".to_vec(),
            value: b"v1".to_vec(),
            lease: 7,
            prev_kv: true,
            ..Default::default()
        }),
        Command::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            prev_kv: true,
        }),
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: b"k".to_vec(),
                range_end: vec![],
                target_union: Some(compare::TargetUnion::ModRevision(3)),
            }],
            success: vec![put("k")],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![],
                    success: vec![put("j")],
                    failure: vec![],
                })),
            }],
        }),
        Command::Compact(CompactionRequest {
            revision: 5,
            physical: true,
        }),
        Command::LeaseGrant { id: 42, ttl: 60 },
        Command::LeaseRevoke { id: 42 },
        Command::Alarm {
            activate: true,
            alarm: AlarmMember {
                member_id: 9,
                alarm: AlarmType::Nospace as i32,
            },
        },
    ]
}

fn results() -> Vec<CommandResult> {
    let header = Some(ResponseHeader {
        revision: 7,
        ..Default::default()
    });
    vec![
        CommandResult::Put(PutResponse { header, prev_kv: None }),
        CommandResult::DeleteRange(DeleteRangeResponse {
            header,
            deleted: 2,
            prev_kvs: vec![],
        }),
        CommandResult::Txn(TxnResponse {
            header,
            succeeded: true,
            responses: vec![],
        }),
        CommandResult::Compact(CompactionResponse { header }),
        CommandResult::LeaseGrant(LeaseGrantResponse {
            header,
            id: 42,
            ttl: 60,
            error: String::new(),
        }),
        CommandResult::Alarm(vec![AlarmMember {
            member_id: 9,
            alarm: AlarmType::Nospace as i32,
        }]),
        CommandResult::Empty { revision: 3 },
        CommandResult::Error(MvccError::Compacted),
        CommandResult::Error(MvccError::Invalid(InvalidRequest::DuplicateKey)),
        CommandResult::Error(MvccError::Storage("disk I/O error".into())),
    ]
}

fn entries() -> Vec<Entry<TypeConfig>> {
    vec![
        Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2, 1, 2),
            payload: EntryPayload::Normal(netsy::raft::Batch::new(commands(), 1_764_633_600_000)),
        },
        Entry {
            log_id: log_id(2, 1, 3),
            payload: EntryPayload::Membership(membership()),
        },
    ]
}

fn snapshot_meta() -> codec::SnapshotMeta {
    codec::SnapshotMeta {
        last_log_id: Some(log_id(3, 2, 40)),
        last_membership: StoredMembership::new(Some(log_id(2, 1, 3)), membership()),
        snapshot_id: "3-2-40-1".into(),
    }
}

fn raft_records(root: &Path) -> Result {
    let mut c = Corpus::new(root, "raft_records")?;
    for e in entries() {
        c.add(0, &codec::encode_entry(&e))?;
        c.add(7, &bincode::serialize(&e)?)?;
    }
    let vote = Vote::new_committed(4, 2);
    c.add(1, &codec::encode_vote(&vote))?;
    c.add(8, &bincode::serialize(&vote)?)?;
    c.add(2, &codec::encode_log_id(&log_id(3, 2, 40)))?;
    c.add(9, &bincode::serialize(&log_id(3, 2, 40))?)?;
    c.add(10, &bincode::serialize(&Some(log_id(3, 2, 40)))?)?;
    let stored = StoredMembership::new(Some(log_id(2, 1, 3)), membership());
    c.add(3, &codec::encode_membership(&stored))?;
    c.add(11, &bincode::serialize(&stored)?)?;
    c.add(4, &codec::encode_snapshot_meta(&snapshot_meta()))?;
    // netsy 0.1's local snapshot meta: JSON of openraft's struct.
    c.add(4, &serde_json::to_vec(&snapshot_meta())?)?;
    for cmd in commands() {
        c.add(5, &codec::encode_command(&cmd))?;
    }
    for r in results() {
        c.add(6, &codec::encode_result(&r))?;
    }
    Ok(())
}

fn peer_payloads(root: &Path) -> Result {
    let mut c = Corpus::new(root, "peer_payloads")?;
    let vote = Vote::new_committed(4, 2);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(1, 1, 1)),
        entries: entries(),
        leader_commit: Some(log_id(2, 1, 2)),
    };
    c.add(0, &codec::append_request_to_wire(3, &append).encode_to_vec())?;
    let vote_req = VoteRequest::<NodeId> {
        vote: Vote::new(5, 3),
        last_log_id: Some(log_id(4, 2, 9)),
    };
    c.add(1, &codec::vote_request_to_wire(2, &vote_req).encode_to_vec())?;
    let snap = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: snapshot_meta(),
        offset: 0,
        data: b"SQLite format 3\0".to_vec(),
        done: false,
    };
    c.add(2, &codec::snapshot_request_to_wire(3, &snap).encode_to_vec())?;
    let replies: [codec::AppendResult; 5] = [
        Ok(AppendEntriesResponse::Success),
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 1, 2)))),
        Ok(AppendEntriesResponse::Conflict),
        Ok(AppendEntriesResponse::HigherVote(Vote::new(6, 1))),
        Err(RaftError::Fatal(Fatal::Stopped)),
    ];
    for r in &replies {
        c.add(3, &codec::append_reply_to_wire(r).encode_to_vec())?;
    }
    let vote_reply: codec::VoteResult = Ok(VoteResponse {
        vote: Vote::new(5, 3),
        vote_granted: true,
        last_log_id: Some(log_id(4, 2, 9)),
    });
    c.add(4, &codec::vote_reply_to_wire(&vote_reply).encode_to_vec())?;
    c.add(
        4,
        &codec::vote_reply_to_wire(&Err(RaftError::Fatal(Fatal::Panicked))).encode_to_vec(),
    )?;
    let snap_reply: codec::SnapshotResult = Ok(InstallSnapshotResponse { vote });
    c.add(5, &codec::snapshot_reply_to_wire(&snap_reply).encode_to_vec())?;
    for (i, cmd) in commands().iter().enumerate() {
        let p = wire::Proposal {
            id: i as u64,
            command: codec::encode_command(cmd),
        };
        c.add(6, &p.encode_to_vec())?;
    }
    for (i, r) in results().iter().enumerate() {
        let p = wire::ProposalResult {
            id: i as u64,
            result: codec::encode_result(r),
            index: 10 + i as u64,
            ..Default::default()
        };
        c.add(7, &p.encode_to_vec())?;
    }
    let failed = wire::ProposalResult {
        id: 1,
        error: Some(errors::to_pb(&CoreError::Apply(MvccError::LeaseNotFound))),
        ..Default::default()
    };
    c.add(7, &failed.encode_to_vec())?;
    for e in [
        CoreError::Apply(MvccError::Invalid(InvalidRequest::TooManyOps)),
        CoreError::RequestTooLarge { size: 3, limit: 2 },
        CoreError::NoLeader,
        CoreError::LeaderChanged,
        CoreError::Leader("the leader's disk is full".into()),
    ] {
        c.add(8, &codec::frame(&errors::to_pb(&e)))?;
    }
    // The length the write stream computes agrees with the encoder.
    assert!(commands().iter().all(|c| command::encoded_len(c) == codec::encode_command(c).len()));
    Ok(())
}

fn segments(root: &Path) -> Result {
    let mut c = Corpus::new(root, "segment")?;
    let frame = |e: &Entry<TypeConfig>, bytes: Vec<u8>| segment::Frame::new(e.log_id.index, 1_764_633_600_000 + e.log_id.index, bytes);
    let current: Vec<segment::Frame> = entries().iter().map(|e| frame(e, codec::encode_entry(e))).collect();
    let legacy: Vec<segment::Frame> = entries()
        .iter()
        .map(|e| Ok(frame(e, bincode::serialize(e)?)))
        .collect::<Result<_>>()?;
    let small: Vec<segment::Frame> = (5..=9)
        .map(|i| segment::Frame::new(i, 0, format!("entry {i}").into_bytes()))
        .collect();
    for batch in [&current, &small] {
        let object = segment::encode(batch)?;
        c.add(0, &object)?;
        c.add(1, &object)?;
    }
    // Frames before compression: selector 2, a magic choice (0: the current format,
    // with times; 1: netsy 0.1's bincode entries, 2: netsy 0.2's, both without times),
    // first and last, the frames.
    for (magic, batch) in [(0u8, &current), (1, &legacy), (2, &current), (0, &small)] {
        let mut seed = vec![magic];
        seed.extend_from_slice(&batch[0].index.to_le_bytes());
        seed.extend_from_slice(&batch[batch.len() - 1].index.to_le_bytes());
        for f in batch.iter() {
            seed.extend_from_slice(&(f.entry.len() as u32).to_le_bytes());
            seed.extend_from_slice(&crc32c::crc32c(&f.entry).to_le_bytes());
            seed.extend_from_slice(&f.index.to_le_bytes());
            if magic == 0 {
                seed.extend_from_slice(&f.unix_ms.to_le_bytes());
            }
            seed.extend_from_slice(&f.entry);
        }
        c.add(2, &seed)?;
    }
    let name = segment::SegmentName {
        epoch: 3,
        first: 11,
        last: 20,
    };
    c.add(3, name.path().as_ref().as_bytes())?;
    Ok(())
}

fn snapshots(root: &Path, scratch: &Path) -> Result {
    let mut c = Corpus::new(root, "snapshot_header")?;
    let db = scratch.join("state.db");
    let content = b"SQLite format 3\0 a small stand-in for a state database".repeat(8);
    std::fs::write(&db, &content)?;
    let header = SnapshotHeader {
        format: snapshot::HEADER_FORMAT,
        cluster_id: "prod".into(),
        epoch: 3,
        index: 40,
        term: 2,
        revision: 17,
        compact_revision: 5,
        db_bytes: content.len() as u64,
        db_crc32c: crc32c::crc32c(&content),
        created_unix: 1_790_000_000,
        commit_unix_ms: 1_789_999_999_123,
        created_unix_ms: 1_790_000_000_456,
    };
    let out = scratch.join("out.snap");
    snapshot::encode_file(&db, &header, &out)?;
    let object = std::fs::read(&out)?;
    c.add(0, &object)?;
    c.add(1, &object)?;
    Ok(())
}

fn manifests(root: &Path) -> Result {
    let mut c = Corpus::new(root, "manifests")?;
    let mut cluster = ClusterManifest::new("prod", 3).opened_by("netsy-0", "https://netsy-0:2381");
    cluster.updated_unix = 1_790_000_000;
    c.add(0, &serde_json::to_vec_pretty(&cluster)?)?;
    let members = Members {
        format_version: 1,
        cluster_id: "prod".into(),
        members: [(
            "netsy-0".to_string(),
            Member {
                member_id: 0xa1,
                raft_id: 7,
            },
        )]
        .into_iter()
        .collect(),
    };
    c.add(1, &serde_json::to_vec_pretty(&members)?)?;
    let node = NodeRecord {
        format_version: 1,
        node_id: "netsy-0".into(),
        member_id: 0xa1,
        raft_id: 7,
        epoch: 3,
        client_url: "https://netsy-0:2378".into(),
        peer_url: "https://netsy-0:2381".into(),
        started_unix: 1_790_000_000,
        version: "0.2.0".into(),
    };
    c.add(2, &serde_json::to_vec_pretty(&node)?)?;
    let identity = netsy::server::datadir::NodeIdentity {
        format_version: 1,
        member_id: 0xa1,
        raft_id: 7,
        epoch: 3,
    };
    c.add(3, &serde_json::to_vec_pretty(&identity)?)?;
    Ok(())
}

fn config(root: &Path) -> Result {
    // Input: cluster file, then optionally NUL and KEY=VALUE lines, then NUL and an env file.
    let mut c = Corpus::new(root, "config")?;
    let dev = std::fs::read("config/dev.jsonc")?;
    let tls = std::fs::read("config/dev-tls.jsonc")?;
    c.add_raw(&dev)?;
    let mut with_env = dev.clone();
    with_env.extend_from_slice(b"\0NETSY_NODE_ID=netsy-1\nNETSY_BIND_CLIENT=127.0.0.1:2379\nNETSY_DATA_EPHEMERAL=true\n");
    c.add_raw(&with_env)?;
    let mut with_tls = tls;
    with_tls.push(0);
    for k in netsy::config::TLS_ENV {
        with_tls.extend_from_slice(format!("{k}=/certs/{}\n", k.to_lowercase()).as_bytes());
    }
    c.add_raw(&with_tls)?;
    let mut mesh = dev;
    mesh.extend_from_slice(b"\0RENEWAL_GRACE_SECONDS=600\n\0# written by genesis-mesh init\nGENESIS_FILE=home/genesis.signed.json\nNA_PRIVATE_KEY_FILE=home/keys/na.key\nOPERATOR_PUBLIC_KEYS_JSON={\"op\":\"AAAA\"}\nOPERATOR_KEY_TIERS_JSON={\"op\":\"privileged\"}\n");
    c.add_raw(&mesh)?;
    let full = br#"{
  "cluster_id": "prod",
  "storage": { "provider": "file", "path": "./objects" },
  "etcd_version": "3.5.21",
  "auto_compaction": { "mode": "periodic", "retention": "1h30m" },
  "watch": { "progress_notify_interval": "10m" },
  "archive": { "segment_max_delay": "500ms", "snapshot_max_age": "1h" },
  "tls": { "min_version": "1.3", "reload_interval": "5s" },
  "discovery_timeout": "15s",
  "deregistration_timeout": "3m",
  "node": { "bind_client": "127.0.0.1:2378", "bind_peer": "127.0.0.1:2381", "bind_health": "127.0.0.1:8080" },
}"#;
    c.add_raw(full)?;
    Ok(())
}

fn mesh(root: &Path) -> Result {
    let mut c = Corpus::new(root, "mesh_json")?;
    // The target's keys: SigningKey::from_bytes(&[n; 32]).
    let key = |n: u8| ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
    let now = timefmt::parse("2026-11-22T02:10:11.101422Z").ok_or("time")?.at;
    let genesis = models::Genesis::create("FUZZ", &key(1), "root", &key(2), now)?;
    let cert = models::certificate(
        "b0b96b12-a238-4e7a-bff7-40d2ffd4ac08",
        &keys::public_b64(&key(6)),
        "FUZZ",
        &["role:anchor".to_string()],
        now,
        now + time::Duration::days(7),
        "na-fuzz",
    );
    let crl = models::crl(
        "crl-1",
        3,
        now,
        "na-fuzz",
        vec![models::revoked_entry("c-1", now, "key_compromise", "na-fuzz")],
    );
    let odd = json!({
        "é": "\u{1F600}\n\"\\",
        "floats": [0.1, 1e16, 1e-5, -0.0, 1.7976931348623157e308],
        "ints": [18446744073709551615u64, -9223372036854775808i64, 0],
        "null": null,
        "t": true,
    });
    for doc in [&genesis.doc, &cert, &crl, &odd] {
        c.add(0, canonical::to_string(doc).as_bytes())?;
        c.add(2, doc.to_string().as_bytes())?;
    }
    for t in [
        "2026-11-22T02:10:11.101422Z",
        "2026-11-22T02:10:11+00:00",
        "2026-11-22T03:10:11.5+01:00",
        "2026-11-22 03:10:11-05:30",
        "2026-11-22T03:10:11+01:00:30",
        "2026-11-22T03:10",
        "2026-11-22",
    ] {
        c.add(1, t.as_bytes())?;
    }
    c.add(3, b"x=1&x=2&y=a%20b\n{\"roles\":[\"role:anchor\"],\"max_validity_hours\":168}")?;
    // Requests (selector 4): flags, route, then `line \n body`; "\n---\n" between them.
    let req = |flags: u8, route: u8, line: &str, body: &str| {
        let mut r = vec![flags, route];
        r.extend_from_slice(format!("{line}\n{body}").as_bytes());
        r
    };
    let sequence = [
        req(1 | 2, 13, "", r#"{"roles":["role:anchor"],"max_validity_hours":24}"#),
        req(
            8,
            10,
            "",
            r#"{"invite_token":"$token_id","validity_hours":12,"roles":["role:anchor"]}"#,
        ),
        req(8, 11, "", r#"{"cert_id":"$cert_id","status":"healthy"}"#),
        req(8, 12, "", r#"{"cert_id":"$cert_id","roles":["role:anchor"]}"#),
        req(1 | 2, 14, "", r#"{"cert_id":"$cert_id","reason":"key_compromise"}"#),
        req(1 | 2, 15, "", r#"{"rules":[{"roles":["role:anchor"],"allowed_ports":[443]}]}"#),
        req(1 | 4, 16, "?limit=5", ""),
        req(1 | 2, 17, "", r#"{"policy_id":"$policy_id"}"#),
    ];
    c.add(4, &sequence.join(&b"\n---\n"[..]))?;
    for (route, line) in [
        (0u8, ""),
        (1, ""),
        (3, "?role=anchor"),
        (4, ""),
        (5, ""),
        (6, ""),
        (7, ""),
        (8, ""),
        (9, ""),
    ] {
        c.add(4, &req(0, route, line, ""))?;
    }
    c.add(4, &req(1 | 2, 18, "op/revoke", r#"{"reason":"rotated"}"#))?;
    c.add(4, &req(1, 200, "/heal%74hz?x=1", ""))?;
    c.add(4, &req(1 | 16, 10, "", "{\"invite_token\": 18446744073709551616}"))?;
    // A query and body as `netsy mesh` signs them (the target signs them itself).
    c.add(3, b"key_id=op&nonce=ad769df3-4bf9-4e56-a52f-8eaf7e2701f9\n{}")?;
    Ok(())
}

fn etcd_requests(root: &Path) -> Result {
    // The target builds its requests with `arbitrary`: any bytes are a valid input, so
    // its seeds are bytes of a few lengths and shapes.
    let mut c = Corpus::new(root, "etcd_requests")?;
    let mut x: u64 = 0x6e65_7473_7966_757a;
    for len in [16usize, 64, 256, 1024, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        c.add_raw(&bytes)?;
    }
    c.add_raw(&[0u8; 64])?;
    c.add_raw(&[1u8; 64])?;
    c.add_raw(&(0..=255u8).collect::<Vec<u8>>())?;
    Ok(())
}

fn main() -> Result {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let scratch = tempfile::tempdir()?;
    raft_records(&root)?;
    peer_payloads(&root)?;
    segments(&root)?;
    snapshots(&root, scratch.path())?;
    manifests(&root)?;
    config(&root)?;
    mesh(&root)?;
    etcd_requests(&root)?;
    println!("seed corpora written under {}", root.display());
    Ok(())
}
