//! The X-Ray REST-JSON API: every operation is `POST <fixed path>` with a JSON body.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use roentgen_model::api;
use roentgen_model::{TraceId, parse_document_text};
use roentgen_query::TimeRangeType;
use roentgen_query::filter::Filter;
use roentgen_store::{Source, Store, StoredDocument, StoredTrace, SummaryQuery};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::convert;
use crate::error::{ApiError, ErrorKind};
use crate::graph;
use crate::groups::Groups;
use crate::metrics::Metrics;
use crate::sampling::Sampling;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub metrics: Metrics,
    pub sampling: Sampling,
    pub groups: Groups,
}

type Shared = State<Arc<AppState>>;

/// The operations of the X-Ray API model that this version does not serve yet, with their paths.
/// Each answers with an `InvalidRequestException` that says so, until its issue lands.
const PENDING_OPERATIONS: [(&str, &str); 20] = [
    ("CancelTraceRetrieval", "/CancelTraceRetrieval"),
    ("DeleteResourcePolicy", "/DeleteResourcePolicy"),
    ("GetEncryptionConfig", "/EncryptionConfig"),
    ("GetIndexingRules", "/GetIndexingRules"),
    ("GetInsight", "/Insight"),
    ("GetInsightEvents", "/InsightEvents"),
    ("GetInsightImpactGraph", "/InsightImpactGraph"),
    ("GetInsightSummaries", "/InsightSummaries"),
    ("GetRetrievedTracesGraph", "/GetRetrievedTracesGraph"),
    ("GetTraceSegmentDestination", "/GetTraceSegmentDestination"),
    ("ListResourcePolicies", "/ListResourcePolicies"),
    ("ListRetrievedTraces", "/ListRetrievedTraces"),
    ("ListTagsForResource", "/ListTagsForResource"),
    ("PutEncryptionConfig", "/PutEncryptionConfig"),
    ("PutResourcePolicy", "/PutResourcePolicy"),
    ("StartTraceRetrieval", "/StartTraceRetrieval"),
    ("TagResource", "/TagResource"),
    ("UntagResource", "/UntagResource"),
    ("UpdateIndexingRule", "/UpdateIndexingRule"),
    ("UpdateTraceSegmentDestination", "/UpdateTraceSegmentDestination"),
];

/// The operation a path names, for metrics; `None` for paths outside the API.
fn operation_name(path: &str) -> Option<&'static str> {
    match path {
        "/TraceSegments" => Some("PutTraceSegments"),
        "/Traces" => Some("BatchGetTraces"),
        "/TraceSummaries" => Some("GetTraceSummaries"),
        "/TelemetryRecords" => Some("PutTelemetryRecords"),
        "/ServiceGraph" => Some("GetServiceGraph"),
        "/TraceGraph" => Some("GetTraceGraph"),
        "/TimeSeriesServiceStatistics" => Some("GetTimeSeriesServiceStatistics"),
        "/CreateGroup" => Some("CreateGroup"),
        "/GetGroup" => Some("GetGroup"),
        "/Groups" => Some("GetGroups"),
        "/UpdateGroup" => Some("UpdateGroup"),
        "/DeleteGroup" => Some("DeleteGroup"),
        "/CreateSamplingRule" => Some("CreateSamplingRule"),
        "/UpdateSamplingRule" => Some("UpdateSamplingRule"),
        "/DeleteSamplingRule" => Some("DeleteSamplingRule"),
        "/GetSamplingRules" => Some("GetSamplingRules"),
        "/SamplingTargets" => Some("GetSamplingTargets"),
        "/SamplingStatisticSummaries" => Some("GetSamplingStatisticSummaries"),
        _ => PENDING_OPERATIONS.iter().find(|(_, p)| *p == path).map(|(name, _)| *name),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/TraceSegments", post(put_trace_segments))
        .route("/Traces", post(batch_get_traces))
        .route("/TraceSummaries", post(get_trace_summaries))
        .route("/TelemetryRecords", post(put_telemetry_records))
        .route("/ServiceGraph", post(get_service_graph))
        .route("/TraceGraph", post(get_trace_graph))
        .route("/TimeSeriesServiceStatistics", post(get_time_series_service_statistics))
        .route("/CreateGroup", post(create_group))
        .route("/GetGroup", post(get_group))
        .route("/Groups", post(get_groups))
        .route("/UpdateGroup", post(update_group))
        .route("/DeleteGroup", post(delete_group))
        .route("/CreateSamplingRule", post(create_sampling_rule))
        .route("/UpdateSamplingRule", post(update_sampling_rule))
        .route("/DeleteSamplingRule", post(delete_sampling_rule))
        .route("/GetSamplingRules", post(get_sampling_rules))
        .route("/SamplingTargets", post(get_sampling_targets))
        .route("/SamplingStatisticSummaries", post(get_sampling_statistic_summaries))
        .route("/metrics", get(metrics));
    for (name, path) in PENDING_OPERATIONS {
        router = router.route(
            path,
            post(move || async move {
                Err::<(), _>(ApiError::invalid(format!(
                    "{name} is not available in this version of roentgen yet; see the project's open issues"
                )))
            }),
        );
    }
    router
        .fallback(any(unknown_operation))
        .layer(middleware::from_fn_with_state(state.clone(), request_envelope))
        .with_state(state)
}

