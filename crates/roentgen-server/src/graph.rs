//! `GetServiceGraph`, `GetTraceGraph` and `GetTimeSeriesServiceStatistics`: service graphs
//! aggregated from the trace summaries of a time window, of a group, or of given traces.

use std::collections::BTreeMap;
use std::sync::Arc;

use roentgen_model::{TraceId, api};
use roentgen_query::filter::{Expr, Filter, GroupKey, Node};
use roentgen_query::{Histogram, ServiceGraph, Statistics, TimeRangeType, TraceSummary, summarize};
use roentgen_store::SummaryQuery;

use crate::api::AppState;
use crate::convert;
use crate::error::ApiError;

/// Windows longer than this many periods are refused, so one request cannot ask for millions.
const MAX_PERIODS: f64 = 10_000.0;

fn window(start: Option<f64>, end: Option<f64>) -> Result<(f64, f64), ApiError> {
    let start = start.ok_or_else(|| ApiError::missing("StartTime"))?;
    let end = end.ok_or_else(|| ApiError::missing("EndTime"))?;
    if !(start.is_finite() && end.is_finite()) || end <= start {
        return Err(ApiError::invalid(format!("EndTime ({end}) must be after StartTime ({start})")));
    }
    Ok((start, end))
}

/// The filter of the group a request names, if it names one.
fn group_filter(state: &AppState, name: Option<&str>, arn: Option<&str>) -> Result<Option<Arc<Filter>>, ApiError> {
    let (by, value) = match (name, arn) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give GroupName or GroupARN, not both")),
        (Some(name), None) => (GroupKey::Name, name),
        (None, Some(arn)) => (GroupKey::Arn, arn),
        (None, None) => return Ok(None),
    };
    state.groups.filter_for(by, value).map(|f| Some(Arc::new(f))).map_err(ApiError::invalid)
}

/// Every trace that was active in the window: its last activity falls in it.
async fn traces_in(
    state: &AppState,
    start: f64,
    end: f64,
    filter: Option<Arc<Filter>>,
) -> Result<Vec<Arc<TraceSummary>>, ApiError> {
    let query = SummaryQuery {
        start,
        end,
        range: TimeRangeType::Event,
        after: None,
        limit: usize::MAX,
        sample_rate: None,
        filter,
        ordered: false,
    };
    let page = state.store.summaries(&query).await.map_err(ApiError::store)?;
    Ok(page.summaries.into_iter().map(|(s, _)| s).collect())
}

pub async fn service_graph(
    state: &AppState,
    req: api::GetServiceGraphRequest,
) -> Result<api::GetServiceGraphResponse, ApiError> {
    let (start, end) = window(req.start_time, req.end_time)?;
    // Graphs cover whole minutes, and the answer says which.
    let (start, end) = roentgen_query::whole_minutes(start, end);
    let graph = match group_filter(state, req.group_name.as_deref(), req.group_arn.as_deref())? {
        // A group's filter must see each trace; the whole graph is summed from rollups.
        Some(filter) => {
            let mut graph = ServiceGraph::default();
            for trace in traces_in(state, start, end, Some(filter)).await? {
                graph.add(&trace);
            }
            graph
        }
        None => state.store.service_graph(start, end).await.map_err(ApiError::store)?,
    };
    // Pages slice one ordering of the whole graph, so reference ids hold across pages.
    let key = convert::fnv1a(&[
        &start.to_bits().to_le_bytes(),
        &end.to_bits().to_le_bytes(),
        req.group_name.as_deref().unwrap_or_default().as_bytes(),
        req.group_arn.as_deref().unwrap_or_default().as_bytes(),
    ]);
    let mut services = convert::services(&graph);
    let from = match req.next_token.as_deref() {
        None | Some("") => 0,
        Some(token) => convert::decode_graph_token(token, key)
            .filter(|&n| n <= services.len())
            .ok_or_else(|| ApiError::invalid("NextToken is not valid for this StartTime, EndTime and group"))?,
    };
    let to = (from + state.config.query.graph_page_size).min(services.len());
    let next_token = (to < services.len()).then(|| convert::encode_graph_token(to, key));
    services.truncate(to);
    services.drain(..from);
    Ok(api::GetServiceGraphResponse {
        start_time: start,
        end_time: end,
        services,
        contains_old_group_versions: false,
        next_token,
    })
}

