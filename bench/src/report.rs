//! The suite's report: a Markdown table of netsy/etcd ratios and an SVG bar chart.

use std::fmt::Write;

use serde::Serialize;

use super::Summary;

/// What the report compares for one workload.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub enum Metric {
    Throughput,
    P50,
    P99,
    /// Server CPU time per request (lower is better).
    CpuPerRequest,
    /// netsy's p50 against the disk's own fdatasync p50 plus `DISK_SYNC_ALLOWANCE_MS`
    /// (not against etcd): a durable reply cannot beat the sync it waits for.
    P50OverDiskSync,
}

/// What a durable single-client put may take beyond one fdatasync of the disk.
pub const DISK_SYNC_ALLOWANCE_MS: f64 = 0.15;

/// fdatasync of 4 KiB appends in the directory beside the servers' data, in the run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DiskSync {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub metric: Metric,
    /// netsy/etcd must be at least this (throughput) or at most this (latency).
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub etcd: Summary,
    pub netsy: Summary,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Footprint {
    pub keys: usize,
    pub load_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub quick: bool,
    pub cpus: usize,
    pub disk_sync: DiskSync,
    pub comparisons: Vec<Comparison>,
    pub etcd_footprint: Footprint,
    pub netsy_footprint: Footprint,
    /// RSS with 10,000 watchers open (bytes), per server.
    pub watchers_rss: (u64, u64),
    /// The same workloads on 3-member clusters.
    pub cluster: Vec<Comparison>,
    /// 3 members: seconds from a leader kill to the first successful write, per round
    /// (etcd, netsy).
    pub failover_seconds: (Vec<f64>, Vec<f64>),
    /// netsy over S3 with added latency, by durability (`None`: not measured, e.g. no
    /// moto server).
    pub durability_cost: Option<DurabilityCost>,
}

/// `object-storage` vs `quorum` durability over a slow S3 (`s3cost`).
#[derive(Debug, Clone, Serialize)]
pub struct DurabilityCost {
    /// Latency added each way by the proxy in front of the S3 server.
    pub one_way_ms: f64,
    /// A 512-byte PUT through the proxy, one after another (the same run).
    pub put_round_trip_p50_ms: f64,
    pub put_round_trip_p99_ms: f64,
    /// The default `archive.max_puts_per_second` (the rows say which they ran with).
    pub ceiling_puts_per_second: u32,
    pub rows: Vec<DurabilityRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DurabilityRow {
    pub durability: String,
    pub clients: usize,
    /// `archive.max_puts_per_second` of the run.
    pub ceiling: u32,
    pub summary: super::Summary,
    /// Object-store PUTs netsy made per second of the run.
    pub puts_per_second: f64,
}

fn value(s: &super::Summary, m: Metric) -> f64 {
    match m {
        Metric::Throughput => s.per_second,
        Metric::P50 | Metric::P50OverDiskSync => s.p50,
        Metric::P99 => s.p99,
        Metric::CpuPerRequest => s.server_cpu_us,
    }
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Throughput => "throughput",
        Metric::P50 => "p50",
        Metric::P99 => "p99",
        Metric::CpuPerRequest => "server CPU/request",
        Metric::P50OverDiskSync => "p50 / (fdatasync p50 + 0.15 ms)",
    }
}

/// netsy/etcd for one metric, or netsy/(fdatasync + allowance) for `P50OverDiskSync`
/// (0 when the reference measured nothing).
pub fn ratio(c: &Comparison, m: Metric, disk: &DiskSync) -> f64 {
    let reference = match m {
        Metric::P50OverDiskSync if disk.samples > 0 => disk.p50_ms + DISK_SYNC_ALLOWANCE_MS,
        Metric::P50OverDiskSync => 0.0,
        _ => value(&c.etcd, m),
    };
    if reference > 0.0 {
        value(&c.netsy, m) / reference
    } else {
        0.0
    }
}

/// Whether `ratio` meets the target: throughput must reach it, latency and CPU must stay
/// under it.
pub fn meets(m: Metric, ratio: f64, target: f64) -> bool {
    match m {
        Metric::Throughput => ratio >= target,
        Metric::P50 | Metric::P99 | Metric::CpuPerRequest | Metric::P50OverDiskSync => ratio > 0.0 && ratio <= target,
    }
}