async fn unknown_operation(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError { kind: ErrorKind::UnknownOperation, message: format!("no X-Ray operation at {method} {}", uri.path()) }
}

/// Adds `x-amzn-RequestId` to every answer and records the request in the metrics.
async fn request_envelope(State(state): Shared, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let operation = operation_name(request.uri().path());
    let mut response = next.run(request).await;
    if let Ok(id) = HeaderValue::from_str(&request_id()) {
        response.headers_mut().insert("x-amzn-RequestId", id);
    }
    if let Some(operation) = operation {
        state.metrics.request(operation, response.status().as_u16(), started.elapsed());
    }
    response
}

fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut h = state.build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Reads a JSON body: empty means `{}`, over the limit is a 413, and anything that is not the
/// operation's shape is a `SerializationException` naming where it went wrong.
async fn read_json<T: DeserializeOwned + Default>(state: &AppState, body: Body) -> Result<T, ApiError> {
    read_json_with(state, body, |bytes| serde_json::from_slice(bytes)).await
}

/// Reads a body within the size limit and decodes it with `decode`; an empty body is the
/// request with no members, as the AWS SDKs send for operations without input.
async fn read_json_with<T: Default>(
    state: &AppState,
    body: Body,
    decode: impl FnOnce(&[u8]) -> serde_json::Result<T>,
) -> Result<T, ApiError> {
    let limit = state.config.ingest.max_request_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| ApiError {
        kind: ErrorKind::PayloadTooLarge,
        message: format!("request body is over the limit of {limit} bytes"),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode(&bytes).map_err(|e| ApiError {
        kind: ErrorKind::Serialization,
        message: format!("request body is not valid for this operation: {e}"),
    })
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn put_trace_segments(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json_with(&state, request.into_body(), api::PutTraceSegmentsRequest::from_json).await?;
    let documents = req.trace_segment_documents.ok_or_else(|| ApiError::missing("TraceSegmentDocuments"))?;
    let limit = state.config.ingest.max_documents_per_request;
    if documents.len() > limit {
        return Err(ApiError::invalid(format!(
            "TraceSegmentDocuments has {} documents; at most {limit} are accepted per call",
            documents.len()
        )));
    }
    let metrics = &state.metrics;
    metrics.received(Source::Api, documents.len() as u64);
    let mut accepted = Vec::with_capacity(documents.len());
    let mut unprocessed = Vec::new();
    let mut dropped_annotations = 0u64;
    for raw in documents {
        match parse_document_text(&raw, state.config.ingest.max_document_bytes) {
            Ok(parsed) => {
                dropped_annotations += u64::from(parsed.dropped_annotations);
                accepted.push(Arc::new(StoredDocument { raw: raw.into_boxed_str(), parsed, source: Source::Api }));
            }
            Err(e) => {
                metrics.rejected(Source::Api, e.code);
                unprocessed.push(api::UnprocessedTraceSegment {
                    id: e.id.clone(),
                    error_code: e.code.as_str().to_owned(),
                    message: e.message(),
                });
            }
        }
    }
    let count = accepted.len() as u64;
    state.store.append(accepted).await.map_err(ApiError::store)?;
    metrics.accepted(Source::Api, count, dropped_annotations);
    Ok(json(&api::PutTraceSegmentsResponse { unprocessed_trace_segments: unprocessed }))
}

async fn batch_get_traces(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req: api::BatchGetTracesRequest = read_json(&state, request.into_body()).await?;
    let ids = req.trace_ids.ok_or_else(|| ApiError::missing("TraceIds"))?;
    let ids_key = convert::fnv1a(&ids.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    let start = match req.next_token.as_deref() {
        None | Some("") => 0,
        Some(token) => convert::decode_traces_token(token, ids_key)
            .filter(|n| *n <= ids.len())
            .ok_or_else(|| ApiError::invalid("NextToken is not valid for these TraceIds"))?,
    };
    let end = (start + state.config.query.traces_page_size).min(ids.len());
    let mut response = api::BatchGetTracesResponse::default();
    for text in &ids[start..end] {
        let Ok(id) = TraceId::parse(text) else {
            response.unprocessed_trace_ids.push(text.clone());
            continue;
        };
        match state.store.trace(id).await.map_err(ApiError::store)? {
            Some(StoredTrace { mut docs, limit_exceeded }) => {
                docs.sort_by(|a, b| a.parsed.entity().start_time().total_cmp(&b.parsed.entity().start_time()));
                let first = docs.iter().map(|d| d.parsed.entity().start_time()).fold(f64::INFINITY, f64::min);
                let mut last = f64::NEG_INFINITY;
                for doc in &docs {
                    doc.parsed.entity().walk(|e| last = last.max(e.last_time()));
                }
                response.traces.push(api::Trace {
                    id: id.to_string(),
                    duration: if first.is_finite() && last.is_finite() {
                        roentgen_query::span(first, last)
                    } else {
                        0.0
                    },
                    limit_exceeded,
                    segments: roentgen_query::assemble(&docs.iter().map(|d| (&*d.raw, &d.parsed)).collect::<Vec<_>>())
                        .into_iter()
                        .map(|s| api::Segment { id: s.id.to_string(), document: s.document })
                        .collect(),
                });
            }
            None => response.unprocessed_trace_ids.push(text.clone()),
        }
    }
    if end < ids.len() {
        response.next_token = Some(convert::encode_traces_token(end, ids_key));
    }
    Ok(json(&response))
}

async fn get_trace_summaries(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req: api::GetTraceSummariesRequest = read_json(&state, request.into_body()).await?;
    let start = req.start_time.ok_or_else(|| ApiError::missing("StartTime"))?;
    let end = req.end_time.ok_or_else(|| ApiError::missing("EndTime"))?;
    if !(start.is_finite() && end.is_finite()) || end <= start {
        return Err(ApiError::invalid(format!("EndTime ({end}) must be after StartTime ({start})")));
    }
    let range = match req.time_range_type.as_deref() {
        None => TimeRangeType::TraceId,
        Some(text) => TimeRangeType::parse(text).ok_or_else(|| {
            ApiError::invalid(format!("TimeRangeType {text:?} is not one of TraceId, Event, Service"))
        })?,
    };
    let filter_text = req.filter_expression.as_deref().unwrap_or("").trim();
    let filter = if filter_text.is_empty() { None } else { Some(Arc::new(parse_filter(&state, filter_text)?)) };
    let sample_rate = match (req.sampling, &req.sampling_strategy) {
        (Some(true), Some(strategy)) => {
            let value = strategy.value.unwrap_or(state.config.query.default_sampling_rate);
            if !(value > 0.0 && value <= 1.0) {
                return Err(ApiError::invalid(format!("SamplingStrategy.Value must be in (0, 1], not {value}")));
            }
            Some(value)
        }
        (Some(true), None) => Some(state.config.query.default_sampling_rate),
        _ => None,
    };
    let query_key = convert::fnv1a(&[
        &start.to_bits().to_le_bytes(),
        &end.to_bits().to_le_bytes(),
        format!("{range:?}").as_bytes(),
        &sample_rate.unwrap_or(1.0).to_bits().to_le_bytes(),
        filter_text.as_bytes(),
    ]);
    let after = match req.next_token.as_deref() {
        None | Some("") => None,
        Some(token) => Some(
            convert::decode_summary_token(token, query_key)
                .ok_or_else(|| ApiError::invalid("NextToken is not valid for this query"))?,
        ),
    };
    let query = SummaryQuery {
        start,
        end,
        range,
        after,
        limit: state.config.query.summaries_page_size,
        sample_rate,
        filter,
        ordered: true,
    };
    let page = state.store.summaries(&query).await.map_err(ApiError::store)?;
    let response = api::GetTraceSummariesResponse {
        trace_summaries: page.summaries.iter().map(|(s, matched)| convert::trace_summary(s, *matched)).collect(),
        approximate_time: page.next.map_or(start, |c| c.time.max(start)),
        traces_processed_count: page.scanned,
        next_token: page.next.map(|c| convert::encode_summary_token(c, query_key)),
    };
    Ok(json(&response))
}

/// Parses a filter expression for a request, with errors that name the position, and puts each
/// group's filter in place of the references to it.
fn parse_filter(state: &AppState, text: &str) -> Result<Filter, ApiError> {
    let filter = Filter::parse(text).map_err(|e| ApiError::invalid(format!("FilterExpression: {e}")))?;
    let filter = filter
        .resolve_groups(|by, value| state.groups.filter_for(by, value))
        .map_err(|e| ApiError::invalid(format!("FilterExpression: {e}")))?;
    Ok(filter)
}

async fn put_telemetry_records(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req: api::PutTelemetryRecordsRequest = read_json(&state, request.into_body()).await?;
    let records = req.telemetry_records.ok_or_else(|| ApiError::missing("TelemetryRecords"))?;
    if req.ec2_instance_id.as_ref().is_some_and(|id| id.len() > 20) {
        return Err(ApiError::invalid("EC2InstanceId is longer than 20 characters"));
    }
    if req.hostname.as_ref().is_some_and(|h| h.len() > 255) {
        return Err(ApiError::invalid("Hostname is longer than 255 characters"));
    }
    if req.resource_arn.as_ref().is_some_and(|a| a.len() > 500) {
        return Err(ApiError::invalid("ResourceARN is longer than 500 characters"));
    }
    for (i, record) in records.iter().enumerate() {
        if record.timestamp.is_none_or(|t| !t.is_finite()) {
            return Err(ApiError::invalid(format!("TelemetryRecords[{i}].Timestamp is required")));
        }
    }
    for record in records {
        let errors = record.backend_connection_errors.unwrap_or_default();
        state.metrics.daemon_telemetry(
            [
                record.segments_received_count,
                record.segments_sent_count,
                record.segments_spillover_count,
                record.segments_rejected_count,
                errors.timeout_count,
                errors.connection_refused_count,
                errors.http_code_4xx_count,
                errors.http_code_5xx_count,
                errors.unknown_host_count,
                errors.other_count,
            ]
            .map(|v| v.unwrap_or(0)),
        );
    }
    Ok(json(&serde_json::json!({})))
}

async fn get_service_graph(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&graph::service_graph(&state, req).await?))
}

async fn get_trace_graph(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&graph::trace_graph(&state, req).await?))
}

