"""The filter-expression golden set, end to end: its traces sent with PutTraceSegments, every
expression asked through boto3, and a sample through the AWS CLI, each answer checked against
the same expectations as the Rust golden test (tests/golden/filter-expressions.json)."""

import json
import os
import time
from pathlib import Path

import pytest

from conftest import ROOT, aws_cli
from test_clients import wait_for_traces

GOLDEN = json.loads((ROOT / "tests" / "golden" / "filter-expressions.json").read_text())


def shifted(entity, offset):
    """The document with every time moved by `offset` seconds, subsegments included."""
    entity = dict(entity)
    for key in ("start_time", "end_time"):
        if key in entity:
            entity[key] = entity[key] + offset
    if "subsegments" in entity:
        entity["subsegments"] = [shifted(s, offset) for s in entity["subsegments"]]
    return entity


@pytest.fixture(scope="module")
def golden_traces(xray):
    now = time.time()
    offset = now - 300 - 100  # the golden documents start at t=100
    ids = []
    for docs in GOLDEN["traces"]:
        trace_id = "1-%08x-%s" % (int(now) - 300, os.urandom(12).hex())
        ids.append(trace_id)
        documents = [json.dumps(shifted(dict(d, trace_id=trace_id), offset)) for d in docs]
        answer = xray.put_trace_segments(TraceSegmentDocuments=documents)
        assert answer["UnprocessedTraceSegments"] == []
    wait_for_traces(xray, ids)
    return ids


def matching(pages, ids):
    found = set()
    for page in pages:
        found.update(s["Id"] for s in page["TraceSummaries"])
    return {ids.index(i) + 1 for i in found if i in ids}


def test_every_golden_expression_through_boto3(xray, golden_traces):
    now = time.time()
    failures = []
    for case in GOLDEN["cases"]:
        pages = xray.get_paginator("get_trace_summaries").paginate(
            StartTime=now - 600, EndTime=now + 60, FilterExpression=case["filter"])
        got = matching(pages, golden_traces)
        if got != set(case["matches"]):
            failures.append(f'{case["filter"]}: expected {sorted(case["matches"])}, got {sorted(got)}')
    assert not failures, "\n".join(failures)


def test_golden_expressions_through_aws_cli(roentgen, golden_traces):
    now = int(time.time())
    for case in GOLDEN["cases"][::5]:
        code, out, err = aws_cli(roentgen, "get-trace-summaries", "--start-time", str(now - 600),
                                 "--end-time", str(now + 60), "--filter-expression", case["filter"])
        assert code == 0, f'{case["filter"]}: {err}'
        assert matching([out], golden_traces) == set(case["matches"]), case["filter"]