/// The footprint targets: RSS and data on disk after the load, netsy/etcd at most.
pub const RSS_TARGET: f64 = 0.35;
pub const DISK_TARGET: f64 = 1.0;

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# netsy vs etcd 3.5.1 — `make bench`\n");
    let _ = writeln!(
        md,
        "Same machine, same run, {} CPUs, loopback, fresh data directories; each workload ran against both servers \
         with identical parameters, in alternating order, and the table shows the mean of the rounds.{}\n",
        r.cpus,
        if r.quick {
            " **Quick mode: small totals, not for judging targets.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "The disk, measured in the same run beside the data directories: fdatasync of a 4 KiB append p50 {:.3} ms, \
         p99 {:.3} ms ({} samples). Server CPU is user + system time from /proc per request (all members of a group).\n",
        r.disk_sync.p50_ms, r.disk_sync.p99_ms, r.disk_sync.samples
    );
    table(&mut md, &r.comparisons, &r.disk_sync);
    let (e, n) = (&r.etcd_footprint, &r.netsy_footprint);
    let _ = writeln!(md, "\n## Footprint after loading {} keys × 256 B\n", e.keys);
    let _ = writeln!(
        md,
        "Data on disk is taken once each data directory stops changing (two readings a second apart within 1%), the RSS right after.\n"
    );
    let _ = writeln!(md, "| | etcd | netsy | ratio |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let mut target_row = |label: &str, etcd: u64, netsy: u64, target: f64| {
        let ratio = footprint_ratio(etcd, netsy);
        let met = if ratio > 0.0 && ratio <= target { "met" } else { "**not met**" };
        let _ = writeln!(
            md,
            "| {label} | {:.1} | {:.1} | {ratio:.2}× (target ≤ {target}×: {met}) |",
            mib(etcd),
            mib(netsy)
        );
    };
    target_row("RSS (MiB)", e.rss_bytes, n.rss_bytes, RSS_TARGET);
    target_row("data on disk (MiB)", e.disk_bytes, n.disk_bytes, DISK_TARGET);
    let mut row = |label: &str, etcd: f64, netsy: f64| {
        let _ = writeln!(md, "| {label} | {etcd:.1} | {netsy:.1} | {:.2}× |", netsy / etcd.max(1e-9));
    };
    row("peak RSS over the whole run (MiB)", mib(e.peak_rss_bytes), mib(n.peak_rss_bytes));
    row("load time (s, 100 clients)", e.load_seconds, n.load_seconds);
    row("RSS with 10,000 watchers open (MiB)", mib(r.watchers_rss.0), mib(r.watchers_rss.1));
    if !r.cluster.is_empty() {
        let _ = writeln!(
            md,
            "\n## 3-member clusters\n\nnetsy 3 pods vs etcd 3 members on loopback; connections spread over the members.\n"
        );
        table(&mut md, &r.cluster, &r.disk_sync);
    }
    let (e, n) = &r.failover_seconds;
    if !e.is_empty() && !n.is_empty() {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "\n| failover: leader kill -9 → first successful write (s) | etcd | netsy | target |"
        );
        let _ = writeln!(md, "|---|---:|---:|---|");
        let _ = writeln!(
            md,
            "| mean / max of {} rounds | {:.2} / {:.2} | {:.2} / {:.2} | netsy max < 3 s: {} |",
            n.len(),
            mean(e),
            max(e),
            mean(n),
            max(n),
            if max(n) < 3.0 { "met" } else { "**not met**" }
        );
    }
    if let Some(c) = &r.durability_cost {
        durability_table(&mut md, c);
    }
    let _ = writeln!(md, "\nChart: `results.svg`; raw numbers: `results.json`.");
    md
}

/// The durability rows alone, as markdown.
pub fn durability_markdown(c: &DurabilityCost) -> String {
    let mut md = String::new();
    durability_table(&mut md, c);
    md
}

/// The cost of `object-storage` durability over a slow S3.
fn durability_table(md: &mut String, c: &DurabilityCost) {
    let bound = c.put_round_trip_p50_ms + 10.0;
    let _ = writeln!(md, "\n## The cost of `object-storage` durability (netsy alone, S3 with latency)\n");
    let _ = writeln!(
        md,
        "One netsy over moto's S3 server behind a proxy adding {:.0} ms each way; a 512-byte PUT through it took \
         p50 {:.1} ms, p99 {:.1} ms (same run). Puts of 256 B; 100 clients share 10 connections. \
         `archive.max_puts_per_second` is the default {} or 1000 (a ceiling these runs never reach).\n",
        c.one_way_ms, c.put_round_trip_p50_ms, c.put_round_trip_p99_ms, c.ceiling_puts_per_second
    );
    let _ = writeln!(
        md,
        "| durability | clients | PUT ceiling /s | puts/s | p50 / p99 ms | S3 PUTs/s | p50 ≤ PUT round trip + 10 ms ({bound:.1}) | PUTs/s ≤ ceiling | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|:---:|:---:|---:|");
    let yes = |b: bool| if b { "met" } else { "**not met**" };
    for row in &c.rows {
        let s = &row.summary;
        let p50 = if row.durability == "object-storage" {
            yes(s.p50 <= bound)
        } else {
            "—"
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.1} / {:.1} | {:.1} | {p50} | {} | {} |",
            row.durability,
            row.clients,
            row.ceiling,
            s.per_second,
            s.p50,
            s.p99,
            row.puts_per_second,
            yes(row.puts_per_second <= f64::from(row.ceiling) * 1.05),
            s.errors
        );
    }
    let _ = writeln!(
        md,
        "\nA write in `object-storage` durability is acknowledged once an upload carries it. Where writers \
         together would need more than the ceiling's uploads, each upload carries every write committed since \
         the one before, and a writer that writes again as soon as it is answered waits for the next upload: \
         about 1 / ceiling (100 ms at 10 PUT/s) whatever the PUT round trip. The p50 target holds only where \
         the ceiling is not reached."
    );
}

