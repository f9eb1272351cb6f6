//! Load generator for roentgen: realistic segment documents over `PutTraceSegments` or the UDP
//! daemon protocol, and read load (`BatchGetTraces`, `GetTraceSummaries`) with latency
//! percentiles. `scripts/bench` drives it; see BENCHMARKS.md.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

/// The server's allocator, so `pipeline` measures what the server does.
#[global_allocator]
static ALLOCATOR: roentgen_alloc::Mimalloc = roentgen_alloc::Mimalloc;

#[derive(Debug, Parser)]
#[command(name = "roentgen-loadgen", about = "Send realistic X-Ray load to roentgen and measure it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send segment documents and report throughput.
    Ingest {
        /// `api` (PutTraceSegments over HTTP, waits for durability) or `udp` (daemon protocol).
        #[arg(long, default_value = "api")]
        via: String,
        #[arg(long, default_value = "127.0.0.1:2000")]
        address: String,
        /// Segment documents to send.
        #[arg(long, default_value_t = 100_000)]
        segments: u64,
        /// Documents per PutTraceSegments call (X-Ray's limit is 50).
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Concurrent API callers.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// UDP only: datagrams per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Write every 100th trace id here, for the query benchmark.
        #[arg(long)]
        trace_ids: Option<PathBuf>,
        /// Seconds before now that the generated traces start, spread evenly up to now.
        #[arg(long, default_value_t = 3600)]
        spread_seconds: u64,
    },
    /// Measure GetSamplingTargets: many SDK clients reporting on many rules.
    Sampling {
        #[arg(long, default_value = "127.0.0.1:2000")]
        address: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 25)]
        rules: usize,
        /// Rules each call reports on (an SDK reports the rules it used since its last call).
        #[arg(long, default_value_t = 5)]
        rules_per_call: usize,
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Measure GetTraceSummaries with filter expressions over the last hour (what `ingest` wrote).
    Filters {
        #[arg(long, default_value = "127.0.0.1:2000")]
        address: String,
        /// Requests per expression.
        #[arg(long, default_value_t = 20)]
        requests: usize,
        /// Expressions to measure; the defaults match the load generator's documents.
        #[arg(long)]
        expression: Vec<String>,
    },
    /// Measure GetServiceGraph over windows ending now (by default the last ten minutes and the
    /// last hour).
    Graph {
        #[arg(long, default_value = "127.0.0.1:2000")]
        address: String,
        #[arg(long, default_value_t = 10)]
        requests: usize,
        /// Window lengths in minutes, one measurement each.
        #[arg(long = "window-minutes", default_values_t = [10, 60])]
        windows: Vec<u64>,
    },
    /// Measure the server's work per segment in this process, without HTTP or a second process:
    /// parsing and validating, the store's append (WAL with fsync, live traces) and the flush
    /// into a block, then reading traces back from the block one id at a time, and the same
    /// segments written as eight blocks and merged by a compaction. CPU time of all
    /// threads, the best of several rounds: steadier than a load test on a shared machine, for
    /// comparing two builds.
    Pipeline {
        #[arg(long, default_value_t = 100_000)]
        segments: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The block's chunk size (`store.block_chunk_bytes`), the store's default if not given:
        /// the trade between bytes on disk and the CPU of a lookup.
        #[arg(long)]
        block_chunk_bytes: Option<u32>,
        /// Blocks the store holds before the measured segments come, as a store weeks old holds
        /// them: one a minute of trace ids, all older than the generator's hour.
        #[arg(long, default_value_t = 0)]
        blocks: u32,
    },
    /// Measure two codecs on the generator's documents, alternating each pair of variants
    /// round by round: reading `PutTraceSegments` bodies of 50 documents (roentgen's decoder
    /// against serde_json alone), parsing each document (against serde_json stepping over it
    /// and building a `Value` of it), and zstd level 1 on 512 KiB chunks of documents in
    /// trace-id order, as blocks hold them (zstd's own hash table against the 4Ki entries
    /// blocks use). First, the resident memory of the documents held as live ones, parsed.
    Codecs {
        #[arg(long, default_value_t = 60_000)]
        segments: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Measure group commits as the WAL makes them, fsync'd writes of `bytes` each, into a new
    /// file against over a file written before (a recycled WAL generation), alternating round
    /// by round. `dir` should be on the disk the data dir is on.
    Fsync {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2400)]
        writes: usize,
        #[arg(long, default_value_t = 85_000)]
        bytes: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Measure what this machine takes to touch memory: `megabytes` the process never had,
    /// then the same amount again once freed, as a flush's memory is taken again by the next
    /// seconds of ingest. Where the first is dear, a server's peak memory is its cost.
    Pages {
        #[arg(long, default_value_t = 2048)]
        megabytes: usize,
    },
    /// Measure read latency against what `ingest` wrote.
    Query {
        #[arg(long, default_value = "127.0.0.1:2000")]
        address: String,
        #[arg(long)]
        trace_ids: PathBuf,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
}

