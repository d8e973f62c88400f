//! `netsy-bench`: an etcd v3 load generator modelled on etcd's `tools/benchmark`. It only
//! speaks the etcd gRPC API (netsy's generated client types), so it drives etcd and netsy
//! alike. `suite.rs` runs the side-by-side comparison behind `make bench`. Not part of
//! the shipped `netsy` binary or library.

pub mod report;
pub mod s3cost;
pub mod scale;
pub mod suite;
mod workloads;

use std::time::Duration;

use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

pub use workloads::{run, KeyOrder, Workload};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot connect to {endpoint}: {msg}")]
    Connect { endpoint: String, msg: String },
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Shared client options.
#[derive(Debug, Clone)]
pub struct Options {
    pub endpoints: Vec<String>,
    /// Concurrent clients (tasks issuing requests).
    pub clients: usize,
    /// gRPC connections the clients share round-robin.
    pub conns: usize,
    /// Requests in total (for watch-latency: puts).
    pub total: usize,
}

impl Options {
    /// One request over one connection to `endpoint`.
    pub fn one(endpoint: &str) -> Options {
        Options {
            endpoints: vec![endpoint.to_string()],
            clients: 1,
            conns: 1,
            total: 1,
        }
    }
}

/// Opens `opts.conns` connections, spread over the endpoints.
pub async fn connect(opts: &Options) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::with_capacity(opts.conns.max(1));
    for i in 0..opts.conns.max(1) {
        let ep = &opts.endpoints[i % opts.endpoints.len()];
        let url = if ep.contains("://") { ep.clone() } else { format!("http://{ep}") };
        let err = |msg: String| BenchError::Connect {
            endpoint: url.clone(),
            msg,
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| err(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| err(e.to_string()))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Latency distribution and throughput of one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub workload: String,
    pub requests: usize,
    pub errors: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Milliseconds.
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// CPU time the server spent per request, in microseconds (user + system, every
    /// member of the group, from /proc); 0 when not measured (`netsy-bench` alone).
    pub server_cpu_us: f64,
    /// The server's largest RSS sampled during the run (the largest member's), in bytes;
    /// 0 when not measured.
    #[serde(default)]
    pub server_peak_rss_bytes: u64,
}

impl Summary {
    /// Builds a summary from per-request latencies.
    pub fn new(workload: &str, mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Summary {
        latencies.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let idx = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            ms(latencies[idx])
        };
        let seconds = elapsed.as_secs_f64();
        Summary {
            workload: workload.to_string(),
            requests: latencies.len(),
            errors,
            seconds,
            per_second: if seconds > 0.0 { latencies.len() as f64 / seconds } else { 0.0 },
            min: latencies.first().map_or(0.0, |d| ms(*d)),
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p999: pct(0.999),
            max: latencies.last().map_or(0.0, |d| ms(*d)),
            server_cpu_us: 0.0,
            server_peak_rss_bytes: 0,
        }
    }

    /// The human-readable block `netsy-bench` prints.
    pub fn text(&self) -> String {
        format!(
            "{}: {} requests, {} errors in {:.2}s = {:.0} req/s\nlatency ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.workload, self.requests, self.errors, self.seconds, self.per_second, self.min, self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_throughput() {
        let lat: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let s = Summary::new("x", lat, 2, Duration::from_secs(2));
        assert_eq!(s.requests, 1000);
        assert_eq!(s.errors, 2);
        assert!((s.per_second - 500.0).abs() < 1e-9);
        assert!((s.min - 0.001).abs() < 1e-9);
        assert!((s.p50 - 0.5).abs() < 1e-9);
        assert!((s.p99 - 0.99).abs() < 1e-9);
        assert!((s.p999 - 0.999).abs() < 1e-9);
        assert!((s.max - 1.0).abs() < 1e-9);
        let empty = Summary::new("y", vec![], 0, Duration::ZERO);
        assert_eq!((empty.p50, empty.per_second), (0.0, 0.0));
    }
}
