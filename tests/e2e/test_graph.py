"""The service map from traces the official SDKs sent, read with the AWS CLI and boto3."""

import json
import time

from conftest import aws_cli
from test_clients import wait_for_traces


def nodes(services):
    return {(s["Name"], s.get("Type")): s for s in services}


def test_service_graph_through_aws_cli(roentgen, xray, python_traces, node_traces):
    wait_for_traces(xray, [*python_traces.values(), *node_traces.values()])
    now = int(time.time())
    code, out, err = aws_cli(roentgen, "get-service-graph", "--start-time", str(now - 600), "--end-time", str(now + 60))
    assert code == 0, err
    graph = nodes(out["Services"])
    python = graph[("python-svc", None)]
    assert python["Root"] is True and python["State"] == "active"
    stats = python["SummaryStatistics"]
    assert stats["OkCount"] >= 1 and stats["FaultStatistics"]["TotalCount"] >= 1
    assert stats["ErrorStatistics"]["ThrottleCount"] >= 1
    assert graph[("python-svc", "client")]["Edges"][0]["ReferenceId"] == python["ReferenceId"]
    database = graph[("orders@db.internal", "remote")]
    assert database["State"] == "unknown"
    targets = {e["ReferenceId"] for e in python["Edges"]}
    assert database["ReferenceId"] in targets
    # The SDK's botocore patch recorded the GetItem call; the table is an inferred node.
    table = graph[("orders", "AWS::DynamoDB::Table")]
    assert table["State"] == "unknown" and table["ReferenceId"] in targets
    assert table["SummaryStatistics"]["OkCount"] >= 1
    node = graph[("node-svc", None)]
    assert node["SummaryStatistics"]["TotalCount"] >= 3
    # The Node SDK's AWS SDK v3 capture recorded SendMessage; the queue is an inferred node.
    queue = graph[("orders-queue", "AWS::SQS::Queue")]
    assert queue["ReferenceId"] in {e["ReferenceId"] for e in node["Edges"]}
    assert queue["SummaryStatistics"]["TotalCount"] >= 3
    assert sum(h["Count"] for h in node["ResponseTimeHistogram"]) == node["SummaryStatistics"]["TotalCount"]


def test_trace_graph_and_time_series(roentgen, xray, python_traces):
    wait_for_traces(xray, python_traces.values())
    code, out, err = aws_cli(roentgen, "get-trace-graph", "--trace-ids", python_traces["/fail"])
    assert code == 0, err
    graph = nodes(out["Services"])
    assert graph[("python-svc", None)]["SummaryStatistics"]["FaultStatistics"]["TotalCount"] == 1
    assert graph[("python-svc", None)]["SummaryStatistics"]["TotalCount"] == 1

    now = int(time.time())
    code, out, err = aws_cli(roentgen, "get-time-series-service-statistics", "--start-time", str(now - 600),
                             "--end-time", str(now + 60), "--period", "60",
                             "--entity-selector-expression", 'service("python-svc")')
    assert code == 0, err
    points = out["TimeSeriesServiceStatistics"]
    assert sum(p["ServiceSummaryStatistics"]["TotalCount"] for p in points) >= 3
    assert all(p["Timestamp"] for p in points)

    series = xray.get_time_series_service_statistics(StartTime=now - 600, EndTime=now + 60, Period=300,
                                                      EntitySelectorExpression='edge("python-svc", "orders@db.internal")')
    assert sum(p["EdgeSummaryStatistics"]["TotalCount"] for p in series["TimeSeriesServiceStatistics"]) >= 3


def test_async_link_edges(roentgen, xray):
    """A queue consumer's segment links to the SendMessage call of the trace that enqueued its
    message (as the X-Ray exporter of OpenTelemetry sends it): the map shows a `link` edge from
    the queue to the consumer, with the events' age."""
    now = time.time()
    producer = f"1-{int(now):08x}-{'a1' * 12}"
    consumer = f"1-{int(now):08x}-{'b2' * 12}"
    send = {"id": "5e4d000000000001", "name": "SQS", "namespace": "aws", "start_time": now - 5.0, "end_time": now - 4.9,
            "aws": {"operation": "SendMessage", "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/links-queue"}}
    documents = [
        {"trace_id": producer, "id": "5e4d000000000000", "name": "link-producer", "start_time": now - 5.1,
         "end_time": now - 4.8, "subsegments": [send]},
        {"trace_id": consumer, "id": "c0c0000000000000", "name": "link-consumer", "origin": "AWS::Lambda::Function",
         "start_time": now - 3.0, "end_time": now - 2.5, "links": [{"trace_id": producer, "id": send["id"], "attributes": {}}]},
    ]
    answer = xray.put_trace_segments(TraceSegmentDocuments=[json.dumps(d) for d in documents])
    assert answer["UnprocessedTraceSegments"] == []

    code, out, err = aws_cli(roentgen, "get-service-graph", "--start-time", str(int(now) - 60), "--end-time", str(int(now) + 60))
    assert code == 0, err
    graph = nodes(out["Services"])
    queue = graph[("links-queue", "AWS::SQS::Queue")]
    target = graph[("link-consumer", "AWS::Lambda::Function")]["ReferenceId"]
    link = next(e for e in queue["Edges"] if e["ReferenceId"] == target)
    assert link["EdgeType"] == "link" and "ResponseTimeHistogram" not in link
    assert link["ReceivedEventAgeHistogram"] == [{"Value": 2.0, "Count": 1}]
    assert link["SummaryStatistics"]["TotalCount"] == 1

    consumer_trace = xray.batch_get_traces(TraceIds=[consumer])["Traces"][0]
    assert json.loads(consumer_trace["Segments"][0]["Document"])["links"][0]["trace_id"] == producer