fn main() -> std::process::ExitCode {
    roentgen_alloc::reuse_freed_pages_until_the_kernel_needs_them();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roentgen-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Command::Ingest { via, address, segments, batch, concurrency, rate, trace_ids, spread_seconds } => {
            let generator = Generator::new(spread_seconds);
            let report = match via.as_str() {
                "api" => runtime.block_on(ingest_api(&address, generator, segments, batch, concurrency))?,
                "udp" => ingest_udp(&address, generator, segments, rate)?,
                other => bail!("--via must be api or udp, not {other:?}"),
            };
            if let Some(path) = trace_ids {
                std::fs::write(&path, report.sample_ids.join("\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            emit(json!({
                "via": via,
                "segments_sent": report.sent,
                "segments_rejected": report.rejected,
                "raw_document_bytes": report.bytes,
                "entities_sent": report.entities,
                "seconds": report.elapsed.as_secs_f64(),
                "segments_per_second": report.sent as f64 / report.elapsed.as_secs_f64(),
            }));
        }
        Command::Sampling { address, clients, rules, rules_per_call, calls, concurrency } => {
            runtime.block_on(sampling(&address, clients, rules, rules_per_call, calls, concurrency))?;
        }
        Command::Filters { address, requests, expression } => {
            let expressions = if expression.is_empty() {
                vec![
                    "annotation.tenant = \"tenant-7\"".to_owned(),
                    "service(\"service-07\") { fault }".to_owned(),
                    "service() { fault }".to_owned(),
                    "responsetime > 0.1".to_owned(),
                ]
            } else {
                expression
            };
            runtime.block_on(filters(&address, &expressions, requests))?;
        }
        Command::Graph { address, requests, windows } => runtime.block_on(graph(&address, requests, &windows))?,
        Command::Pipeline { segments, rounds, block_chunk_bytes, blocks } => {
            runtime.block_on(pipeline(segments, rounds, block_chunk_bytes, blocks))?;
        }
        Command::Codecs { segments, rounds } => codecs(segments, rounds)?,
        Command::Fsync { dir, writes, bytes, rounds } => fsync(&dir, writes, bytes, rounds)?,
        Command::Pages { megabytes } => pages(megabytes)?,
        Command::Query { address, trace_ids, requests } => {
            let ids: Vec<String> = std::fs::read_to_string(&trace_ids)?.lines().map(str::to_owned).collect();
            if ids.is_empty() {
                bail!("{} holds no trace ids", trace_ids.display());
            }
            runtime.block_on(query(&address, &ids, requests))?;
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)] // the report is the program's output
fn emit(value: Value) {
    println!("{value}");
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Produces traces of one to three segments from a fleet of 50 services: 60 % small documents
/// (a web request), 30 % medium (database, DynamoDB and HTTP calls), 10 % large (20 subsegments
/// and metadata), like a typical microservice fleet.
struct Generator {
    next: AtomicU64,
    start: f64,
    spread: f64,
}

/// SplitMix64: fast, good enough to vary the documents deterministically.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const ROUTES: [&str; 6] = ["/api/orders", "/api/cart", "/api/users/me", "/health", "/api/search", "/api/checkout"];

impl Generator {
    fn new(spread_seconds: u64) -> Self {
        Self { next: AtomicU64::new(0), start: now() - spread_seconds as f64, spread: spread_seconds as f64 }
    }

    /// The documents of the next trace, with its id.
    fn trace(&self, total_traces: u64) -> (String, Vec<String>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let r = mix(n);
        let t = self.start + self.spread * (n as f64 / total_traces.max(1) as f64);
        let trace_id = format!("1-{:08x}-{:024x}", t as u32, u128::from(r) << 32 | u128::from(mix(r) as u32));
        let services = 1 + (r % 3) as usize;
        let mut docs = Vec::with_capacity(services);
        let mut parent: Option<u64> = None;
        for s in 0..services {
            let id = mix(r ^ s as u64);
            let kind = mix(id) % 10;
            docs.push(self.segment(&trace_id, id, parent, t + s as f64 * 0.002, r >> 8, kind));
            parent = Some(mix(id + 1));
        }
        (trace_id, docs)
    }

    fn segment(&self, trace_id: &str, id: u64, parent: Option<u64>, t: f64, r: u64, kind: u64) -> String {
        let service = format!("service-{:02}", (id % 50));
        let status = match r % 100 {
            0..=1 => 500,
            2..=4 => 404,
            5 => 429,
            _ => 200,
        };
        let duration = 0.005 + (r % 400) as f64 / 1000.0;
        let route = ROUTES[(r % ROUTES.len() as u64) as usize];
        let parent = parent.map(|p| format!(r#""parent_id":"{p:016x}","#)).unwrap_or_default();
        let flags = match status {
            500 => r#""fault":true,"#,
            429 => r#""throttle":true,"error":true,"#,
            404 => r#""error":true,"#,
            _ => "",
        };
        let subsegments = match kind {
            0..=5 => String::new(),
            6..=8 => format!(
                ",\"subsegments\":[{}]",
                (0..4).map(|i| subsegment(id, i, t, duration)).collect::<Vec<_>>().join(",")
            ),
            _ => format!(
                ",\"subsegments\":[{}],\"metadata\":{{\"debug\":{{\"payload\":\"{}\",\"flags\":[1,2,3,4,5,6,7,8]}}}}",
                (0..20).map(|i| subsegment(id, i, t, duration)).collect::<Vec<_>>().join(","),
                "abcdefghij".repeat(100)
            ),
        };
        format!(
            r#"{{"trace_id":"{trace_id}","id":"{id:016x}",{parent}"name":"{service}","origin":"AWS::ECS::Container","start_time":{t:.6},"end_time":{end:.6},{flags}"http":{{"request":{{"method":"GET","url":"https://{service}.internal{route}","user_agent":"Mozilla/5.0 (X11; Linux x86_64)","client_ip":"10.0.{a}.{b}"}},"response":{{"status":{status},"content_length":{len}}}}},"user":"user-{user}","annotations":{{"tenant":"tenant-{tenant}","region":"eu-west-1","attempt":{attempt}}},"aws":{{"account_id":"123456789012","ecs":{{"container":"{service}-{c:x}"}},"xray":{{"sdk":"X-Ray for Java","sdk_version":"2.18.1"}}}}{subsegments}}}"#,
            end = t + duration,
            a = r % 256,
            b = (r >> 8) % 256,
            len = 100 + r % 5000,
            user = r % 10_000,
            tenant = r % 40,
            attempt = r % 3,
            c = r % 4096,
        )
    }
}

/// Segments and subsegments in one of the generator's documents: each has one `start_time`.
fn entity_count(document: &str) -> u64 {
    document.matches("\"start_time\":").count() as u64
}

fn subsegment(parent: u64, i: u64, t: f64, duration: f64) -> String {
    let id = mix(parent ^ (i + 100));
    let start = t + duration * (i as f64 / 25.0);
    let end = start + duration / 30.0;
    match i % 3 {
        0 => format!(
            r#"{{"id":"{id:016x}","name":"orders@postgres.internal","namespace":"remote","start_time":{start:.6},"end_time":{end:.6},"sql":{{"url":"postgresql://postgres.internal:5432/orders","database_type":"PostgreSQL","database_version":"15.4","sanitized_query":"SELECT * FROM orders WHERE customer_id = ?","user":"app"}}}}"#
        ),
        1 => format!(
            r#"{{"id":"{id:016x}","name":"DynamoDB","namespace":"aws","start_time":{start:.6},"end_time":{end:.6},"http":{{"response":{{"status":200}}}},"aws":{{"operation":"GetItem","region":"eu-west-1","request_id":"{:016X}","table_name":"sessions","retries":0}}}}"#,
            mix(id)
        ),
        _ => format!(
            r#"{{"id":"{id:016x}","name":"payments.internal","namespace":"remote","start_time":{start:.6},"end_time":{end:.6},"http":{{"request":{{"method":"POST","url":"https://payments.internal/charge","traced":true}},"response":{{"status":200,"content_length":87}}}}}}"#
        ),
    }
}

#[derive(Default)]
struct Report {
    sent: u64,
    rejected: u64,
    bytes: u64,
    /// Segments and subsegments in the documents sent.
    entities: u64,
    elapsed: Duration,
    sample_ids: Vec<String>,
}

async fn ingest_api(
    address: &str,
    generator: Generator,
    segments: u64,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let url = format!("http://{address}/TraceSegments");
    let generator = Arc::new(generator);
    // Traces average two segments; aim the time spread at that many traces.
    let total_traces = segments / 2;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, generator, sent) = (client.clone(), url.clone(), generator.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut rejected = 0u64;
            let mut bytes = 0u64;
            let mut entities = 0u64;
            let mut samples = Vec::new();
            // Whole traces only, so a sampled trace id is one whose documents were all sent.
            let mut carry: Option<(String, Vec<String>)> = None;
            let mut traces = 0u64;
            loop {
                let mut docs: Vec<String> = Vec::with_capacity(batch);
                let mut batch_samples = Vec::new();
                loop {
                    let (id, trace) = carry.take().unwrap_or_else(|| generator.trace(total_traces));
                    if !docs.is_empty() && docs.len() + trace.len() > batch {
                        carry = Some((id, trace));
                        break;
                    }
                    traces += 1;
                    if traces.is_multiple_of(100) {
                        batch_samples.push(id);
                    }
                    docs.extend(trace);
                }
                let claimed = sent.fetch_add(docs.len() as u64, Ordering::Relaxed);
                if claimed >= segments {
                    sent.fetch_sub(docs.len() as u64, Ordering::Relaxed);
                    break;
                }
                samples.extend(batch_samples);
                bytes += docs.iter().map(|d| d.len() as u64).sum::<u64>();
                entities += docs.iter().map(|d| entity_count(d)).sum::<u64>();
                let body = serde_json::to_vec(&json!({ "TraceSegmentDocuments": docs }))?;
                let response = client.post(&url).body(body).send().await?;
                if !response.status().is_success() {
                    bail!("PutTraceSegments answered {}: {}", response.status(), response.text().await?);
                }
                let answer: Value = response.json().await?;
                rejected += answer["UnprocessedTraceSegments"].as_array().map_or(0, |a| a.len() as u64);
            }
            Ok::<_, anyhow::Error>((rejected, bytes, entities, samples))
        }));
    }
    let mut report = Report::default();
    for task in tasks {
        let (rejected, bytes, entities, samples) = task.await??;
        report.rejected += rejected;
        report.bytes += bytes;
        report.entities += entities;
        report.sample_ids.extend(samples);
    }
    report.elapsed = started.elapsed();
    report.sent = sent.load(Ordering::Relaxed);
    Ok(report)
}

