//! netsy's integration tests, linked as one test binary with a module per area: linking
//! one binary instead of one per file saves most of the build's link time and disk.
//! `common` is the harness: real `netsy` processes (and real etcd 3.5.1, moto) on free
//! loopback ports in temp dirs. nextest runs every test in its own process, so tests
//! still share no process state.

mod common;

mod archive;
mod archive_faults;
mod chaos;
mod client_http;
mod cluster;
mod compat;
mod durability;
mod edge;
mod encryption;
mod etcdctl_differential;
mod helm;
mod kube_calls;
mod kv;
mod layers;
mod lease;
mod linearizability;
mod mesh;
mod migrate;
mod monitoring;
mod object_store_gcs;
mod object_store_s3;
mod raft_storage_suite;
mod range_stream;
mod read_memory;
mod reclaim;
mod restore;
mod services;
mod standby;
mod status;
mod time_machine;
mod tls;
mod watch;
