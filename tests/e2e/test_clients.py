"""The official X-Ray SDKs send over UDP; boto3 and the AWS CLI read the traces back."""

import json
import time

import botocore.exceptions
import pytest

from conftest import aws_cli


def wait_for_traces(xray, trace_ids, timeout=20):
    """BatchGetTraces until every id is found (UDP ingest is asynchronous)."""
    deadline = time.time() + timeout
    while True:
        traces = {}
        for page in xray.get_paginator("batch_get_traces").paginate(TraceIds=list(trace_ids)):
            traces.update({t["Id"]: t for t in page["Traces"]})
        if len(traces) == len(trace_ids) or time.time() > deadline:
            return traces
        time.sleep(0.2)


def documents(trace):
    """The trace's documents as the application recorded them (inferred segments left out)."""
    return [doc for doc in all_documents(trace) if not doc.get("inferred")]


def all_documents(trace):
    return [json.loads(s["Document"]) for s in trace["Segments"]]


def entities(doc):
    yield doc
    for sub in doc.get("subsegments", []):
        yield from entities(sub)


def find_all(docs, name):
    return [entity for doc in docs for entity in entities(doc) if entity["name"] == name]


def find(docs, name):
    found = find_all(docs, name)
    assert found, f"no entity named {name!r} in {[d['name'] for d in docs]}"
    return found[0]


def summaries(xray, **kwargs):
    now = time.time()
    found = {}
    pages = xray.get_paginator("get_trace_summaries").paginate(StartTime=now - 600, EndTime=now + 60, **kwargs)
    for page in pages:
        found.update({s["Id"]: s for s in page["TraceSummaries"]})
    return found


def test_python_sdk_segments_round_trip(xray, python_traces):
    traces = wait_for_traces(xray, python_traces.values())
    assert set(traces) == set(python_traces.values())

    ok = documents(traces[python_traces["/ok"]])
    # The SDK streamed every subsegment on its own; they come back merged into one segment.
    assert [d["name"] for d in ok] == ["python-svc"]
    root = find(ok, "python-svc")
    assert root["annotations"] == {"tenant": "acme", "attempt": 3, "score": 0.75, "vip": True}
    assert root["metadata"]["shop"]["cart"] == {"items": [1, 2, 3], "total": 42.5}
    assert root["user"] == "alice"
    assert root["http"]["request"]["url"] == "http://python-svc.local/ok"
    assert root["http"]["response"]["status"] == 200
    assert root["aws"]["xray"]["sdk"] == "X-Ray for Python"
    logic = find(ok, "business-logic")
    assert logic["annotations"] == {"step": "pricing"}
    sql = find(ok, "orders@db.internal")
    assert sql["namespace"] == "remote"
    assert sql["sql"]["database_type"] == "PostgreSQL"
    # The httplib patch records the request and the response as separate remote subsegments.
    calls = find_all(ok, "127.0.0.1")
    assert all(c["namespace"] == "remote" and c["http"]["request"]["url"].endswith("/inventory") for c in calls)
    assert any(c["http"].get("response", {}).get("status") == 200 for c in calls)
    table_call = find(ok, "dynamodb")
    assert table_call["namespace"] == "aws"
    assert (table_call["aws"]["operation"], table_call["aws"]["table_name"]) == ("GetItem", "orders")
    assert logic in root["subsegments"] and sql in logic["subsegments"]
    # No segment answered the GetItem call: X-Ray's inferred segment stands for the table.
    inferred = [d for d in all_documents(traces[python_traces["/ok"]]) if d.get("inferred")]
    table = next(d for d in inferred if d["parent_id"] == table_call["id"])
    assert (table["origin"], table["name"], table["aws"]["table_name"]) == ("AWS::DynamoDB::Table", "dynamodb", "orders")
    assert (table["start_time"], table["end_time"]) == (table_call["start_time"], table_call["end_time"])
    assert table["trace_id"] == python_traces["/ok"]
    assert {d["parent_id"] for d in inferred} >= {sql["id"], *(c["id"] for c in calls)}

    throttled = find(documents(traces[python_traces["/throttle"]]), "python-svc")
    assert throttled["throttle"] and throttled["error"]
    assert throttled["http"]["response"]["status"] == 429
    failed = documents(traces[python_traces["/fail"]])
    assert find(failed, "python-svc")["fault"]
    exception = find(failed, "charge-card")["cause"]["exceptions"][0]
    assert exception["message"] == "card processor unavailable"
    assert exception["type"] == "RuntimeError"