fn ingest_udp(address: &str, generator: Generator, segments: u64, rate: u64) -> anyhow::Result<Report> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(address)?;
    let mut report = Report::default();
    let started = Instant::now();
    let header = b"{\"format\":\"json\",\"version\":1}\n";
    let mut datagram = Vec::with_capacity(65_536);
    let mut traces = 0u64;
    while report.sent < segments {
        let (id, docs) = generator.trace(segments / 2);
        traces += 1;
        if traces.is_multiple_of(100) {
            report.sample_ids.push(id);
        }
        for doc in docs {
            datagram.clear();
            datagram.extend_from_slice(header);
            datagram.extend_from_slice(doc.as_bytes());
            // A full socket buffer is the receiver's loss, as with the real daemon: keep going.
            let _ = socket.send(&datagram);
            report.sent += 1;
            report.bytes += doc.len() as u64;
            report.entities += entity_count(&doc);
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(report.sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn percentiles(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] * 1000.0;
    json!({ "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0), "count": samples.len() })
}

async fn query(address: &str, ids: &[String], requests: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut batch_get = Vec::with_capacity(requests);
    for i in 0..requests {
        let id = &ids[(mix(i as u64) % ids.len() as u64) as usize];
        let (answer, seconds) =
            timed_post(&client, format!("http://{address}/Traces"), &json!({ "TraceIds": [id] })).await?;
        batch_get.push(seconds);
        if answer["Traces"].as_array().is_none_or(Vec::is_empty) {
            bail!("BatchGetTraces did not find {id}: {answer}");
        }
    }
    emit(json!({ "operation": "BatchGetTraces (one id, no time range)", "latency": percentiles(batch_get) }));

    let end = now();
    for (range, operation) in [
        ("TraceId", "GetTraceSummaries (one-minute window, first page of 100)"),
        ("Event", "GetTraceSummaries (one-minute window by end time, first page of 100)"),
    ] {
        let mut summaries = Vec::new();
        let mut found = 0usize;
        for i in 0..(requests / 10).max(10) {
            // One-minute windows somewhere in the last hour: the console's common query.
            let start = end - 60.0 - (mix(i as u64) % 3540) as f64;
            let (answer, seconds) = timed_post(
                &client,
                format!("http://{address}/TraceSummaries"),
                &json!({ "StartTime": start, "EndTime": start + 60.0, "TimeRangeType": range }),
            )
            .await?;
            summaries.push(seconds);
            found += answer["TraceSummaries"].as_array().map_or(0, Vec::len);
        }
        emit(json!({ "operation": operation, "latency": percentiles(summaries), "summaries_returned": found }));
    }
    Ok(())
}

async fn sampling(
    address: &str,
    clients: usize,
    rules: usize,
    rules_per_call: usize,
    calls: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    for r in 0..rules {
        let rule = json!({"SamplingRule": {"RuleName": format!("bench-{r:02}"), "ResourceARN": "*", "Priority": r + 1,
            "FixedRate": 0.05, "ReservoirSize": 100, "ServiceName": format!("service-{r:02}"), "ServiceType": "*",
            "Host": "*", "HTTPMethod": "*", "URLPath": "*", "Version": 1}});
        let response =
            client.post(format!("http://{address}/CreateSamplingRule")).body(rule.to_string()).send().await?;
        if !response.status().is_success() {
            let (status, text) = (response.status(), response.text().await?);
            // A rerun against the same server finds its rules already there.
            if !text.contains("already exists") {
                bail!("CreateSamplingRule answered {status}: {text}");
            }
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), format!("http://{address}/SamplingTargets"));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls as u64 {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let client_id = format!("{:024x}", mix(n % clients as u64) & ((1 << 96) - 1));
                let documents: Vec<Value> = (0..rules_per_call)
                    .map(|k| {
                        let rule = (mix(n.wrapping_mul(31) + k as u64) % rules as u64) as usize;
                        json!({"RuleName": format!("bench-{rule:02}"), "ClientID": client_id, "Timestamp": now(),
                               "RequestCount": 100 + mix(n + k as u64) % 900, "SampledCount": 10, "BorrowCount": 0})
                    })
                    .collect();
                let body = json!({ "SamplingStatisticsDocuments": documents }).to_string();
                let sent = Instant::now();
                let answer: Value = client.post(&url).body(body).send().await?.json().await?;
                latencies.push(sent.elapsed().as_secs_f64());
                if answer["SamplingTargetDocuments"].as_array().is_none_or(Vec::is_empty) {
                    bail!("GetSamplingTargets answered no targets: {answer}");
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(calls);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    emit(json!({
        "operation": "GetSamplingTargets",
        "clients": clients,
        "rules": rules,
        "rules_per_call": rules_per_call,
        "calls": latencies.len(),
        "seconds": seconds,
        "calls_per_second": latencies.len() as f64 / seconds,
        "latency": percentiles(latencies),
    }));
    Ok(())
}

async fn filters(address: &str, expressions: &[String], requests: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let end = now();
    for expression in expressions {
        let mut latencies = Vec::with_capacity(requests);
        let (mut scanned, mut matched) = (0u64, 0usize);
        for _ in 0..requests {
            let body = json!({"StartTime": end - 3600.0, "EndTime": end, "FilterExpression": expression});
            let (answer, seconds) = timed_post(&client, format!("http://{address}/TraceSummaries"), &body).await?;
            latencies.push(seconds);
            let Some(page) = answer["TraceSummaries"].as_array() else { bail!("{expression}: {answer}") };
            matched = page.len();
            scanned = answer["TracesProcessedCount"].as_u64().unwrap_or(0);
        }
        let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
        emit(json!({
            "operation": "GetTraceSummaries, last hour, first page",
            "filter": expression,
            "traces_scanned": scanned,
            "first_page": matched,
            "traces_scanned_per_second": scanned as f64 / mean,
            "latency": percentiles(latencies),
        }));
    }
    Ok(())
}

/// POSTs a JSON body and returns the JSON answer with the seconds it took.
async fn timed_post(client: &reqwest::Client, url: String, body: &Value) -> anyhow::Result<(Value, f64)> {
    let started = Instant::now();
    let answer = client.post(url).body(body.to_string()).send().await?.json().await?;
    Ok((answer, started.elapsed().as_secs_f64()))
}

async fn graph(address: &str, requests: usize, windows: &[u64]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for minutes in windows.iter().map(|&m| m as f64) {
        let mut latencies = Vec::with_capacity(requests);
        let mut nodes = 0;
        for _ in 0..requests {
            let end = now();
            let body = json!({"StartTime": end - minutes * 60.0, "EndTime": end});
            let (answer, seconds) = timed_post(&client, format!("http://{address}/ServiceGraph"), &body).await?;
            latencies.push(seconds);
            nodes = answer["Services"].as_array().map_or(0, Vec::len);
        }
        emit(json!({
            "operation": format!("GetServiceGraph, last {minutes} minutes"),
            "nodes": nodes,
            "latency": percentiles(latencies),
        }));
    }
    Ok(())
}

fn codecs(segments: u64, rounds: usize) -> anyhow::Result<()> {
    let generator = Generator::new(3600);
    let mut traces = Vec::new();
    let mut count = 0;
    while count < segments {
        let (id, docs) = generator.trace(segments / 2);
        count += docs.len() as u64;
        traces.push((id, docs));
    }
    let bodies: Vec<Vec<u8>> = traces
        .iter()
        .flat_map(|(_, docs)| docs)
        .collect::<Vec<_>>()
        .chunks(50)
        .map(|docs| serde_json::to_vec(&json!({ "TraceSegmentDocuments": docs })))
        .collect::<Result<_, _>>()?;
    // Blocks hold whole traces in trace-id order, each document as u32 length + bytes.
    traces.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut chunks = vec![Vec::new()];
    for (_, docs) in &traces {
        let region: usize = docs.iter().map(|d| 4 + d.len()).sum();
        if chunks.last().is_some_and(|c: &Vec<u8>| !c.is_empty() && c.len() + region > 512 << 10) {
            chunks.push(Vec::new());
        }
        let chunk = chunks.last_mut().expect("one chunk at least");
        for doc in docs {
            chunk.extend_from_slice(&(doc.len() as u32).to_le_bytes());
            chunk.extend_from_slice(doc.as_bytes());
        }
    }
    let raw: usize = chunks.iter().map(Vec::len).sum();
    let time = |f: &mut dyn FnMut() -> anyhow::Result<usize>| -> anyhow::Result<(f64, usize)> {
        let start = std::time::Instant::now();
        let out = f()?;
        Ok((start.elapsed().as_secs_f64(), out))
    };
    let documents: Vec<&str> = traces.iter().flat_map(|(_, docs)| docs.iter().map(String::as_str)).collect();
    // Measured first, while the heap has nothing freed to hand out again: the memory a live
    // document holds while it waits for its block (BENCHMARKS.md).
    let resident = resident_bytes()?;
    let live = documents.iter().map(|doc| stored_document(doc)).collect::<anyhow::Result<Vec<_>>>()?;
    let live_bytes_per_document = (resident_bytes()? - resident) as f64 / live.len() as f64;
    let text_bytes: usize = documents.iter().map(|doc| doc.len()).sum();
    drop(live);
    let (mut serde, mut fast, mut zstd_default, mut zstd_small) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (mut parse, mut skip, mut tree) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut default_bytes, mut small_bytes) = (0, 0);
    for _ in 0..rounds {
        let (seconds, _) = time(&mut || {
            let mut n = 0;
            for body in &bodies {
                let request: roentgen_model::api::PutTraceSegmentsRequest = serde_json::from_slice(body)?;
                n += request.trace_segment_documents.map_or(0, |d| d.len());
            }
            Ok(n)
        })?;
        serde = serde.min(seconds);
        let (seconds, _) = time(&mut || {
            let mut n = 0;
            for body in &bodies {
                let request = roentgen_model::api::PutTraceSegmentsRequest::from_json(body)?;
                n += request.trace_segment_documents.map_or(0, |d| d.len());
            }
            Ok(n)
        })?;
        fast = fast.min(seconds);
        let each_document = |read: &dyn Fn(&str) -> anyhow::Result<()>| {
            time(&mut || documents.iter().try_for_each(|doc| read(doc)).map(|()| documents.len()))
        };
        let (seconds, _) = each_document(&|doc| {
            roentgen_model::parse_document_text(doc, roentgen_model::MAX_DOCUMENT_BYTES)?;
            Ok(())
        })?;
        parse = parse.min(seconds);
        let (seconds, _) = each_document(&|doc| Ok(serde_json::from_str::<serde::de::IgnoredAny>(doc).map(drop)?))?;
        skip = skip.min(seconds);
        let (seconds, _) = each_document(&|doc| Ok(serde_json::from_str::<Value>(doc).map(drop)?))?;
        tree = tree.min(seconds);
        for hash_log in [None, Some(12)] {
            let (seconds, bytes) = time(&mut || {
                let mut compressor = zstd::bulk::Compressor::new(1)?;
                if let Some(log) = hash_log {
                    compressor.set_parameter(zstd::zstd_safe::CParameter::HashLog(log))?;
                }
                chunks.iter().map(|c| Ok(compressor.compress(c)?.len())).sum()
            })?;
            match hash_log {
                None => (zstd_default, default_bytes) = (zstd_default.min(seconds), bytes),
                Some(_) => (zstd_small, small_bytes) = (zstd_small.min(seconds), bytes),
            }
        }
    }
    let per_document = |seconds: f64| seconds * 1e6 / count as f64;
    let megabytes_per_second = |seconds: f64| raw as f64 / seconds / 1e6;
    emit(json!({
        "segments": count,
        "rounds": rounds,
        "put_body_us_per_document": { "serde_json": per_document(serde), "roentgen": per_document(fast), "ratio": fast / serde },
        // A live document's resident memory, its text's and its parsed form's together.
        "live_document_bytes": { "text": text_bytes as f64 / count as f64, "resident": live_bytes_per_document },
        // The whole parse (read, validate, the parsed form) against serde_json only stepping
        // over the same document, which no JSON reader can beat by much, and building a tree.
        "document_us": {
            "parse_document": per_document(parse),
            "serde_json_skip": per_document(skip),
            "serde_json_value": per_document(tree),
            "parse_to_skip": parse / skip,
        },
        "document_chunks": {
            "raw_bytes": raw,
            "zstd_level_1": { "bytes": default_bytes, "ratio": raw as f64 / default_bytes as f64, "mb_per_second": megabytes_per_second(zstd_default) },
            "zstd_level_1_hash_log_12": { "bytes": small_bytes, "ratio": raw as f64 / small_bytes as f64, "mb_per_second": megabytes_per_second(zstd_small) },
        },
    }));
    Ok(())
}

/// Blocks a compaction merges at the least, and so how many the pipeline writes to merge.
const COMPACTED_BLOCKS: usize = 8;

/// Writes each part as a block of its own, then merges them: the CPU of the merge, and the
/// merged block's bytes.
async fn compact_blocks(parts: &[&[String]], config: &roentgen_store::StoreConfig) -> anyhow::Result<(Duration, u64)> {
    let store = roentgen_store::Store::open(config.clone()).await?;
    for part in parts {
        for batch in part.chunks(50) {
            let docs = batch.iter().map(|raw| stored_document(raw)).collect::<anyhow::Result<Vec<_>>>()?;
            store.submit(docs).await?;
        }
        store.sync().await?;
        store.flush_all().await?;
    }
    let cpu = process_cpu()?;
    let merged = store.compact().await?;
    let spent = process_cpu()? - cpu;
    store.close().await?;
    let bytes = block_bytes(&config.data_dir)?;
    std::fs::remove_dir_all(&config.data_dir)?;
    if merged != parts.len() {
        bail!("the compaction merged {merged} blocks of {}", parts.len());
    }
    Ok((spent, bytes))
}

/// `count` blocks of one small trace each, a minute of trace ids apart, the newest two hours old.
async fn write_old_blocks(store: &roentgen_store::Store, count: u32) -> anyhow::Result<()> {
    let newest = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as u32 - 7200;
    for n in 1..=count {
        let epoch = newest - (count - n) * 60;
        let raw = format!(
            r#"{{"trace_id":"1-{epoch:08x}-{n:024x}","id":"{n:016x}","name":"old","start_time":{epoch},"end_time":{epoch}.5}}"#
        );
        store.submit(vec![stored_document(&raw)?]).await?;
        store.flush_all().await?;
    }
    Ok(())
}

/// A document parsed as `PutTraceSegments` parses it, ready for the store.
fn stored_document(raw: &str) -> anyhow::Result<Arc<roentgen_store::StoredDocument>> {
    Ok(Arc::new(roentgen_store::StoredDocument {
        raw: raw.into(),
        parsed: roentgen_model::parse_document_text(raw, roentgen_model::MAX_DOCUMENT_BYTES)?,
        source: roentgen_store::Source::Api,
    }))
}

/// The bytes of the data files of the blocks in a data dir.
fn block_bytes(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    std::fs::read_dir(data_dir.join("blocks"))?
        .map(|block| Ok(std::fs::metadata(block?.path().join("data"))?.len()))
        .sum()
}

/// The best of `rounds` of each way of writing a WAL generation: into a new file, and over the
/// file the round before wrote. CPU includes the kernel's, where the difference lies.
fn fsync(dir: &std::path::Path, writes: usize, bytes: usize, rounds: usize) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("roentgen-loadgen-fsync.tmp");
    let chunk = vec![b'x'; bytes];
    let measure = |file: &mut std::fs::File| -> anyhow::Result<(f64, f64)> {
        let (cpu, wall) = (process_cpu()?, Instant::now());
        for _ in 0..writes {
            file.write_all(&chunk)?;
            file.sync_data()?;
        }
        Ok(((process_cpu()? - cpu).as_secs_f64(), wall.elapsed().as_secs_f64()))
    };
    let (mut new, mut recycled) = ((f64::MAX, f64::MAX), (f64::MAX, f64::MAX));
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&path);
        let (cpu, wall) = measure(&mut std::fs::File::create(&path)?)?;
        new = (new.0.min(cpu), new.1.min(wall));
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.seek(SeekFrom::Start(0))?;
        let (cpu, wall) = measure(&mut file)?;
        recycled = (recycled.0.min(cpu), recycled.1.min(wall));
    }
    std::fs::remove_file(&path)?;
    let per_commit = |seconds: f64| 1e6 * seconds / writes as f64;
    emit(json!({
        "writes": writes,
        "bytes_per_write": bytes,
        "rounds": rounds,
        "new_file": { "cpu_us_per_commit": per_commit(new.0), "wall_us_per_commit": per_commit(new.1) },
        "over_a_spare": { "cpu_us_per_commit": per_commit(recycled.0), "wall_us_per_commit": per_commit(recycled.1) },
        "cpu_ratio": recycled.0 / new.0,
        "wall_ratio": recycled.1 / new.1,
    }));
    Ok(())
}

/// Times filling `megabytes` of memory twice, with the page faults each time took.
fn pages(megabytes: usize) -> anyhow::Result<()> {
    let bytes = megabytes.checked_mul(1 << 20).filter(|&b| b > 0).context("--megabytes must be from 1 to 2^44")?;
    let touch = || -> anyhow::Result<(f64, u64)> {
        let faults = minor_faults()?;
        let start = std::time::Instant::now();
        let mut memory = Vec::new();
        memory.try_reserve_exact(bytes).with_context(|| format!("{megabytes} MiB could not be had"))?;
        memory.resize(bytes, 1u8);
        let seconds = start.elapsed().as_secs_f64();
        drop(std::hint::black_box(memory));
        Ok((seconds, minor_faults()? - faults))
    };
    let (fresh, fresh_faults) = touch()?;
    let (again, again_faults) = touch()?;
    let pages = (bytes / 4096) as f64;
    emit(json!({
        "megabytes": megabytes,
        "new_memory": { "us_per_page": fresh * 1e6 / pages, "page_faults": fresh_faults },
        "freed_and_taken_again": { "us_per_page": again * 1e6 / pages, "page_faults": again_faults },
    }));
    Ok(())
}

/// Pages this process has touched for the first time.
fn minor_faults() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields = stat.rsplit_once(')').context("stat has no command")?.1;
    Ok(fields.split_whitespace().nth(7).context("stat has no minflt field")?.parse()?)
}

/// This process's resident memory (`statm` counts 4 KiB pages on x86-64 Linux).
fn resident_bytes() -> anyhow::Result<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: i64 = statm.split_whitespace().nth(1).context("statm has no resident field")?.parse()?;
    Ok(pages * 4096)
}