fn footprint_ratio(etcd: u64, netsy: u64) -> f64 {
    if etcd > 0 {
        netsy as f64 / etcd as f64
    } else {
        0.0
    }
}

/// The workload table: one row per target (or one reported row).
fn table(md: &mut String, comparisons: &[Comparison], disk: &DiskSync) {
    let _ = writeln!(
        md,
        "| workload | etcd req/s | netsy req/s | etcd p50 / p99 ms | netsy p50 / p99 ms | server CPU µs/req e/n | peak server RSS MiB e/n | errors e/n | target | ratio | met |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|:---:|");
    for c in comparisons {
        let targets: Vec<_> = if c.targets.is_empty() {
            vec![None]
        } else {
            c.targets.iter().map(Some).collect()
        };
        for (i, t) in targets.into_iter().enumerate() {
            let (target, ratio_s, met) = match t {
                Some(t) => {
                    let ratio = ratio(c, t.metric, disk);
                    let op = if t.metric == Metric::Throughput { "≥" } else { "≤" };
                    (
                        format!("{} {op} {:.1}×", metric_name(t.metric), t.ratio),
                        format!("{ratio:.2}×"),
                        if meets(t.metric, ratio, t.ratio) { "yes" } else { "**no**" }.to_string(),
                    )
                }
                None => (
                    "p50 (reported)".to_string(),
                    format!("{:.2}×", ratio(c, Metric::P50, disk)),
                    "—".to_string(),
                ),
            };
            let name = if i == 0 { c.name.as_str() } else { "″" };
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {}/{} | {target} | {ratio_s} | {met} |",
                c.etcd.per_second,
                c.netsy.per_second,
                c.etcd.p50,
                c.etcd.p99,
                c.netsy.p50,
                c.netsy.p99,
                c.etcd.server_cpu_us,
                c.netsy.server_cpu_us,
                mib(c.etcd.server_peak_rss_bytes),
                mib(c.netsy.server_peak_rss_bytes),
                c.etcd.errors,
                c.netsy.errors
            );
        }
    }
}

/// A horizontal bar per target: the netsy/etcd ratio on a log scale, with the target
/// marked; green when met.
pub fn svg(r: &Results) -> String {
    let mut rows: Vec<(String, f64, f64, bool)> = Vec::new();
    for c in r.comparisons.iter().chain(&r.cluster) {
        for t in &c.targets {
            let ratio = ratio(c, t.metric, &r.disk_sync);
            rows.push((
                format!("{} — {}", c.name, metric_name(t.metric)),
                ratio,
                t.ratio,
                meets(t.metric, ratio, t.ratio),
            ));
        }
    }
    let (e, n) = (&r.etcd_footprint, &r.netsy_footprint);
    for (what, etcd, netsy, target) in [
        ("RSS", e.rss_bytes, n.rss_bytes, RSS_TARGET),
        ("data on disk", e.disk_bytes, n.disk_bytes, DISK_TARGET),
    ] {
        let ratio = footprint_ratio(etcd, netsy);
        if ratio > 0.0 {
            rows.push((format!("{what} after {} keys", e.keys), ratio, target, ratio <= target));
        }
    }
    let (label_w, plot_w, row_h, top) = (430.0, 420.0, 28.0, 50.0);
    let height = top + row_h * rows.len() as f64 + 40.0;
    // Log scale from 1/8x to 8x.
    let x = |v: f64| -> f64 {
        let v = v.clamp(0.125, 8.0);
        label_w + (v.log2() + 3.0) / 6.0 * plot_w
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        label_w + plot_w + 80.0
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">netsy / etcd 3.5.1 (log scale; | = target; green = met)</text>"#
    );
    for tick in [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0] {
        let tx = x(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{tx}" y1="{}" x2="{tx}" y2="{}" stroke="#ddd"/><text x="{tx}" y="{}" text-anchor="middle">{tick}×</text>"##,
            top - 8.0,
            height - 30.0,
            height - 14.0
        );
    }
    for (i, (label, ratio, target, met)) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let color = if *met { "#3a9d5d" } else { "#d0583c" };
        let (x0, x1) = (x(1.0), x(*ratio));
        let (left, width) = if x1 >= x0 { (x0, x1 - x0) } else { (x1, x0 - x1) };
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text><rect x="{left}" y="{}" width="{}" height="{}" fill="{color}"/>"#,
            y + 16.0,
            xml_escape(label),
            y + 4.0,
            width.max(1.0),
            row_h - 10.0
        );
        let tx = x(*target);
        let _ = writeln!(
            s,
            r#"<line x1="{tx}" y1="{}" x2="{tx}" y2="{}" stroke="black" stroke-width="2"/><text x="{}" y="{}">{ratio:.2}×</text>"#,
            y + 1.0,
            y + row_h - 3.0,
            label_w + plot_w + 8.0,
            y + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