def test_node_sdk_segments_round_trip(xray, node_traces):
    traces = wait_for_traces(xray, node_traces.values())
    assert set(traces) == set(node_traces.values())
    ok = documents(traces[node_traces["/ok"]])
    root = find(ok, "node-svc")
    assert root["annotations"] == {"tenant": "globex", "attempt": 1, "vip": False}
    assert root["metadata"]["request"]["headers"]
    assert root["user"] == "bob"
    assert root["http"]["request"]["method"] == "GET"
    assert root["http"]["response"]["status"] == 200
    assert find(ok, "inventory@mysql.internal")["sql"]["database_type"] == "MySQL"
    call = find(ok, "127.0.0.1")
    assert call["namespace"] == "remote"
    assert call["http"]["response"]["status"] == 200
    enqueue = find(ok, "SQS")
    assert enqueue["namespace"] == "aws"
    assert enqueue["aws"]["operation"] == "SendMessage"
    assert enqueue["aws"]["queue_url"].endswith("/orders-queue")
    queue = next(d for d in all_documents(traces[node_traces["/ok"]]) if d.get("parent_id") == enqueue["id"])
    assert (queue["inferred"], queue["origin"], queue["aws"]["operation"]) == (True, "AWS::SQS::Queue", "SendMessage")
    throttled = find(documents(traces[node_traces["/throttle"]]), "node-svc")
    assert throttled["throttle"] and throttled["error"]
    failed = documents(traces[node_traces["/fail"]])
    assert find(failed, "node-svc")["fault"]
    assert find(failed, "render")["cause"]["exceptions"][0]["message"] == "template missing"


def test_trace_summaries_through_boto3(xray, python_traces, node_traces):
    wait_for_traces(xray, [*python_traces.values(), *node_traces.values()])
    found = summaries(xray)
    ok = found[python_traces["/ok"]]
    assert ok["Http"]["HttpStatus"] == 200
    assert ok["Http"]["HttpURL"] == "http://python-svc.local/ok"
    assert ok["Http"]["HttpMethod"] == "GET"
    assert ok["Http"]["UserAgent"] == "e2e-client/1.0"
    assert ok["Http"]["ClientIp"] == "192.0.2.10"
    assert ok["Annotations"]["tenant"][0]["AnnotationValue"] == {"StringValue": "acme"}
    assert ok["Annotations"]["attempt"][0]["AnnotationValue"] == {"NumberValue": 3.0}
    assert ok["Annotations"]["score"][0]["AnnotationValue"] == {"NumberValue": 0.75}
    assert ok["Annotations"]["vip"][0]["AnnotationValue"] == {"BooleanValue": True}
    assert ok["Annotations"]["step"][0]["ServiceIds"][0]["Name"] == "python-svc"
    assert ok["Users"][0]["UserName"] == "alice"
    assert ok["EntryPoint"]["Name"] == "python-svc"
    names = {s["Name"] for s in ok["ServiceIds"]}
    assert {"python-svc", "orders@db.internal", "127.0.0.1"} <= names
    assert not ok["HasFault"] and not ok["HasError"] and not ok["HasThrottle"] and not ok["IsPartial"]
    assert ok["ResponseTime"] > 0 and ok["Duration"] >= ok["ResponseTime"]
    throttled = found[python_traces["/throttle"]]
    assert throttled["HasThrottle"] and throttled["HasError"] and not throttled["HasFault"]
    assert found[python_traces["/fail"]]["HasFault"]
    node_ok = found[node_traces["/ok"]]
    assert node_ok["Users"][0]["UserName"] == "bob"
    assert node_ok["Annotations"]["vip"][0]["AnnotationValue"] == {"BooleanValue": False}
    assert found[node_traces["/fail"]]["HasFault"]
    assert found[node_traces["/throttle"]]["HasThrottle"]

    event = summaries(xray, TimeRangeType="Event")
    assert set(python_traces.values()) <= set(event)


def test_filter_expressions_through_boto3(xray, python_traces, node_traces):
    wait_for_traces(xray, [*python_traces.values(), *node_traces.values()])
    mine = set(python_traces.values()) | set(node_traces.values())

    def ids(expression):
        return set(summaries(xray, FilterExpression=expression)) & mine

    assert ids('service("python-svc") { fault }') == {python_traces["/fail"]}
    assert ids("fault") == {python_traces["/fail"], node_traces["/fail"]}
    assert ids("http.status = 429") == {python_traces["/throttle"], node_traces["/throttle"]}
    assert ids('annotation.tenant = "globex"') == set(node_traces.values())
    assert ids('annotation.attempt >= 3 AND annotation.vip = true') == set(python_traces.values())
    assert ids('user = "bob" AND !ok') == {node_traces["/throttle"], node_traces["/fail"]}
    assert ids('edge("node-svc", "127.0.0.1") { http.status = 200 }') == set(node_traces.values())
    assert ids('service(id(name: "orders@db.internal", type: "remote"))') == set(python_traces.values())
    assert ids('http.url ENDSWITH "/ok" AND responsetime < 60') == {python_traces["/ok"], node_traces["/ok"]}
    assert ids('rootcause.fault.exception { message = "card processor unavailable" }') == {python_traces["/fail"]}
    assert ids('rootcause.fault.entity { last and name = "charge-card" }') == {python_traces["/fail"]}


