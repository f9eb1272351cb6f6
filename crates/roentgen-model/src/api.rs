//! Request and response shapes of the X-Ray REST-JSON API, named exactly as AWS names them.
//!
//! Optional members are `Option` and accept `null`, because the SDKs send `{"NextToken": null}`.
//! Members that the model marks required are `Option` too, so the server can answer their absence
//! with an `InvalidRequestException` that names them instead of a generic decoding error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutTraceSegmentsRequest {
    pub trace_segment_documents: Option<Vec<String>>,
}

impl PutTraceSegmentsRequest {
    /// Reads a request body. The shape the SDKs and the daemon send, one member holding an
    /// array of strings, is decoded by [`json_string`](crate::json_string), in about half of
    /// serde_json's time on documents escaped inside strings; any other body, and any body that
    /// shape does not fully describe, by serde_json, so the answer and its errors are serde's.
    pub fn from_json(body: &[u8]) -> serde_json::Result<Self> {
        match documents_fast(body) {
            Some(documents) => Ok(Self { trace_segment_documents: Some(documents) }),
            None => serde_json::from_slice(body),
        }
    }
}

/// `{"TraceSegmentDocuments": ["...", ...]}` with any JSON whitespace, or `None`.
fn documents_fast(body: &[u8]) -> Option<Vec<String>> {
    const KEY: &[u8] = b"\"TraceSegmentDocuments\"";
    let skip = |mut i: usize| {
        while body.get(i).is_some_and(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    };
    let expect = |i: usize, byte: u8| (body.get(i) == Some(&byte)).then(|| skip(i + 1));
    let i = expect(skip(0), b'{')?;
    if !body[i..].starts_with(KEY) {
        return None;
    }
    let mut i = expect(expect(skip(i + KEY.len()), b':')?, b'[')?;
    let mut documents = Vec::new();
    let mut scratch = crate::json_string::Scratch::default();
    if body.get(i) != Some(&b']') {
        loop {
            if body.get(i) != Some(&b'"') {
                return None;
            }
            let (text, end) = crate::json_string::decode(body, i + 1, &mut scratch)?;
            documents.push(text.to_owned());
            i = skip(end);
            match body.get(i) {
                Some(b',') => i = skip(i + 1),
                Some(b']') => break,
                _ => return None,
            }
        }
    }
    i = expect(expect(i, b']')?, b'}')?;
    (i == body.len()).then_some(documents)
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutTraceSegmentsResponse {
    pub unprocessed_trace_segments: Vec<UnprocessedTraceSegment>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct UnprocessedTraceSegment {
    pub id: Option<String>,
    pub error_code: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchGetTracesRequest {
    pub trace_ids: Option<Vec<String>>,
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchGetTracesResponse {
    pub traces: Vec<Trace>,
    pub unprocessed_trace_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Trace {
    pub id: String,
    pub duration: f64,
    pub limit_exceeded: bool,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Segment {
    pub id: String,
    pub document: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetTraceSummariesRequest {
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    pub time_range_type: Option<String>,
    pub sampling: Option<bool>,
    pub sampling_strategy: Option<SamplingStrategy>,
    pub filter_expression: Option<String>,
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingStrategy {
    pub name: Option<String>,
    pub value: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetTraceSummariesResponse {
    pub trace_summaries: Vec<TraceSummary>,
    pub approximate_time: f64,
    pub traces_processed_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TraceSummary {
    pub id: String,
    pub start_time: f64,
    pub duration: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time: Option<f64>,
    pub has_fault: bool,
    pub has_error: bool,
    pub has_throttle: bool,
    pub is_partial: bool,
    pub http: Http,
    pub annotations: BTreeMap<String, Vec<ValueWithServiceIds>>,
    pub users: Vec<TraceUser>,
    pub service_ids: Vec<ServiceId>,
    #[serde(rename = "ResourceARNs")]
    pub resource_arns: Vec<ResourceArnDetail>,
    pub instance_ids: Vec<InstanceIdDetail>,
    pub availability_zones: Vec<AvailabilityZoneDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<ServiceId>,
    pub fault_root_causes: Vec<RootCause>,
    pub error_root_causes: Vec<RootCause>,
    pub response_time_root_causes: Vec<RootCause>,
    pub revision: u32,
    pub matched_event_time: f64,
}

/// `FaultRootCause`, `ErrorRootCause` and `ResponseTimeRootCause` share this shape; entities of
/// the first two carry `Exceptions`, those of the third `Coverage`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootCause {
    pub services: Vec<RootCauseService>,
    pub client_impacting: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootCauseService {
    pub name: String,
    pub names: Vec<String>,
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub entity_path: Vec<RootCauseEntity>,
    pub inferred: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootCauseEntity {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exceptions: Option<Vec<RootCauseException>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    pub remote: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootCauseException {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Http {
    #[serde(rename = "HttpURL", skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
    #[serde(rename = "HttpStatus", skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(rename = "HttpMethod", skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(rename = "UserAgent", skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(rename = "ClientIp", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ValueWithServiceIds {
    pub annotation_value: AnnotationValue,
    pub service_ids: Vec<ServiceId>,
}

/// A union: exactly one member is set.
#[derive(Debug, Serialize)]
pub enum AnnotationValue {
    NumberValue(f64),
    BooleanValue(bool),
    StringValue(String),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceId {
    pub name: String,
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TraceUser {
    pub user_name: String,
    pub service_ids: Vec<ServiceId>,
}

#[derive(Debug, Serialize)]
pub struct ResourceArnDetail {
    #[serde(rename = "ARN")]
    pub arn: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceIdDetail {
    pub id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AvailabilityZoneDetail {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutTelemetryRecordsRequest {
    pub telemetry_records: Option<Vec<TelemetryRecord>>,
    #[serde(rename = "EC2InstanceId")]
    pub ec2_instance_id: Option<String>,
    pub hostname: Option<String>,
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TelemetryRecord {
    pub timestamp: Option<f64>,
    pub segments_received_count: Option<u64>,
    pub segments_sent_count: Option<u64>,
    pub segments_spillover_count: Option<u64>,
    pub segments_rejected_count: Option<u64>,
    pub backend_connection_errors: Option<BackendConnectionErrors>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BackendConnectionErrors {
    pub timeout_count: Option<u64>,
    pub connection_refused_count: Option<u64>,
    #[serde(rename = "HTTPCode4XXCount")]
    pub http_code_4xx_count: Option<u64>,
    #[serde(rename = "HTTPCode5XXCount")]
    pub http_code_5xx_count: Option<u64>,
    pub unknown_host_count: Option<u64>,
    pub other_count: Option<u64>,
}

/// A sampling rule as the API carries it. Every member is optional on input so that a missing
/// one is reported by name; on output every member is present (the SDKs require `Version`,
/// `ResourceARN` and `Attributes`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingRule {
    pub rule_name: Option<String>,
    #[serde(rename = "RuleARN")]
    pub rule_arn: Option<String>,
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
    pub priority: Option<i64>,
    pub fixed_rate: Option<f64>,
    pub reservoir_size: Option<i64>,
    pub service_name: Option<String>,
    pub service_type: Option<String>,
    pub host: Option<String>,
    #[serde(rename = "HTTPMethod")]
    pub http_method: Option<String>,
    #[serde(rename = "URLPath")]
    pub url_path: Option<String>,
    pub version: Option<i64>,
    pub attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingRuleRecord {
    pub sampling_rule: SamplingRule,
    pub created_at: f64,
    pub modified_at: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSamplingRuleRequest {
    pub sampling_rule: Option<SamplingRule>,
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateSamplingRuleRequest {
    pub sampling_rule_update: Option<SamplingRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteSamplingRuleRequest {
    pub rule_name: Option<String>,
    #[serde(rename = "RuleARN")]
    pub rule_arn: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingRuleRecordResponse {
    pub sampling_rule_record: SamplingRuleRecord,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetSamplingRulesResponse {
    pub sampling_rule_records: Vec<SamplingRuleRecord>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetSamplingTargetsRequest {
    pub sampling_statistics_documents: Option<Vec<SamplingStatisticsDocument>>,
    pub sampling_boost_statistics_documents: Option<Vec<SamplingBoostStatisticsDocument>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingStatisticsDocument {
    pub rule_name: Option<String>,
    #[serde(rename = "ClientID")]
    pub client_id: Option<String>,
    pub timestamp: Option<f64>,
    pub request_count: Option<i64>,
    pub sampled_count: Option<i64>,
    pub borrow_count: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingBoostStatisticsDocument {
    pub rule_name: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetSamplingTargetsResponse {
    pub sampling_target_documents: Vec<SamplingTargetDocument>,
    pub last_rule_modification: f64,
    pub unprocessed_statistics: Vec<UnprocessedStatistics>,
    pub unprocessed_boost_statistics: Vec<UnprocessedStatistics>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingTargetDocument {
    pub rule_name: String,
    pub fixed_rate: f64,
    pub reservoir_quota: u64,
    #[serde(rename = "ReservoirQuotaTTL")]
    pub reservoir_quota_ttl: f64,
    pub interval: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnprocessedStatistics {
    pub rule_name: Option<String>,
    pub error_code: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetSamplingStatisticSummariesResponse {
    pub sampling_statistic_summaries: Vec<SamplingStatisticSummary>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SamplingStatisticSummary {
    pub rule_name: String,
    pub timestamp: f64,
    pub request_count: u64,
    pub borrow_count: u64,
    pub sampled_count: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InsightsConfiguration {
    pub insights_enabled: Option<bool>,
    pub notifications_enabled: Option<bool>,
}

/// A group as the API returns it (`Group` and `GroupSummary` have the same members).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Group {
    pub group_name: String,
    #[serde(rename = "GroupARN")]
    pub group_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_expression: Option<String>,
    pub insights_configuration: InsightsConfiguration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGroupRequest {
    pub group_name: Option<String>,
    pub filter_expression: Option<String>,
    pub insights_configuration: Option<InsightsConfiguration>,
    pub tags: Option<Vec<Tag>>,
}

/// `GetGroups`, `GetSamplingRules` and `GetSamplingStatisticSummaries`: only a page token.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PageRequest {
    pub next_token: Option<String>,
}

/// `GetGroup`, `DeleteGroup` and `UpdateGroup` name a group by name or ARN.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupRequest {
    pub group_name: Option<String>,
    #[serde(rename = "GroupARN")]
    pub group_arn: Option<String>,
    pub filter_expression: Option<String>,
    pub insights_configuration: Option<InsightsConfiguration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupResponse {
    pub group: Group,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetGroupsResponse {
    pub groups: Vec<Group>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetServiceGraphRequest {
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    pub group_name: Option<String>,
    #[serde(rename = "GroupARN")]
    pub group_arn: Option<String>,
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetServiceGraphResponse {
    pub start_time: f64,
    pub end_time: f64,
    pub services: Vec<Service>,
    pub contains_old_group_versions: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetTraceGraphResponse {
    pub services: Vec<Service>,
}

/// A node of the service graph.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    pub reference_id: usize,
    pub name: String,
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub root: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub state: String,
    pub start_time: f64,
    pub end_time: f64,
    pub edges: Vec<Edge>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_statistics: Option<Statistics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_histogram: Option<Vec<HistogramEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time_histogram: Option<Vec<HistogramEntry>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Edge {
    pub reference_id: usize,
    pub start_time: f64,
    pub end_time: f64,
    pub summary_statistics: Statistics,
    /// Client-side latencies; synchronous edges only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time_histogram: Option<Vec<HistogramEntry>>,
    pub aliases: Vec<ServiceId>,
    /// `"link"` for an asynchronous link; absent for a call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_type: Option<String>,
    /// Links only: how old events were when their consumers received them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_event_age_histogram: Option<Vec<HistogramEntry>>,
}

/// `ServiceStatistics` and `EdgeStatistics`, which have the same members.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Statistics {
    pub ok_count: u64,
    pub error_statistics: ErrorStatistics,
    pub fault_statistics: FaultStatistics,
    pub total_count: u64,
    pub total_response_time: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorStatistics {
    pub throttle_count: u64,
    pub other_count: u64,
    pub total_count: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FaultStatistics {
    pub other_count: u64,
    pub total_count: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistogramEntry {
    pub value: f64,
    pub count: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetTimeSeriesServiceStatisticsRequest {
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    pub group_name: Option<String>,
    #[serde(rename = "GroupARN")]
    pub group_arn: Option<String>,
    pub entity_selector_expression: Option<String>,
    pub period: Option<i64>,
    pub forecast_statistics: Option<bool>,
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetTimeSeriesServiceStatisticsResponse {
    pub time_series_service_statistics: Vec<TimeSeriesServiceStatistics>,
    pub contains_old_group_versions: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TimeSeriesServiceStatistics {
    pub timestamp: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_summary_statistics: Option<Statistics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_summary_statistics: Option<Statistics>,
    pub response_time_histogram: Vec<HistogramEntry>,
}

/// The body of every error response; botocore reads `message`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What serde_json alone makes of a body, errors as their messages.
    fn by_serde(body: &[u8]) -> Result<Option<Vec<String>>, String> {
        serde_json::from_slice::<PutTraceSegmentsRequest>(body)
            .map(|r| r.trace_segment_documents)
            .map_err(|e| e.to_string())
    }

    fn by_from_json(body: &[u8]) -> Result<Option<Vec<String>>, String> {
        PutTraceSegmentsRequest::from_json(body).map(|r| r.trace_segment_documents).map_err(|e| e.to_string())
    }

    #[test]
    fn put_bodies_read_as_serde_json_reads_them() {
        let document = r#"{"trace_id":"1-5f84c7a1-0b4b1f7c2c3d4e5f6a7b8c9d","id":"70de5b6f19ff9a0a","name":"a \"b\"","start_time":1.5,"end_time":2}"#;
        let escaped = serde_json::to_string(document).unwrap();
        for body in [
            format!(r#"{{"TraceSegmentDocuments":[{escaped}]}}"#),
            format!(" {{ \"TraceSegmentDocuments\" :\n[ {escaped} ,\t{escaped} ] }}\r\n"),
            r#"{"TraceSegmentDocuments":[]}"#.to_owned(),
            r#"{"TraceSegmentDocuments":null}"#.to_owned(),
            r#"{"TraceSegmentDocuments":["a"],"Other":1}"#.to_owned(),
            r#"{"TraceSegmentDocuments":["a"],"TraceSegmentDocuments":["b"]}"#.to_owned(),
            r#"{"TraceSegmentDocuments":["a",]}"#.to_owned(),
            r#"{"TraceSegmentDocuments":["a"]} x"#.to_owned(),
            r#"{"TraceSegmentDocuments":["\ud83d\ude00"]}"#.to_owned(),
            r#"{"TraceSegmentDocuments":["a\u0000"]}"#.to_owned(),
            r#"{"TraceSegmentDocuments":["a"#.to_owned(),
            r#"{"TraceSegmentDocuments":[1]}"#.to_owned(),
            r#"{}"#.to_owned(),
        ] {
            assert_eq!(by_from_json(body.as_bytes()), by_serde(body.as_bytes()), "{body}");
        }
        let parsed = by_from_json(format!(r#"{{"TraceSegmentDocuments":[{escaped}]}}"#).as_bytes());
        assert_eq!(parsed, Ok(Some(vec![document.to_owned()])));
    }

    proptest! {
        #[test]
        fn put_bodies_agree_with_serde_json(
            documents in proptest::collection::vec("(\\PC|[\"\\\\\u{0}-\u{1f}])*", 0..4),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let body = serde_json::to_vec(&serde_json::json!({ "TraceSegmentDocuments": documents })).unwrap();
            prop_assert_eq!(by_from_json(&body), Ok(Some(documents)));
            prop_assert_eq!(by_from_json(&body[..cut.index(body.len())]), by_serde(&body[..cut.index(body.len())]));
            let mut damaged = body.clone();
            damaged[flip.index(body.len())] ^= 0x22;
            prop_assert_eq!(by_from_json(&damaged), by_serde(&damaged));
        }
    }

    #[test]
    fn field_names_match_the_aws_model() {
        let summary = TraceSummary {
            resource_arns: vec![ResourceArnDetail { arn: "arn:x".into() }],
            http: Http { http_url: Some("u".into()), http_status: Some(200), ..Http::default() },
            ..TraceSummary::default()
        };
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["ResourceARNs"][0]["ARN"], "arn:x");
        assert_eq!(json["Http"]["HttpURL"], "u");
        assert_eq!(json["Http"]["HttpStatus"], 200);
        assert!(json.get("ResponseTime").is_none());
        let value = serde_json::to_value(AnnotationValue::StringValue("a".into())).unwrap();
        assert_eq!(value, serde_json::json!({"StringValue": "a"}));
    }

    #[test]
    fn sampling_rule_member_names() {
        let rule =
            SamplingRule { rule_arn: Some("a".into()), http_method: Some("GET".into()), ..SamplingRule::default() };
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(json["RuleARN"], "a");
        assert_eq!(json["HTTPMethod"], "GET");
        let target = SamplingTargetDocument {
            rule_name: "r".into(),
            fixed_rate: 0.1,
            reservoir_quota: 1,
            reservoir_quota_ttl: 2.0,
            interval: 10,
        };
        assert_eq!(serde_json::to_value(&target).unwrap()["ReservoirQuotaTTL"], 2.0);
    }

    #[test]
    fn requests_accept_null_members() {
        let req: BatchGetTracesRequest = serde_json::from_str(r#"{"TraceIds":["a"],"NextToken":null}"#).unwrap();
        assert!(req.next_token.is_none());
        let req: PutTelemetryRecordsRequest = serde_json::from_str(
            r#"{"TelemetryRecords":[{"Timestamp":1.5,"BackendConnectionErrors":{"HTTPCode4XXCount":2}}],"EC2InstanceId":"i-1"}"#,
        )
        .unwrap();
        let record = &req.telemetry_records.unwrap()[0];
        assert_eq!(record.backend_connection_errors.as_ref().unwrap().http_code_4xx_count, Some(2));
    }
}
