//! Crash safety of the real binary: kill -9 while clients write and blocks are being flushed,
//! restart, and find every segment whose `PutTraceSegments` had returned.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

struct Roentgen {
    child: Child,
    base: String,
}

/// A failing test must not leave its server running (and holding the test's output open).
impl Drop for Roentgen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `roentgen serve` on ephemeral ports and reads the bound HTTP address from its log.
fn start(data_dir: &Path) -> Roentgen {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roentgen"))
        .args(["serve", "--udp-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("ROENTGEN_STORE__TRACE_IDLE_SECONDS", "0.05")
        .env("ROENTGEN_STORE__FLUSH_INTERVAL_SECONDS", "0.1")
        .env("ROENTGEN_QUERY__TRACES_PAGE_SIZE", "100")
        .stderr(Stdio::piped())
        .spawn()
        .expect("the roentgen binary starts");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let base = loop {
        let line = lines.next().expect("roentgen logs its listeners").expect("readable log");
        if line.contains("X-Ray API") {
            let address = line.rsplit("address=").next().expect("address field").trim().to_owned();
            break format!("http://{address}");
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Roentgen { child, base }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn document(trace: &str, n: u64) -> String {
    let t = now();
    format!(
        r#"{{"trace_id":"{trace}","id":"{n:016x}","name":"crash-test","start_time":{t},"end_time":{},"metadata":{{"pad":"{}"}}}}"#,
        t + 0.01,
        "x".repeat(200)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_segments_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let epoch = now() as u32;
    let deadline = Instant::now() + Duration::from_millis(1500);

    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, base, acked) = (client.clone(), server.base.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline + Duration::from_secs(5) {
                let traces: Vec<String> =
                    (0..10).map(|i| format!("1-{epoch:08x}-{:012x}{:012x}", w, n * 10 + i)).collect();
                let docs: Vec<String> =
                    traces.iter().enumerate().map(|(i, t)| document(t, n * 10 + i as u64 + 1)).collect();
                let sent = client
                    .post(format!("{base}/TraceSegments"))
                    .json(&json!({"TraceSegmentDocuments": docs}))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                let Ok(body) = response.json::<Value>().await else { return };
                assert_eq!(body["UnprocessedTraceSegments"], json!([]));
                acked.lock().unwrap().extend(traces);
                n += 1;
                // Keep the volume modest: what matters is that writes are in flight at the kill.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep_until(deadline.into()).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the writers got going before the kill ({} traces)", acked.len());

    let mut server = start(dir.path());
    let mut missing = Vec::new();
    for chunk in acked.chunks(100) {
        let mut token = Value::Null;
        loop {
            let body: Value = client
                .post(format!("{}/Traces", server.base))
                .json(&json!({"TraceIds": chunk, "NextToken": token}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let unprocessed = body["UnprocessedTraceIds"].as_array();
            missing.extend(unprocessed.unwrap_or_else(|| panic!("BatchGetTraces failed: {body}")).iter().cloned());
            token = body.get("NextToken").cloned().unwrap_or(Value::Null);
            if token.is_null() {
                break;
            }
        }
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged traces lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path());
    let second = Command::new(env!("CARGO_BIN_EXE_roentgen"))
        .args(["serve", "--udp-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another roentgen process"), "{stderr}");
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let child = &mut server.child;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "roentgen did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