def test_root_causes_in_summaries(xray, python_traces):
    wait_for_traces(xray, python_traces.values())
    failed = summaries(xray)[python_traces["/fail"]]
    cause = failed["FaultRootCauses"][0]
    assert cause["ClientImpacting"] is True
    service = cause["Services"][0]
    assert service["Name"] == "python-svc" and service["Inferred"] is False
    last = service["EntityPath"][-1]
    assert last["Name"] == "charge-card"
    assert last["Exceptions"][0] == {"Name": "RuntimeError", "Message": "card processor unavailable"}
    slow = failed["ResponseTimeRootCauses"][0]["Services"][0]["EntityPath"][0]
    assert slow["Name"] == "python-svc" and slow["Coverage"] == 1.0


def test_aws_cli_reads_traces(roentgen, xray, python_traces):
    wait_for_traces(xray, python_traces.values())
    ids = list(python_traces.values())
    code, out, err = aws_cli(roentgen, "batch-get-traces", "--trace-ids", *ids)
    assert code == 0, err
    assert {t["Id"] for t in out["Traces"]} == set(ids)
    root = find(documents(next(t for t in out["Traces"] if t["Id"] == python_traces["/ok"])), "python-svc")
    assert root["annotations"]["tenant"] == "acme"

    now = int(time.time())
    code, out, err = aws_cli(roentgen, "get-trace-summaries", "--start-time", str(now - 600), "--end-time", str(now + 60))
    assert code == 0, err
    by_id = {s["Id"]: s for s in out["TraceSummaries"]}
    assert by_id[python_traces["/fail"]]["HasFault"] is True
    assert by_id[python_traces["/ok"]]["Users"][0]["UserName"] == "alice"

    code, out, err = aws_cli(roentgen, "get-trace-summaries", "--start-time", str(now - 600), "--end-time",
                             str(now + 60), "--filter-expression", 'service("python-svc") { fault }')
    assert code == 0, err
    assert [s["Id"] for s in out["TraceSummaries"]] == [python_traces["/fail"]]

    code, _, err = aws_cli(roentgen, "get-trace-summaries", "--start-time", str(now - 600),
                           "--end-time", str(now + 60), "--filter-expression", "http.url CONTAINS 5")
    assert code != 0
    assert "InvalidRequestException" in err
    assert "expected a string after CONTAINS, found the number 5 at column 19" in err


def test_put_trace_segments_through_boto3(xray):
    now = time.time()
    trace_id = "1-%08x-%024x" % (int(now), 0xE2E)
    good = json.dumps({"trace_id": trace_id, "id": "00000000000000aa", "name": "boto3-svc",
                       "start_time": now, "end_time": now + 0.5})
    bad = json.dumps({"trace_id": trace_id, "id": "00000000000000bb", "name": "no,commas",
                      "start_time": now, "end_time": now + 0.5})
    answer = xray.put_trace_segments(TraceSegmentDocuments=[good, bad, "{oops"])
    unprocessed = answer["UnprocessedTraceSegments"]
    assert [u.get("ErrorCode") for u in unprocessed] == ["InvalidName", "InvalidSegment"]
    assert unprocessed[0]["Id"] == "00000000000000bb"
    trace = xray.batch_get_traces(TraceIds=[trace_id])["Traces"][0]
    assert [s["Document"] for s in trace["Segments"]] == [good]

    with pytest.raises(botocore.exceptions.ClientError) as error:
        xray.get_trace_summaries(StartTime=now - 60, EndTime=now, FilterExpression='responsetime > "5"')
    assert error.value.response["Error"]["Code"] == "InvalidRequestException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "expected a number after >" in error.value.response["Error"]["Message"]

    with pytest.raises(botocore.exceptions.ClientError) as error:
        xray.get_insight_summaries(StartTime=now - 60, EndTime=now)
    assert error.value.response["Error"]["Code"] == "InvalidRequestException"


def test_daemon_telemetry_through_boto3(roentgen, xray):
    xray.put_telemetry_records(
        TelemetryRecords=[{"Timestamp": time.time(), "SegmentsReceivedCount": 5, "SegmentsSentCount": 5}],
        Hostname="e2e-host",
    )
    import urllib.request
    metrics = urllib.request.urlopen(f"{roentgen.endpoint}/metrics").read().decode()
    assert "roentgen_daemon_segments_received_total 5" in metrics


def test_a_trace_past_its_size_limit_reports_limit_exceeded(xray):
    now = time.time()
    trace_id = f"1-{int(now):08x}-{'1e' * 12}"
    padding = "x" * 60_000
    documents = [json.dumps({"trace_id": trace_id, "id": f"{n:016x}", "name": "big", "start_time": now - 1,
                             "end_time": now, "metadata": {"default": {"padding": padding}}}) for n in range(1, 5)]
    assert xray.put_trace_segments(TraceSegmentDocuments=documents)["UnprocessedTraceSegments"] == []
    trace = xray.batch_get_traces(TraceIds=[trace_id])["Traces"][0]
    assert trace["LimitExceeded"] is True
    assert len(trace["Segments"]) == 3, "the fourth document would pass 200 KB"
    small = xray.batch_get_traces(TraceIds=[trace_id.replace("1e" * 12, "2f" * 12)])
    assert small["UnprocessedTraceIds"]