/// CPU time of this process so far, its ended threads' included: a compaction builds on a
/// thread that ends with it, and the blocking pool's threads end when idle.
fn process_cpu() -> anyhow::Result<Duration> {
    Ok(nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?.into())
}

/// Traces the pipeline reads back from its block once it is written.
const LOOKUPS: usize = 2_000;

async fn pipeline(segments: u64, rounds: usize, block_chunk_bytes: Option<u32>, blocks: u32) -> anyhow::Result<()> {
    let block_chunk_bytes = block_chunk_bytes.unwrap_or(roentgen_store::StoreConfig::default().block_chunk_bytes);
    let generator = Generator::new(3600);
    let mut documents = Vec::new();
    let mut trace_ids = Vec::new();
    // Where each trace's documents start, so that blocks can be cut between traces.
    let mut trace_starts = Vec::new();
    let traces = segments / 2;
    while (documents.len() as u64) < segments {
        let (id, docs) = generator.trace(traces);
        trace_ids.push(roentgen_model::TraceId::parse(&id)?);
        trace_starts.push(documents.len());
        documents.extend(docs);
    }
    // The compaction's input: as many blocks as make a group, each a slice of the traces.
    let parts: Vec<&[String]> = (0..COMPACTED_BLOCKS)
        .map(|part| {
            let bound = |part: usize| trace_starts.get(part * trace_starts.len() / COMPACTED_BLOCKS).copied();
            &documents[bound(part).unwrap_or(documents.len())..bound(part + 1).unwrap_or(documents.len())]
        })
        .collect();
    // Traces read back from the block, spread over it: what `BatchGetTraces` does for one id.
    let lookups: Vec<_> = trace_ids.iter().step_by((trace_ids.len() / LOOKUPS).max(1)).copied().collect();
    let raw_bytes: usize = documents.iter().map(String::len).sum();
    let (mut parse, mut append, mut flush, mut lookup) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (mut compaction, mut compacted_bytes) = (f64::MAX, 0);
    let mut block_bytes = 0;
    // The flusher's own phases (thread CPU), from the store's counters.
    let (mut summaries, mut rollups, mut encode) = (f64::MAX, f64::MAX, f64::MAX);
    for round in 0..rounds {
        let dir = std::env::temp_dir().join(format!("roentgen-pipeline-{}-{round}", std::process::id()));
        let config_for = |data_dir| roentgen_store::StoreConfig {
            data_dir,
            // Only the measured calls write blocks.
            flush_interval_seconds: 1e6,
            compaction_interval_seconds: 1e6,
            block_chunk_bytes,
            ..Default::default()
        };
        let store = roentgen_store::Store::open(config_for(dir.clone())).await?;
        write_old_blocks(&store, blocks).await?;
        let old_block_bytes = self::block_bytes(&dir)?;
        let cpu = process_cpu()?;
        let mut parsed = Vec::with_capacity(documents.len());
        for raw in &documents {
            parsed.push(stored_document(raw)?);
        }
        let parsed_at = process_cpu()?;
        let mut rest = parsed.as_slice();
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(rest.len().min(50));
            store.submit(batch.to_vec()).await?;
            rest = tail;
        }
        drop(parsed);
        store.sync().await?;
        let appended_at = process_cpu()?;
        store.flush_all().await?;
        let flushed_at = process_cpu()?;
        for &id in &lookups {
            if store.trace(id).await?.is_none() {
                bail!("trace {id} was not found in its block");
            }
        }
        let looked_up_at = process_cpu()?;
        block_bytes = self::block_bytes(&dir)? - old_block_bytes;
        let stats = store.stats();
        store.close().await?;
        std::fs::remove_dir_all(&dir)?;
        let (compacted, bytes) = compact_blocks(&parts, &config_for(dir.with_extension("compaction"))).await?;
        compacted_bytes = bytes;
        let per_segment = |d: Duration| d.as_secs_f64() * 1e6 / documents.len() as f64;
        let phase = |nanos: &AtomicU64| per_segment(Duration::from_nanos(nanos.load(Ordering::Relaxed)));
        summaries = summaries.min(phase(&stats.flush_summaries_nanos));
        rollups = rollups.min(phase(&stats.flush_rollups_nanos));
        encode = encode.min(phase(&stats.flush_encode_nanos));
        parse = parse.min(per_segment(parsed_at - cpu));
        append = append.min(per_segment(appended_at - parsed_at));
        flush = flush.min(per_segment(flushed_at - appended_at));
        lookup = lookup.min((looked_up_at - flushed_at).as_secs_f64() * 1e6 / lookups.len() as f64);
        compaction = compaction.min(per_segment(compacted));
    }
    emit(json!({
        "segments": documents.len(),
        "mean_document_bytes": raw_bytes / documents.len(),
        "rounds": rounds,
        "cpu_us_per_segment": { "parse": parse, "append": append, "flush": flush, "total": parse + append + flush },
        "flush_phases_us_per_segment": { "summaries": summaries, "rollups": rollups, "encode": encode },
        // What merging the segment's small block with others costs it later, once.
        "compaction_cpu_us_per_segment": compaction,
        "compacted_block_bytes_per_segment": compacted_bytes as f64 / documents.len() as f64,
        "block_chunk_bytes": block_chunk_bytes,
        "blocks_before": blocks,
        "block_bytes_per_segment": block_bytes as f64 / documents.len() as f64,
        "lookups": lookups.len(),
        "cpu_us_per_lookup": lookup,
    }));
    Ok(())
}
