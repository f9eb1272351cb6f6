//! The X-Ray API and the UDP receiver against a running server on loopback.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roentgen_server::{Config, RunningServer};
use serde_json::{Value, json};

struct Harness {
    server: Option<RunningServer>,
    client: reqwest::Client,
    base: String,
    _dir: tempfile::TempDir,
}

/// One clock reading per test process, so that every helper agrees on "now".
fn now() -> f64 {
    static NOW: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64())
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        udp_address: "127.0.0.1:0".into(),
        http_address: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.store.flush_interval_seconds = 3600.0;
    config.finish().unwrap()
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        change(&mut config);
        let server = RunningServer::start(config).await.unwrap();
        let base = format!("http://{}", server.http_address);
        Self { server: Some(server), client: reqwest::Client::new(), base, _dir: dir }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self.client.post(format!("{}{path}", self.base)).body(body).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, _, value) = self.post_raw(path, body.to_string()).await;
        (status, value)
    }

    async fn error(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String, String) {
        let (status, headers, value) = self.post_raw(path, body).await;
        let code = headers.get("x-amzn-ErrorType").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(headers.contains_key("x-amzn-RequestId"));
        (status, code, value["message"].as_str().unwrap_or_default().to_owned())
    }

    async fn put(&self, docs: &[String]) -> Value {
        let (status, body) = self.post("/TraceSegments", json!({ "TraceSegmentDocuments": docs })).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Follows `NextToken` through every page of `GetTraceSummaries`, collecting trace ids.
    async fn summary_pages(&self, mut request: Value) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let (status, body) = self.post("/TraceSummaries", request.clone()).await;
            assert_eq!(status, 200, "{body}");
            seen.extend(
                body["TraceSummaries"].as_array().unwrap().iter().map(|t| t["Id"].as_str().unwrap().to_owned()),
            );
            match body.get("NextToken") {
                Some(token) => request["NextToken"] = token.clone(),
                None => return seen,
            }
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.client.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .parse()
            .unwrap()
    }

    /// The segments `BatchGetTraces` finds of `trace` once they are `expected`, or after 2 s:
    /// UDP documents are on their way through the WAL when they are counted accepted.
    async fn segments_reaching(&self, trace: &str, expected: usize) -> usize {
        let mut found = 0;
        for _ in 0..100 {
            let (_, body) = self.post("/Traces", json!({"TraceIds": [trace]})).await;
            found = body["Traces"][0]["Segments"].as_array().map_or(0, Vec::len);
            if found == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        found
    }

    /// The metric once it reaches `at_least`, or as it is after 20 s.
    async fn metric_reaching(&self, name: &str, at_least: f64) -> f64 {
        let mut value = 0.0;
        for _ in 0..200 {
            value = self.metric(name).await;
            if value >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        value
    }
}

fn trace_id(n: u32) -> String {
    format!("1-{:08x}-{:024x}", now() as u32 - 60, 0xabc000 + n)
}

fn segment(trace: &str, id: u64, extra: &str) -> String {
    let t = now() - 30.0;
    format!(
        r#"{{"trace_id":"{trace}","id":"{id:016x}","name":"checkout","start_time":{t},"end_time":{},{extra}"k":1}}"#,
        t + 0.25
    )
}

#[tokio::test]
async fn put_and_read_back() {
    let h = Harness::start().await;
    let t = trace_id(1);
    let root = segment(
        &t,
        1,
        r#""http":{"request":{"method":"POST","url":"https://shop/checkout","user_agent":"curl","client_ip":"10.0.0.1"},"response":{"status":503}},"fault":true,"user":"alice","annotations":{"tenant":"acme","attempt":2,"vip":true},"metadata":{"default":{"cart":[1,2,3]}},"#,
    );
    let child = segment(&t, 2, r#""parent_id":"0000000000000001","error":true,"throttle":true,"#);
    let body = h.put(&[root.clone(), child.clone()]).await;
    assert_eq!(body, json!({"UnprocessedTraceSegments": []}));

    let (status, body) = h.post("/Traces", json!({"TraceIds": [t, trace_id(99), "not-a-trace"]})).await;
    assert_eq!(status, 200);
    let trace = &body["Traces"][0];
    assert_eq!(trace["Id"], t);
    assert_eq!(trace["LimitExceeded"], false);
    assert!((trace["Duration"].as_f64().unwrap() - 0.25).abs() < 1e-6);
    let documents: Vec<&str> =
        trace["Segments"].as_array().unwrap().iter().map(|s| s["Document"].as_str().unwrap()).collect();
    assert!(
        documents.contains(&root.as_str()) && documents.contains(&child.as_str()),
        "documents come back byte for byte"
    );
    assert_eq!(body["UnprocessedTraceIds"], json!([trace_id(99), "not-a-trace"]));

    let (status, body) = h.post("/TraceSummaries", json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0})).await;
    assert_eq!(status, 200, "{body}");
    let s = &body["TraceSummaries"][0];
    assert_eq!(s["Id"], t);
    assert_eq!(
        (s["HasFault"].clone(), s["HasError"].clone(), s["HasThrottle"].clone()),
        (json!(true), json!(false), json!(true))
    );
    assert_eq!(
        s["Http"],
        json!({"HttpURL":"https://shop/checkout","HttpStatus":503,"HttpMethod":"POST","UserAgent":"curl","ClientIp":"10.0.0.1"})
    );
    assert_eq!(s["Annotations"]["tenant"][0]["AnnotationValue"], json!({"StringValue": "acme"}));
    assert_eq!(s["Annotations"]["attempt"][0]["AnnotationValue"], json!({"NumberValue": 2.0}));
    assert_eq!(s["Annotations"]["vip"][0]["AnnotationValue"], json!({"BooleanValue": true}));
    assert_eq!(s["Annotations"]["tenant"][0]["ServiceIds"][0]["Name"], "checkout");
    assert_eq!(s["Users"], json!([{"UserName": "alice", "ServiceIds": [{"Name": "checkout", "Names": ["checkout"]}]}]));
    assert_eq!(s["EntryPoint"]["Name"], "checkout");
    assert_eq!(s["Revision"], 1);
    assert_eq!(body["TracesProcessedCount"], 1);

    let window =
        |filter: &str| json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0, "FilterExpression": filter});
    let (_, body) =
        h.post("/TraceSummaries", window("annotation.tenant = \"acme\" AND fault AND user = \"alice\"")).await;
    assert_eq!(body["TraceSummaries"][0]["Id"], t);
    let (_, body) = h.post("/TraceSummaries", window("annotation.tenant = \"other\"")).await;
    assert_eq!((body["TraceSummaries"].as_array().unwrap().len(), body["TracesProcessedCount"].clone()), (0, json!(1)));
}