pub async fn trace_graph(
    state: &AppState,
    req: api::BatchGetTracesRequest,
) -> Result<api::GetTraceGraphResponse, ApiError> {
    let ids = req.trace_ids.ok_or_else(|| ApiError::missing("TraceIds"))?;
    let mut graph = ServiceGraph::default();
    for text in ids {
        let id = TraceId::parse(&text).map_err(|e| ApiError::invalid(format!("TraceIds: {e}")))?;
        if let Some(docs) = state.store.get_trace(id).await.map_err(ApiError::store)? {
            let parsed: Vec<_> = docs.iter().map(|d| &d.parsed).collect();
            graph.add(&summarize(id, &parsed, 1));
        }
    }
    Ok(api::GetTraceGraphResponse { services: convert::services(&graph) })
}

/// What `EntitySelectorExpression` picks.
enum Selection {
    Service(Node),
    Edge(Node, Node),
    /// No selector: the requests entering the graph (the edges from client nodes).
    Entry,
}

fn selection(text: Option<&str>) -> Result<Selection, ApiError> {
    let Some(text) = text.map(str::trim) else { return Ok(Selection::Entry) };
    let invalid = |e: String| ApiError::invalid(format!("EntitySelectorExpression: {e}"));
    // A bare id(...) names a node, as service(id(...)) does.
    let wrapped =
        if text.to_ascii_lowercase().starts_with("id(") { format!("service({text})") } else { text.to_owned() };
    let filter = Filter::parse(&wrapped).map_err(|e| invalid(e.to_string()))?;
    match filter.expr() {
        Expr::Service { node: Some(node), filter: None } => Ok(Selection::Service(node.clone())),
        Expr::Edge { from, to, filter: None } => Ok(Selection::Edge(from.clone(), to.clone())),
        _ => Err(invalid("expected one service(...), id(...) or edge(..., ...) without a filter".into())),
    }
}

pub async fn time_series(
    state: &AppState,
    req: api::GetTimeSeriesServiceStatisticsRequest,
) -> Result<api::GetTimeSeriesServiceStatisticsResponse, ApiError> {
    let (start, end) = window(req.start_time, req.end_time)?;
    let period = req.period.unwrap_or(60);
    if period < 60 || period % 60 != 0 {
        return Err(ApiError::invalid(format!("Period must be a positive multiple of 60 seconds, not {period}")));
    }
    let period = period as f64;
    if (end - start) / period > MAX_PERIODS {
        return Err(ApiError::invalid(format!(
            "the window holds more than {MAX_PERIODS} periods; use a longer Period"
        )));
    }
    if req.forecast_statistics == Some(true) {
        return Err(ApiError::invalid(
            "ForecastStatistics need insights, which this version of roentgen does not compute",
        ));
    }
    let selection = selection(req.entity_selector_expression.as_deref())?;
    let filter = group_filter(state, req.group_name.as_deref(), req.group_arn.as_deref())?;

    // Each trace counts in the period it started in.
    let mut periods: BTreeMap<i64, ServiceGraph> = BTreeMap::new();
    for trace in traces_in(state, start, end, filter).await? {
        let bucket = (trace.start_time / period).floor() as i64;
        periods.entry(bucket).or_default().add(&trace);
    }
    let mut out = Vec::new();
    for (bucket, graph) in periods {
        let mut totals = Statistics::default();
        let mut histogram = Histogram::new();
        let mut found = false;
        for node in &graph.nodes {
            match &selection {
                Selection::Service(selector) if !node.client && selector.matches(&node.key) => {
                    found = true;
                    totals.add(&node.series.statistics);
                    histogram.merge(&node.series.response_times);
                }
                Selection::Edge(from, to) if !node.client && from.matches(&node.key) => {
                    // A link's series holds event ages, not response times.
                    for edge in node.edges.iter().filter(|e| !e.link && to.matches(&graph.nodes[e.target].key)) {
                        found = true;
                        totals.add(&edge.series.statistics);
                        histogram.merge(&edge.series.response_times);
                    }
                }
                Selection::Entry if node.client => {
                    for edge in &node.edges {
                        found = true;
                        totals.add(&edge.series.statistics);
                        histogram.merge(&edge.series.response_times);
                    }
                }
                _ => {}
            }
        }
        if !found {
            continue;
        }
        let statistics = Some(convert::statistics(&totals));
        let is_service = matches!(selection, Selection::Service(_));
        out.push(api::TimeSeriesServiceStatistics {
            timestamp: bucket as f64 * period,
            edge_summary_statistics: if is_service { None } else { statistics.clone() },
            service_summary_statistics: if is_service { statistics } else { None },
            response_time_histogram: convert::histogram(&histogram),
        });
    }
    Ok(api::GetTimeSeriesServiceStatisticsResponse {
        time_series_service_statistics: out,
        contains_old_group_versions: false,
    })
}