async fn get_time_series_service_statistics(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&graph::time_series(&state, req).await?))
}

async fn create_group(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.groups.create(req)?))
}

async fn get_group(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.groups.get(req)?))
}

async fn get_groups(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    first_page(read_json(&state, request.into_body()).await?, "group")?;
    Ok(json(&state.groups.list()))
}

async fn update_group(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.groups.update(req)?))
}

async fn delete_group(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    state.groups.delete(req)?;
    Ok(json(&serde_json::json!({})))
}

async fn create_sampling_rule(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.sampling.create(req)?))
}

async fn update_sampling_rule(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.sampling.update(req)?))
}

async fn delete_sampling_rule(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.sampling.delete(req)?))
}

async fn get_sampling_rules(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    first_page(read_json(&state, request.into_body()).await?, "rule")?;
    Ok(json(&state.sampling.rules()))
}

async fn get_sampling_targets(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let req = read_json(&state, request.into_body()).await?;
    Ok(json(&state.sampling.targets(req)?))
}

async fn get_sampling_statistic_summaries(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    first_page(read_json(&state, request.into_body()).await?, "summary")?;
    Ok(json(&state.sampling.statistic_summaries()))
}

/// Operations that answer with every item in their first page issue no `NextToken`, so a
/// request carrying one did not get it from this server.
fn first_page(request: api::PageRequest, item: &str) -> Result<(), ApiError> {
    match request.next_token.as_deref() {
        None | Some("") => Ok(()),
        Some(_) => Err(ApiError::invalid(format!(
            "NextToken is not valid: this server answers with every {item} in the first page, and gives no NextToken"
        ))),
    }
}

async fn metrics(State(state): Shared) -> Response {
    let mut body = state.metrics.render(&state.store.stats());
    state.sampling.render_metrics(&mut body);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_of_the_model_has_a_route() {
        let served = [
            "/TraceSegments",
            "/Traces",
            "/TraceSummaries",
            "/TelemetryRecords",
            "/ServiceGraph",
            "/TraceGraph",
            "/TimeSeriesServiceStatistics",
            "/CreateGroup",
            "/GetGroup",
            "/Groups",
            "/UpdateGroup",
            "/DeleteGroup",
            "/CreateSamplingRule",
            "/UpdateSamplingRule",
            "/DeleteSamplingRule",
            "/GetSamplingRules",
            "/SamplingTargets",
            "/SamplingStatisticSummaries",
        ];
        let mut paths: Vec<&str> = PENDING_OPERATIONS.iter().map(|(_, p)| *p).chain(served).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), 38);
        assert!(paths.iter().all(|p| operation_name(p).is_some()));
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, request_id());
    }
}