#[tokio::test]
async fn rejected_documents_are_listed_and_the_rest_kept() {
    let h = Harness::start().await;
    let t = trace_id(2);
    let good = segment(&t, 1, "");
    let docs = vec![
        good.clone(),
        segment("1-zzz", 2, ""),
        r#"{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"0000000000000003","name":"a,b","start_time":1,"end_time":2}"#.to_owned(),
        "{not json".to_owned(),
        format!(r#"{{"trace_id":"{t}","id":"0000000000000005","name":"x","start_time":1,"subsegments":[{{"id":"0000000000000006","name":"y","start_time":1}}],"in_progress":true}}"#),
    ];
    let body = h.put(&docs).await;
    let unprocessed = body["UnprocessedTraceSegments"].as_array().unwrap();
    let codes: Vec<(&str, &str)> =
        unprocessed.iter().map(|u| (u["Id"].as_str().unwrap_or("null"), u["ErrorCode"].as_str().unwrap())).collect();
    assert_eq!(
        codes,
        [
            ("0000000000000002", "InvalidTraceId"),
            ("0000000000000003", "InvalidName"),
            ("null", "InvalidSegment"),
            ("0000000000000005", "MissingEndTime")
        ]
    );
    assert!(unprocessed[3]["Message"].as_str().unwrap().starts_with("Invalid subsegment. ErrorCode: MissingEndTime"));
    let (_, body) = h.post("/Traces", json!({"TraceIds": [t]})).await;
    assert_eq!(body["Traces"][0]["Segments"].as_array().unwrap().len(), 1);
    assert_eq!(h.metric("roentgen_segments_rejected_total{source=\"api\",reason=\"InvalidName\"}").await, 1.0);
    assert_eq!(h.metric("roentgen_segments_accepted_total{source=\"api\"}").await, 1.0);
}

#[tokio::test]
async fn hostile_bodies_get_aws_errors_and_the_server_keeps_serving() {
    let h = Harness::start().await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"TraceSegmentDocuments\": [".to_vec(), 400, "SerializationException"),
        (b"{\"TraceSegmentDocuments\": \"x\"}".to_vec(), 400, "SerializationException"),
        (b"{\"TraceSegmentDocuments\": [1e999]}".to_vec(), 400, "SerializationException"),
        (b"[]".to_vec(), 400, "SerializationException"),
        (vec![b'{', 0xff, 0xfe, b'}'], 400, "SerializationException"),
        (format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), 400, "SerializationException"),
        (b"{}".to_vec(), 400, "InvalidRequestException"),
        (b"".to_vec(), 400, "InvalidRequestException"),
        (vec![b' '; 10 * 1024 * 1024], 413, "RequestEntityTooLargeException"),
    ];
    for (body, status, code) in cases {
        let (got_status, got_code, message) = h.error("/TraceSegments", body).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{message}");
        assert!(!message.is_empty());
    }
    let too_many: Vec<String> = (0..51).map(|i| segment(&trace_id(3), i + 1, "")).collect();
    let (status, code, message) =
        h.error("/TraceSegments", json!({"TraceSegmentDocuments": too_many}).to_string()).await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
    assert!(message.contains("at most 50"), "{message}");

    let (status, code, message) = h
        .error("/TraceSummaries", json!({"StartTime": 1, "EndTime": 2, "FilterExpression": "fault AND"}).to_string())
        .await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
    assert_eq!(message, "FilterExpression: expected a condition, found the end of the expression at column 10");
    let (_, code, message) = h
        .error(
            "/TraceSummaries",
            json!({"StartTime": 1, "EndTime": 2, "FilterExpression": "group.name = \"x\""}).to_string(),
        )
        .await;
    assert_eq!(code, "InvalidRequestException");
    assert!(message.contains("no group with the name \"x\""), "{message}");
    let (_, code, message) = h.error("/TraceSummaries", json!({"StartTime": 5, "EndTime": 2}).to_string()).await;
    assert_eq!(code, "InvalidRequestException", "{message}");
    let (_, code, _) =
        h.error("/TraceSummaries", json!({"StartTime": 1, "EndTime": 2, "TimeRangeType": "Wall"}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    let (_, code, _) = h.error("/TraceSummaries", json!({"EndTime": 2}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    let (_, code, _) =
        h.error("/TraceSummaries", json!({"StartTime": 1, "EndTime": 2, "NextToken": "bogus"}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    let (_, code, _) = h.error("/Traces", json!({"TraceIds": ["x"], "NextToken": "t1.5.0"}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    let (status, code, message) = h.error("/InsightSummaries", "{}").await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequestException"));
    assert!(message.contains("GetInsightSummaries is not available"), "{message}");
    let (status, code, _) = h.error("/NoSuchOperation", "{}").await;
    assert_eq!((status, code.as_str()), (404, "UnknownOperationException"));
    for path in ["/Groups", "/GetSamplingRules", "/SamplingStatisticSummaries"] {
        let (status, code, message) = h.error(path, json!({"NextToken": "bogus"}).to_string()).await;
        assert_eq!((status, code.as_str()), (400, "InvalidRequestException"), "{path}");
        assert!(message.starts_with("NextToken is not valid"), "{path}: {message}");
        let (_, code, _) = h.error(path, "5").await;
        assert_eq!(code, "SerializationException", "{path}");
        assert_eq!(h.post(path, json!({"NextToken": ""})).await.0, 200, "{path}");
    }

    h.put(&[segment(&trace_id(4), 1, "")]).await;
}

#[tokio::test]
async fn batch_get_traces_pages() {
    let h = Harness::start().await;
    let ids: Vec<String> = (10..35).map(trace_id).collect();
    let docs: Vec<String> = ids.iter().map(|t| segment(t, 1, "")).collect();
    for chunk in docs.chunks(50) {
        h.put(chunk).await;
    }
    let mut seen = Vec::new();
    let mut token = Value::Null;
    loop {
        let (status, body) = h.post("/Traces", json!({"TraceIds": ids, "NextToken": token})).await;
        assert_eq!(status, 200);
        seen.extend(body["Traces"].as_array().unwrap().iter().map(|t| t["Id"].as_str().unwrap().to_owned()));
        token = body.get("NextToken").cloned().unwrap_or(Value::Null);
        if token.is_null() {
            break;
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn summaries_page_newest_first_across_blocks_and_live() {
    let h = Harness::start().await;
    let random = |n: u32| (u128::from(n) * 0x9e37_79b9_7f4a_7c15_f39c_c060) & ((1 << 96) - 1);
    let ids: Vec<String> =
        (0..250u32).map(|n| format!("1-{:08x}-{:024x}", now() as u32 - 1000 + n, random(n))).collect();
    for chunk in ids[..150].chunks(50) {
        h.put(&chunk.iter().map(|t| segment(t, 1, "")).collect::<Vec<_>>()).await;
    }
    h.server().store().flush_all().await.unwrap();
    for chunk in ids[150..].chunks(50) {
        h.put(&chunk.iter().map(|t| segment(t, 1, "")).collect::<Vec<_>>()).await;
    }
    let all = h.summary_pages(json!({"StartTime": now() - 2000.0, "EndTime": now()})).await;
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(all, expected);

    let sampled = h
        .summary_pages(json!({"StartTime": now() - 2000.0, "EndTime": now(), "Sampling": true,
            "SamplingStrategy": {"Name": "FixedRate", "Value": 0.5}}))
        .await;
    assert!(
        (75..175).contains(&sampled.len()),
        "a fixed rate of 0.5 keeps about half of 250 traces, got {}",
        sampled.len()
    );
    assert!(sampled.iter().all(|id| all.contains(id)));
}

#[tokio::test]
async fn udp_datagrams_good_and_bad() {
    let h = Harness::start().await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = h.server().udp_address;
    let t = trace_id(5);
    let header = "{\"format\":\"json\",\"version\":1}\n";
    let bad: Vec<Vec<u8>> = vec![
        b"no header at all".to_vec(),
        header.as_bytes().to_vec(),
        format!("{{\"format\":\"json\",\"version\":2}}\n{}", segment(&t, 9, "")).into_bytes(),
        format!("{header}{{\"truncated\":").into_bytes(),
        [header.as_bytes(), &[0xff, 0xfe, 0x00]].concat(),
        format!("{header}{}", segment(&t, 8, "").replace("checkout", "bad,name")).into_bytes(),
        vec![0u8; 65_000],
    ];
    for datagram in &bad {
        socket.send_to(datagram, target).unwrap();
    }
    socket.send_to(format!("{header}{}", segment(&t, 1, "")).as_bytes(), target).unwrap();
    socket
        .send_to(format!("{{\"format\": \"json\", \"version\": 1}}\n{}", segment(&t, 2, "")).as_bytes(), target)
        .unwrap();

    assert_eq!(h.segments_reaching(&t, 2).await, 2);
    assert_eq!(h.metric("roentgen_udp_datagrams_dropped_total{reason=\"missing_header\"}").await, 2.0);
    assert_eq!(h.metric("roentgen_udp_datagrams_dropped_total{reason=\"invalid_header\"}").await, 1.0);
    assert_eq!(h.metric("roentgen_udp_datagrams_dropped_total{reason=\"missing_document\"}").await, 1.0);
    assert_eq!(h.metric("roentgen_segments_rejected_total{source=\"udp\",reason=\"InvalidSegment\"}").await, 2.0);
    assert_eq!(h.metric("roentgen_segments_rejected_total{source=\"udp\",reason=\"InvalidName\"}").await, 1.0);
    assert_eq!(h.metric("roentgen_segments_accepted_total{source=\"udp\"}").await, 2.0);
}

/// A burst of datagrams, several system calls' worth, each a segment: every one is stored.
#[tokio::test]
async fn udp_bursts_are_received_whole() {
    let h = Harness::start().await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = trace_id(7);
    for id in 1..=100 {
        let datagram = format!("{{\"format\":\"json\",\"version\":1}}\n{}", segment(&t, id, ""));
        socket.send_to(datagram.as_bytes(), h.server().udp_address).unwrap();
    }
    assert_eq!(h.segments_reaching(&t, 100).await, 100);
    assert_eq!(h.metric_reaching("roentgen_segments_accepted_total{source=\"udp\"}", 100.0).await, 100.0);
}

/// A server whose disk stays under `store.min_free_bytes` holds segments back for a while, then
/// refuses them: from the API with AWS's `ServiceUnavailable`, which the SDKs retry, and from
/// UDP by counting them. It goes on answering reads, and its UDP receiver goes on receiving.
#[tokio::test]
async fn without_room_on_disk_segments_are_refused_and_reads_go_on() {
    let h = Harness::start_with(|c| c.store.min_free_bytes = u64::MAX).await;
    let t = trace_id(6);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = format!("{{\"format\":\"json\",\"version\":1}}\n{}", segment(&t, 2, ""));
    socket.send_to(datagram.as_bytes(), h.server().udp_address).unwrap();
    let body = json!({ "TraceSegmentDocuments": [segment(&t, 1, "")] }).to_string();
    let (status, code, message) = h.error("/TraceSegments", body).await;
    assert_eq!((status, code.as_str()), (503, "ServiceUnavailable"));
    assert!(message.contains("store.min_free_bytes") && message.contains("bytes free"), "{message}");

    socket.send_to(datagram.as_bytes(), h.server().udp_address).unwrap();
    let refused = h.metric_reaching("roentgen_segments_refused_disk_full_total", 3.0).await;
    assert_eq!(refused, 3.0, "the API's segment and two datagrams refused");
    assert_eq!(h.metric("roentgen_segments_accepted_total{source=\"udp\"}").await, 0.0);
    assert!(h.metric("roentgen_disk_free_bytes").await > 0.0);

    let (status, body) = h.post("/Traces", json!({"TraceIds": [t]})).await;
    assert_eq!((status, &body["Traces"]), (200, &json!([])), "{body}");
}

#[tokio::test]
async fn telemetry_records_become_metrics() {
    let h = Harness::start().await;
    let records = json!({"TelemetryRecords": [{"Timestamp": now(), "SegmentsReceivedCount": 7, "SegmentsSpilloverCount": 2,
        "BackendConnectionErrors": {"HTTPCode5XXCount": 3}}], "Hostname": "box-1"});
    let (status, body) = h.post("/TelemetryRecords", records).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(h.metric("roentgen_daemon_segments_received_total").await, 7.0);
    assert_eq!(h.metric("roentgen_daemon_segments_spillover_total").await, 2.0);
    assert_eq!(h.metric("roentgen_daemon_backend_http_5xx_total").await, 3.0);
    let (_, code, _) = h.error("/TelemetryRecords", json!({"TelemetryRecords": [{}]}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
}

#[tokio::test]
async fn shutdown_keeps_everything_and_restart_serves_it() {
    let mut h = Harness::start().await;
    let t = trace_id(6);
    h.put(&[segment(&t, 1, "")]).await;
    let dir = h._dir.path().to_path_buf();
    h.server.take().unwrap().shutdown().await.unwrap();
    let server = RunningServer::start(config(&dir)).await.unwrap();
    h.base = format!("http://{}", server.http_address);
    let (_, body) = h.post("/Traces", json!({"TraceIds": [t]})).await;
    assert_eq!(body["Traces"][0]["Id"], t);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_loopback_addresses_need_consent() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.http_address = "0.0.0.0:0".into();
    let err = RunningServer::start(config).await.unwrap_err().to_string();
    assert!(err.contains("allow_insecure_remote"), "{err}");
}

fn rule(name: &str, priority: u32, reservoir: u32) -> Value {
    json!({"RuleName": name, "ResourceARN": "*", "Priority": priority, "FixedRate": 0.25, "ReservoirSize": reservoir,
           "ServiceName": "checkout", "ServiceType": "*", "Host": "*", "HTTPMethod": "*", "URLPath": "/api/*", "Version": 1})
}

#[tokio::test]
async fn sampling_rules_crud_and_validation() {
    let h = Harness::start_with(|c| c.sampling.max_rules = 2).await;
    let (status, body) = h.post("/GetSamplingRules", json!({"NextToken": null})).await;
    assert_eq!(status, 200);
    let default = &body["SamplingRuleRecords"][0]["SamplingRule"];
    assert_eq!(default["RuleName"], "Default");
    assert_eq!(default["Priority"], 10000);
    assert_eq!(default["ReservoirSize"], 1);
    assert_eq!(default["FixedRate"], 0.05);
    assert_eq!(default["Attributes"], json!({}));
    assert_eq!(default["RuleARN"], "arn:aws:xray:us-east-1:000000000000:sampling-rule/Default");
    assert!(body.get("NextToken").is_none());

    let (status, body) = h.post("/CreateSamplingRule", json!({"SamplingRule": rule("checkout", 10, 5)})).await;
    assert_eq!(status, 200, "{body}");
    let record = &body["SamplingRuleRecord"];
    assert_eq!(record["SamplingRule"]["URLPath"], "/api/*");
    assert!(record["CreatedAt"].as_f64().unwrap() > 1e9);

    let (_, code, message) =
        h.error("/CreateSamplingRule", json!({"SamplingRule": rule("checkout", 10, 5)}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    assert!(message.contains("already exists"), "{message}");
    let (_, code, message) =
        h.error("/CreateSamplingRule", json!({"SamplingRule": rule("bad", 0, 5)}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    assert!(message.contains("Priority"), "{message}");
    let mut missing = rule("partial", 5, 1);
    missing.as_object_mut().unwrap().remove("URLPath");
    let (_, _, message) = h.error("/CreateSamplingRule", json!({"SamplingRule": missing}).to_string()).await;
    assert!(message.contains("URLPath"), "{message}");
    h.post("/CreateSamplingRule", json!({"SamplingRule": rule("second", 20, 1)})).await;
    let (status, code, _) =
        h.error("/CreateSamplingRule", json!({"SamplingRule": rule("third", 30, 1)}).to_string()).await;
    assert_eq!((status, code.as_str()), (400, "RuleLimitExceededException"));

    let (status, body) =
        h.post("/UpdateSamplingRule", json!({"SamplingRuleUpdate": {"RuleName": "checkout", "FixedRate": 1.0}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["SamplingRuleRecord"]["SamplingRule"]["FixedRate"], 1.0);
    let (_, code, _) = h
        .error("/UpdateSamplingRule", json!({"SamplingRuleUpdate": {"RuleName": "Default", "Host": "x"}}).to_string())
        .await;
    assert_eq!(code, "InvalidRequestException");
    let (status, _) =
        h.post("/UpdateSamplingRule", json!({"SamplingRuleUpdate": {"RuleName": "Default", "ReservoirSize": 0}})).await;
    assert_eq!(status, 200);

    let arn = "arn:aws:xray:us-east-1:000000000000:sampling-rule/second";
    let (status, body) = h.post("/DeleteSamplingRule", json!({"RuleARN": arn})).await;
    assert_eq!((status, body["SamplingRuleRecord"]["SamplingRule"]["RuleName"].clone()), (200, json!("second")));
    let (_, code, _) = h.error("/DeleteSamplingRule", json!({"RuleName": "Default"}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    let (_, code, _) = h.error("/DeleteSamplingRule", json!({"RuleName": "a", "RuleARN": arn}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");

    let (_, body) = h.post("/GetSamplingRules", json!({})).await;
    let names: Vec<&str> = body["SamplingRuleRecords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["SamplingRule"]["RuleName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout", "Default"]);
}

#[tokio::test]
async fn sampling_targets_divide_the_reservoir() {
    let h = Harness::start().await;
    h.post("/CreateSamplingRule", json!({"SamplingRule": rule("checkout", 10, 10)})).await;
    let (_, rules) = h.post("/GetSamplingRules", json!({})).await;
    let modified = rules["SamplingRuleRecords"][0]["ModifiedAt"].as_f64().unwrap();
    let report = |client: &str, timestamp: f64, requests: u32| json!({"RuleName": "checkout", "ClientID": client, "Timestamp": timestamp, "RequestCount": requests, "SampledCount": 3, "BorrowCount": 1});
    let mut quotas = 0;
    for (client, timestamp) in [("a".repeat(24), now()), ("b".repeat(24), now() * 1000.0)] {
        let (status, body) = h
            .post(
                "/SamplingTargets",
                json!({"SamplingStatisticsDocuments": [report(&client, timestamp, 500), {"RuleName": "gone",
                "ClientID": client, "Timestamp": now(), "RequestCount": 1, "SampledCount": 1}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let target = &body["SamplingTargetDocuments"][0];
        assert_eq!(target["RuleName"], "checkout");
        assert_eq!(target["FixedRate"], 0.25);
        assert_eq!(target["Interval"], 10);
        assert!(target["ReservoirQuotaTTL"].as_f64().unwrap() > now());
        quotas += target["ReservoirQuota"].as_u64().unwrap();
        assert_eq!(body["UnprocessedStatistics"][0]["RuleName"], "gone");
        assert_eq!(body["UnprocessedStatistics"][0]["ErrorCode"], "400");
        assert!(body["LastRuleModification"].as_f64().unwrap() >= modified);
    }
    assert!(quotas > 0 && quotas <= 10, "quotas add up to at most the reservoir: {quotas}");

    let (_, body) = h.post("/SamplingStatisticSummaries", json!({})).await;
    let summary =
        body["SamplingStatisticSummaries"].as_array().unwrap().iter().find(|s| s["RuleName"] == "checkout").unwrap();
    assert_eq!(
        (summary["RequestCount"].clone(), summary["SampledCount"].clone(), summary["BorrowCount"].clone()),
        (json!(1000), json!(6), json!(2))
    );
    assert_eq!(h.metric("roentgen_sampling_requests_total{rule=\"checkout\"}").await, 1000.0);
    assert_eq!(h.metric("roentgen_sampling_rule_reservoir_size{rule=\"checkout\"}").await, 10.0);

    let (_, code, _) = h.error("/SamplingTargets", json!({}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    let (_, body) =
        h.post("/SamplingTargets", json!({"SamplingStatisticsDocuments": [report("short", now(), 1)]})).await;
    assert!(body["UnprocessedStatistics"][0]["Message"].as_str().unwrap().contains("ClientID"));
}

#[tokio::test]
async fn sampling_rules_survive_a_restart() {
    let mut h = Harness::start().await;
    h.post("/CreateSamplingRule", json!({"SamplingRule": rule("kept", 10, 3)})).await;
    let dir = h._dir.path().to_path_buf();
    h.server.take().unwrap().shutdown().await.unwrap();
    let server = RunningServer::start(config(&dir)).await.unwrap();
    h.base = format!("http://{}", server.http_address);
    let (_, body) = h.post("/GetSamplingRules", json!({})).await;
    assert_eq!(body["SamplingRuleRecords"][0]["SamplingRule"]["RuleName"], "kept");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn groups_crud_and_group_filters() {
    let mut h = Harness::start_with(|c| c.groups.max_groups = 2).await;
    let (faulty, fine) = (trace_id(40), trace_id(41));
    h.put(&[segment(&faulty, 1, r#""fault":true,"#), segment(&fine, 2, "")]).await;

    let (status, body) = h.post("/CreateGroup", json!({"GroupName": "faults", "FilterExpression": "fault"})).await;
    assert_eq!(status, 200, "{body}");
    let arn = body["Group"]["GroupARN"].as_str().unwrap().to_owned();
    assert!(arn.starts_with("arn:aws:xray:us-east-1:000000000000:group/faults/") && arn.len() > 60, "{arn}");
    assert_eq!(
        body["Group"]["InsightsConfiguration"],
        json!({"InsightsEnabled": false, "NotificationsEnabled": false})
    );
    for (request, message) in [
        (json!({"GroupName": "faults"}), "already exists"),
        (json!({"GroupName": "Default"}), "reserved"),
        (json!({"GroupName": "x".repeat(33)}), "1 to 32"),
        (json!({"GroupName": "bad", "FilterExpression": "fault AND"}), "at column 10"),
        (json!({"GroupName": "nested", "FilterExpression": "group.name = \"faults\""}), "other groups"),
        (json!({"GroupName": "n", "InsightsConfiguration": {"NotificationsEnabled": true}}), "InsightsEnabled"),
    ] {
        let (_, code, got) = h.error("/CreateGroup", request.to_string()).await;
        assert_eq!(code, "InvalidRequestException");
        assert!(got.contains(message), "{got}");
    }
    h.post("/CreateGroup", json!({"GroupName": "all"})).await;
    let (_, _, message) = h.error("/CreateGroup", json!({"GroupName": "third"}).to_string()).await;
    assert!(message.contains("limit of 2 groups"), "{message}");

    let (_, body) = h.post("/GetGroup", json!({"GroupARN": arn})).await;
    assert_eq!(body["Group"]["GroupName"], "faults");
    let (_, body) = h.post("/Groups", json!({})).await;
    assert_eq!(body["Groups"].as_array().unwrap().len(), 2);

    let window =
        |filter: &str| json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0, "FilterExpression": filter});
    let ids = |body: Value| -> Vec<String> {
        body["TraceSummaries"].as_array().unwrap().iter().map(|s| s["Id"].as_str().unwrap().to_owned()).collect()
    };
    let (_, body) = h.post("/TraceSummaries", window("group.name = \"faults\"")).await;
    assert_eq!(ids(body), std::slice::from_ref(&faulty));
    let (_, body) = h.post("/TraceSummaries", window(&format!("group.arn = \"{arn}\""))).await;
    assert_eq!(ids(body), std::slice::from_ref(&faulty));
    let (_, body) = h.post("/TraceSummaries", window("group.name != \"faults\"")).await;
    assert_eq!(ids(body), std::slice::from_ref(&fine));
    let (_, body) = h.post("/TraceSummaries", window("group.name = \"all\"")).await;
    assert_eq!(ids(body).len(), 2);

    let (status, body) = h.post("/UpdateGroup", json!({"GroupName": "faults", "FilterExpression": "!fault"})).await;
    assert_eq!((status, body["Group"]["FilterExpression"].clone()), (200, json!("!fault")));
    let (_, body) = h.post("/TraceSummaries", window("group.name = \"faults\"")).await;
    assert_eq!(ids(body), std::slice::from_ref(&fine));

    let dir = h._dir.path().to_path_buf();
    h.server.take().unwrap().shutdown().await.unwrap();
    let server = RunningServer::start({
        let mut c = config(&dir);
        c.groups.max_groups = 2;
        c
    })
    .await
    .unwrap();
    h.base = format!("http://{}", server.http_address);
    let (status, _) = h.post("/DeleteGroup", json!({"GroupARN": arn})).await;
    assert_eq!(status, 200, "groups survive a restart");
    let (_, code, _) = h.error("/GetGroup", json!({"GroupName": "faults"}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn service_graph_trace_graph_and_time_series() {
    let h = Harness::start().await;
    let (ok, failed) = (trace_id(50), trace_id(51));
    let t = now() - 30.0;
    let doc = |trace: &str, body: String| format!(r#"{{"trace_id":"{trace}",{body}}}"#);
    h.put(&[
        doc(&ok, format!(r#""id":"0000000000000011","name":"web","origin":"AWS::EC2::Instance","start_time":{t},"end_time":{},
            "subsegments":[{{"id":"0000000000000012","name":"DynamoDB","namespace":"aws","start_time":{},"end_time":{},"aws":{{"table_name":"users"}}}}]"#, t + 0.2, t + 0.05, t + 0.1)),
        doc(&failed, format!(r#""id":"0000000000000021","name":"web","origin":"AWS::EC2::Instance","start_time":{t},"end_time":{},"fault":true,
            "subsegments":[{{"id":"0000000000000022","name":"api","namespace":"remote","start_time":{},"end_time":{},"fault":true}}]"#, t + 0.5, t + 0.1, t + 0.4)),
        doc(&failed, format!(r#""id":"0000000000000023","name":"api","parent_id":"0000000000000022","start_time":{},"end_time":{},"fault":true"#, t + 0.12, t + 0.38)),
    ])
    .await;

    let (status, body) = h.post("/ServiceGraph", json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0})).await;
    assert_eq!(status, 200, "{body}");
    let services = body["Services"].as_array().unwrap();
    let by_name = |name: &str, kind: &str| {
        services
            .iter()
            .find(|s| s["Name"] == name && s["Type"] == kind)
            .unwrap_or_else(|| panic!("no {name} {kind}: {body}"))
    };
    let web = by_name("web", "AWS::EC2::Instance");
    assert_eq!((web["Root"].clone(), web["State"].clone()), (json!(true), json!("active")));
    assert_eq!(web["SummaryStatistics"]["OkCount"], 1);
    assert_eq!(web["SummaryStatistics"]["FaultStatistics"]["TotalCount"], 1);
    assert_eq!(web["SummaryStatistics"]["TotalCount"], 2);
    assert_eq!(web["ResponseTimeHistogram"], json!([{"Value": 0.2, "Count": 1}, {"Value": 0.5, "Count": 1}]));
    let client = by_name("web", "client");
    assert!(client.get("SummaryStatistics").is_none());
    assert_eq!(client["Edges"][0]["ReferenceId"], web["ReferenceId"]);
    assert_eq!(client["Edges"][0]["SummaryStatistics"]["TotalCount"], 2);
    let users = by_name("users", "AWS::DynamoDB::Table");
    assert_eq!(users["State"], "unknown");
    let edge_to_api = web["Edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| services.iter().any(|s| s["ReferenceId"] == e["ReferenceId"] && s["Name"] == "api"));
    assert_eq!(edge_to_api.unwrap()["SummaryStatistics"]["FaultStatistics"]["TotalCount"], 1);
    assert_eq!(edge_to_api.unwrap()["Aliases"], json!([]));

    let (_, body) = h.post("/TraceGraph", json!({"TraceIds": [ok]})).await;
    let names: Vec<&str> = body["Services"].as_array().unwrap().iter().map(|s| s["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["users", "web", "web"], "by name; the client after the service");

    let series = |selector: Value| {
        let mut request = json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0, "Period": 60});
        if !selector.is_null() {
            request["EntitySelectorExpression"] = selector;
        }
        request
    };
    let (_, body) = h.post("/TimeSeriesServiceStatistics", series(json!("service(\"web\")"))).await;
    let points = body["TimeSeriesServiceStatistics"].as_array().unwrap();
    let total: u64 = points.iter().map(|p| p["ServiceSummaryStatistics"]["TotalCount"].as_u64().unwrap()).sum();
    assert_eq!(total, 2);
    assert!(points.iter().all(|p| p["Timestamp"].as_f64().unwrap() % 60.0 == 0.0));
    let (_, body) = h.post("/TimeSeriesServiceStatistics", series(json!("edge(\"web\", \"api\")"))).await;
    assert_eq!(body["TimeSeriesServiceStatistics"][0]["EdgeSummaryStatistics"]["FaultStatistics"]["TotalCount"], 1);
    let (_, body) = h.post("/TimeSeriesServiceStatistics", series(json!("id(type: \"AWS::DynamoDB::Table\")"))).await;
    assert_eq!(body["TimeSeriesServiceStatistics"][0]["ServiceSummaryStatistics"]["OkCount"], 1);
    let (_, body) = h.post("/TimeSeriesServiceStatistics", series(Value::Null)).await;
    let entry: u64 = body["TimeSeriesServiceStatistics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["EdgeSummaryStatistics"]["TotalCount"].as_u64().unwrap())
        .sum();
    assert_eq!(entry, 2, "without a selector: the requests entering the graph");
    for (request, message) in [
        (json!({"StartTime": 1, "EndTime": 2, "Period": 45}), "multiple of 60"),
        (json!({"StartTime": 1, "EndTime": 2, "EntitySelectorExpression": "fault"}), "EntitySelectorExpression"),
        (json!({"StartTime": 1, "EndTime": 2, "ForecastStatistics": true}), "ForecastStatistics"),
    ] {
        let (_, code, got) = h.error("/TimeSeriesServiceStatistics", request.to_string()).await;
        assert_eq!(code, "InvalidRequestException");
        assert!(got.contains(message), "{got}");
    }

    h.post("/CreateGroup", json!({"GroupName": "db", "FilterExpression": "service(\"users\")"})).await;
    let (_, body) =
        h.post("/ServiceGraph", json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0, "GroupName": "db"})).await;
    let names: Vec<&str> = body["Services"].as_array().unwrap().iter().map(|s| s["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["users", "web", "web"], "the group keeps only the trace that reached the table");
    let (_, code, _) =
        h.error("/ServiceGraph", json!({"StartTime": 1, "EndTime": 2, "GroupName": "nope"}).to_string()).await;
    assert_eq!(code, "InvalidRequestException");
}

/// Moves a golden document to the present and gives it its trace id.
fn place(doc: &Value, ids: &[String], shift: f64) -> Value {
    let mut doc = doc.clone();
    fn shift_times(entity: &mut Value, shift: f64) {
        for key in ["start_time", "end_time"] {
            if let Some(t) = entity.get(key).and_then(Value::as_f64) {
                entity[key] = json!(t + shift);
            }
        }
        if let Some(subsegments) = entity.get_mut("subsegments").and_then(Value::as_array_mut) {
            for sub in subsegments {
                shift_times(sub, shift);
            }
        }
    }
    shift_times(&mut doc, shift);
    let place_id = |id: &mut Value| {
        let n: usize = id.as_str().unwrap().trim_start_matches("TRACE").parse().unwrap();
        *id = json!(ids[n - 1]);
    };
    place_id(&mut doc["trace_id"]);
    if let Some(links) = doc.get_mut("links").and_then(Value::as_array_mut) {
        for link in links {
            place_id(&mut link["trace_id"]);
        }
    }
    doc
}

/// Statistics with `TotalResponseTime` to the millisecond: the data set's times are, and times
/// near the epoch's magnitude carry only about a quarter of a microsecond of precision.
fn canonical_statistics(statistics: &Value) -> Value {
    let mut statistics = statistics.clone();
    if let Some(total) = statistics.get("TotalResponseTime").and_then(Value::as_f64) {
        statistics["TotalResponseTime"] = json!((total * 1000.0).round() / 1000.0);
    }
    statistics
}

/// The graph with reference ids replaced by node names, in a stable order, times left out.
fn canonical_graph(body: &Value) -> Value {
    let services = body["Services"].as_array().unwrap();
    let label = |s: &Value| format!("{} ({})", s["Name"].as_str().unwrap(), s["Type"].as_str().unwrap_or("service"));
    let by_id: std::collections::HashMap<u64, String> =
        services.iter().map(|s| (s["ReferenceId"].as_u64().unwrap(), label(s))).collect();
    let mut nodes: Vec<Value> = services
        .iter()
        .map(|s| {
            let mut edges: Vec<Value> = s["Edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let mut edge = json!({"To": by_id[&e["ReferenceId"].as_u64().unwrap()], "SummaryStatistics": canonical_statistics(&e["SummaryStatistics"]),
                           "ResponseTimeHistogram": e["ResponseTimeHistogram"]});
                    for key in ["EdgeType", "ReceivedEventAgeHistogram"] {
                        if let Some(value) = e.get(key) {
                            edge[key] = value.clone();
                        }
                    }
                    edge
                })
                .collect();
            edges.sort_by_key(|e| e["To"].as_str().unwrap().to_owned());
            json!({"Node": label(s), "Root": s.get("Root").cloned().unwrap_or(json!(false)), "State": s["State"],
                   "SummaryStatistics": s.get("SummaryStatistics").map(canonical_statistics), "ResponseTimeHistogram": s.get("ResponseTimeHistogram"),
                   "DurationHistogram": s.get("DurationHistogram"), "Edges": edges})
        })
        .collect();
    nodes.sort_by_key(|n| n["Node"].as_str().unwrap().to_owned());
    Value::Array(nodes)
}

/// Issue 4's multi-service data set (tests/golden/service-graph.json) against its committed
/// expected graph: ok, 4xx, 429, 5xx and slow requests, instrumented and inferred services, an
/// in-progress segment later completed, and a segment that arrives after its trace was flushed.
/// `BLESS=1` rewrites the expectation after a deliberate change.
#[tokio::test]
async fn golden_service_graph() {
    let h = Harness::start().await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/service-graph.json");
    let mut golden: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ids: Vec<String> = (1..=8).map(|n| trace_id(60 + n)).collect();
    let shift = now() - 300.0 - 100.0;
    let send = |docs: &Value| -> Vec<String> {
        docs.as_array().unwrap().iter().map(|d| place(d, &ids, shift).to_string()).collect()
    };
    let body = h.put(&send(&golden["documents"])).await;
    assert_eq!(body["UnprocessedTraceSegments"], json!([]));
    h.server().store().flush_all().await.unwrap();
    h.put(&send(&golden["late_documents"])).await;

    let (status, body) = h.post("/ServiceGraph", json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0})).await;
    assert_eq!(status, 200, "{body}");
    let graph = canonical_graph(&body);
    if std::env::var_os("BLESS").is_some() {
        golden["expected"] = graph;
        std::fs::write(&path, serde_json::to_string_pretty(&golden).unwrap() + "\n").unwrap();
        return;
    }
    assert_eq!(graph, golden["expected"], "the service graph differs from tests/golden/service-graph.json");
}

/// `GetServiceGraph` pages its services with `NextToken`; reference ids hold across pages, and
/// a token only works for the request it came from.
#[tokio::test]
async fn service_graph_pages() {
    let h = Harness::start_with(|c| c.query.graph_page_size = 2).await;
    let t = trace_id(90);
    let calls: String = (0..3)
        .map(|n| {
            format!(
                r#"{{"id":"{:016x}","name":"dep-{n}","namespace":"remote","start_time":{s},"end_time":{s}.1}},"#,
                0x100 + n,
                s = now() as u64 - 30
            )
        })
        .collect();
    let body = h.put(&[segment(&t, 1, &format!(r#""subsegments":[{}],"#, calls.trim_end_matches(',')))]).await;
    assert_eq!(body["UnprocessedTraceSegments"], json!([]));
    let request = json!({"StartTime": now() - 600.0, "EndTime": now() + 60.0});
    let (mut pages, mut token, mut all) = (0, Value::Null, Vec::new());
    loop {
        let mut page_request = request.clone();
        page_request["NextToken"] = token.clone();
        let (status, body) = h.post("/ServiceGraph", page_request).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        all.extend(body["Services"].as_array().unwrap().iter().cloned());
        token = body.get("NextToken").cloned().unwrap_or(Value::Null);
        if token.is_null() {
            break;
        }
    }
    // checkout, its client and three remote nodes: three pages of two.
    assert_eq!((pages, all.len()), (3, 5));
    let ids: Vec<u64> = all.iter().map(|s| s["ReferenceId"].as_u64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    let checkout = all.iter().find(|s| s["Name"] == "checkout" && s.get("Type").is_none()).unwrap();
    let targets: Vec<&str> = checkout["Edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| all[e["ReferenceId"].as_u64().unwrap() as usize]["Name"].as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), 3);
    assert!(targets.iter().all(|name| name.starts_with("dep-")), "{targets:?}");

    let (_, first) = h.post("/ServiceGraph", request.clone()).await;
    let mut other = json!({"StartTime": now() - 1200.0, "EndTime": now() + 60.0});
    other["NextToken"] = first["NextToken"].clone();
    let (_, code, message) = h.error("/ServiceGraph", other.to_string()).await;
    assert_eq!(code, "InvalidRequestException", "{message}");
}

/// A small deterministic generator (splitmix64): the same requests every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A value of any JSON type: the edges of each (huge, negative, empty, long, NUL), nested a
    /// little, with trace ids and times that name what is stored.
    fn value(&mut self, depth: usize, known: &[Value]) -> Value {
        match self.below(if depth < 3 { 10 } else { 8 }) {
            0..=2 => self.pick(known).clone(),
            3 => json!(self.pick(&[
                0.0,
                -1.0,
                1.5,
                1e308,
                -1e308,
                1e-300,
                1.8446744073709552e19,
                4102444800.0,
                253402300800.0
            ])),
            4 => json!(self.pick(&[0i64, -1, 1, i64::MAX, i64::MIN, 1_700_000_000])),
            5 => json!(self.pick(&[
                "",
                "x",
                "*",
                "\u{0}",
                "Event",
                "TraceId",
                "Service",
                "fault",
                "service(\"a\") { error }",
                "id(name: \"a\")",
                "edge(\"a\", \"b\")",
                "responsetime > 1 AND (ok OR !error)",
                "group.name = \"g\"",
                "arn:aws:xray:us-east-1:000000000000:group/g/x",
                "arn:aws:xray:us-east-1:000000000000:sampling-rule/r"
            ])),
            6 => json!("é".repeat(self.below(400))),
            7 => self.pick(&[Value::Null, json!(true), json!(false)]).clone(),
            8 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1, known)).collect()),
            _ => {
                let keys = ["Key", "Value", "Name", "RuleName", "a"];
                (0..self.below(3)).map(|_| (self.pick(&keys).to_string(), self.value(depth + 1, known))).collect()
            }
        }
    }

    /// Changes one place in `value`: a member or an element, at any depth, is removed or
    /// replaced by any value.
    fn mutate(&mut self, value: &mut Value, known: &[Value]) {
        match value {
            Value::Object(members) if !members.is_empty() && self.below(3) != 0 => {
                let key = members.keys().nth(self.below(members.len())).unwrap().clone();
                if self.below(4) == 0 {
                    members.remove(&key);
                } else {
                    self.mutate(members.get_mut(&key).unwrap(), known);
                }
            }
            Value::Array(items) if !items.is_empty() && self.below(3) != 0 => {
                let at = self.below(items.len());
                self.mutate(&mut items[at], known);
            }
            _ => *value = self.value(1, known),
        }
    }
}

/// Random requests to every operation served, with fields of the right names holding values of
/// every type: each answer is the operation's own or an AWS error of the client's kind, never a
/// server error, and the server goes on serving.
#[tokio::test]
async fn random_requests_get_answers_or_client_errors() {
    let h = Harness::start().await;
    let stored: Vec<String> = (0..5).map(trace_id).collect();
    for (i, id) in stored.iter().enumerate() {
        h.put(&[segment(id, i as u64 + 1, r#""http":{"response":{"status":500}},"fault":true,"#)]).await;
    }
    let mut known: Vec<Value> = stored.iter().map(|id| json!(id)).collect();
    known.extend([json!(now()), json!(now() - 600.0), json!(now() - 3600.0), json!([stored[0]]), json!(60)]);
    // A valid request for each operation, changed in up to three places.
    let (start, end) = (now() - 3600.0, now());
    let rule = json!({"RuleName": "r", "ResourceARN": "*", "Priority": 1, "FixedRate": 0.1, "ReservoirSize": 1,
        "ServiceName": "*", "ServiceType": "*", "Host": "*", "HTTPMethod": "*", "URLPath": "*", "Version": 1,
        "Attributes": {"a": "b"}});
    let operations = [
        ("/TraceSegments", json!({"TraceSegmentDocuments": [segment(&stored[1], 9, "")]})),
        ("/Traces", json!({"TraceIds": [stored[0], stored[1]]})),
        (
            "/TraceSummaries",
            json!({"StartTime": start, "EndTime": end, "TimeRangeType": "Event",
            "FilterExpression": "fault AND http.status = 500", "Sampling": false}),
        ),
        (
            "/TelemetryRecords",
            json!({"TelemetryRecords": [{"Timestamp": end, "SegmentsReceivedCount": 1,
            "SegmentsSentCount": 1, "SegmentsSpilloverCount": 0, "SegmentsRejectedCount": 0,
            "BackendConnectionErrors": {"TimeoutCount": 0, "ConnectionRefusedCount": 1}}], "EC2InstanceId": "i-1"}),
        ),
        ("/ServiceGraph", json!({"StartTime": start, "EndTime": end})),
        ("/TraceGraph", json!({"TraceIds": [stored[0]]})),
        (
            "/TimeSeriesServiceStatistics",
            json!({"StartTime": start, "EndTime": end, "Period": 60,
            "EntitySelectorExpression": "service(\"checkout\")"}),
        ),
        (
            "/CreateGroup",
            json!({"GroupName": "g", "FilterExpression": "fault",
            "InsightsConfiguration": {"InsightsEnabled": false}}),
        ),
        ("/GetGroup", json!({"GroupName": "g"})),
        ("/Groups", json!({})),
        ("/UpdateGroup", json!({"GroupName": "g", "FilterExpression": "error"})),
        ("/DeleteGroup", json!({"GroupName": "g"})),
        ("/CreateSamplingRule", json!({"SamplingRule": rule})),
        ("/UpdateSamplingRule", json!({"SamplingRuleUpdate": {"RuleName": "r", "FixedRate": 0.5}})),
        ("/DeleteSamplingRule", json!({"RuleName": "r"})),
        ("/GetSamplingRules", json!({})),
        (
            "/SamplingTargets",
            json!({"SamplingStatisticsDocuments": [{"RuleName": "r",
            "ClientID": "0123456789abcdef01234567", "Timestamp": end, "RequestCount": 1, "SampledCount": 1,
            "BorrowCount": 0}]}),
        ),
        ("/SamplingStatisticSummaries", json!({})),
    ];
    let mut random = Random(23);
    let mut answered = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    for _ in 0..3000 {
        let (path, valid) = random.pick(&operations);
        let mut body = valid.clone();
        for _ in 0..random.below(4) {
            random.mutate(&mut body, &known);
        }
        let (status, headers, answer) = h.post_raw(path, body.to_string()).await;
        assert!(headers.contains_key("x-amzn-RequestId"), "{path} {body}");
        assert!(status == 200 || (400..500).contains(&status), "{path} {body}: {status} {answer}");
        let count = answered.entry(path).or_default();
        if status == 200 {
            count.0 += 1;
        } else {
            count.1 += 1;
            assert!(headers.contains_key("x-amzn-ErrorType"), "{path} {body}: {status} {answer}");
            assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{path} {body}: {answer}");
        }
    }
    // Every operation both answered and refused some of them: the requests reached past the
    // first check.
    for (path, _) in &operations {
        let (answers, errors) = answered.get(path).copied().unwrap_or_default();
        assert!(answers > 0 && errors > 0, "{path}: {answers} answers, {errors} errors");
    }
    let (status, body) = h.post("/Traces", json!({ "TraceIds": [stored[0]] })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Traces"][0]["Id"], stored[0]);
}

/// Segment documents of every shape the SDKs send, changed in up to three places: each one is
/// either listed in `UnprocessedTraceSegments` with its error, or stored and given back by
/// `BatchGetTraces` exactly as it was sent.
#[tokio::test]
async fn mutated_documents_are_stored_whole_or_listed_as_unprocessed() {
    let h = Harness::start().await;
    let t = now() - 30.0;
    // No valid segment id among them: each document's id stays its own, so the one listed
    // as unprocessed is that document.
    let known = [json!(trace_id(900)), json!(t), json!(t + 1.0), json!("fedcba987654321"), json!(true), json!(500)];
    let mut random = Random(2);
    let (mut all_stored, mut all_refused) = (0, 0);
    for batch in 0..4u32 {
        let mut sent = Vec::new();
        for i in 0..50u32 {
            let n = batch * 50 + i;
            let mut doc = json!({
                "trace_id": trace_id(1000 + n), "id": format!("{:016x}", 0x1000 + n), "name": "checkout",
                "start_time": t, "end_time": t + 0.5, "fault": true, "user": "alice", "origin": "AWS::EC2::Instance",
                "http": {"request": {"method": "GET", "url": "https://shop/cart", "client_ip": "10.0.0.1"},
                         "response": {"status": 500, "content_length": 12}},
                "annotations": {"tenant": "t-1", "attempt": 2, "cached": false},
                "metadata": {"default": {"blob": [1, {"a": null}]}},
                "aws": {"account_id": "123456789012", "ec2": {"instance_id": "i-1", "availability_zone": "eu-west-1a"}},
                "cause": {"working_directory": "/app", "exceptions": [{"id": "00000000000000aa", "message": "boom",
                          "type": "Error", "stack": [{"path": "a.py", "line": 3, "label": "f"}]}]},
                "subsegments": [{"id": format!("{:016x}", 0x9000 + n), "name": "orders", "namespace": "remote",
                    "start_time": t + 0.1, "end_time": t + 0.2, "sql": {"url": "postgresql://db/orders"},
                    "subsegments": [{"id": format!("{:016x}", 0x19000 + n), "name": "DynamoDB", "namespace": "aws",
                        "start_time": t + 0.11, "end_time": t + 0.12, "aws": {"operation": "GetItem", "table_name": "s"}}]}]
            });
            for _ in 0..random.below(4) {
                random.mutate(&mut doc, &known);
            }
            sent.push(doc.to_string());
        }
        let answer = h.put(&sent).await;
        let unprocessed = answer["UnprocessedTraceSegments"].as_array().unwrap();
        for item in unprocessed {
            assert!(item["ErrorCode"].as_str().is_some_and(|c| !c.is_empty()), "{item}");
            assert!(item["Message"].as_str().is_some_and(|m| !m.is_empty()), "{item}");
        }
        let refused: Vec<Option<&str>> = unprocessed.iter().map(|item| item["Id"].as_str()).collect();
        let mut stored = 0;
        for text in &sent {
            let doc: Value = serde_json::from_str(text).unwrap();
            let (Some(trace), Some(id)) = (doc["trace_id"].as_str(), doc["id"].as_str()) else { continue };
            if refused.contains(&Some(id)) {
                continue;
            }
            let (status, body) = h.post("/Traces", json!({ "TraceIds": [trace] })).await;
            assert_eq!(status, 200, "{body}");
            let segments = body["Traces"][0]["Segments"].as_array();
            let found = segments.into_iter().flatten().find(|s| s["Id"] == id);
            let Some(found) = found else { panic!("{text} was neither listed as unprocessed nor stored: {answer}") };
            assert_eq!(found["Document"].as_str(), Some(text.as_str()));
            stored += 1;
        }
        assert_eq!(refused.len() + stored, sent.len(), "{answer}");
        all_stored += stored;
        all_refused += refused.len();
    }
    // Both outcomes were reached, and not only the first check of each document.
    assert!(all_stored > 50 && all_refused > 20, "{all_stored} stored, {all_refused} refused");
}
