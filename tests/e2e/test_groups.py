"""Groups through the AWS CLI and boto3, and group references in filter expressions."""

import time

import botocore.exceptions
import pytest

from conftest import aws_cli
from test_clients import summaries, wait_for_traces


def test_groups_through_aws_cli(roentgen):
    code, out, err = aws_cli(roentgen, "create-group", "--group-name", "cli-slow",
                             "--filter-expression", "responsetime > 5",
                             "--insights-configuration", "InsightsEnabled=true,NotificationsEnabled=false")
    assert code == 0, err
    arn = out["Group"]["GroupARN"]
    assert ":group/cli-slow/" in arn
    assert out["Group"]["InsightsConfiguration"] == {"InsightsEnabled": True, "NotificationsEnabled": False}
    code, out, err = aws_cli(roentgen, "get-groups")
    assert code == 0, err
    assert "cli-slow" in [g["GroupName"] for g in out["Groups"]]
    code, out, err = aws_cli(roentgen, "update-group", "--group-arn", arn, "--filter-expression", "fault")
    assert code == 0, err
    assert out["Group"]["FilterExpression"] == "fault"
    code, out, err = aws_cli(roentgen, "get-group", "--group-name", "cli-slow")
    assert code == 0 and out["Group"]["GroupARN"] == arn, err
    code, _, err = aws_cli(roentgen, "create-group", "--group-name", "cli-bad", "--filter-expression", "fault AND")
    assert code != 0 and "InvalidRequestException" in err and "at column 10" in err
    code, _, err = aws_cli(roentgen, "delete-group", "--group-name", "cli-slow")
    assert code == 0, err
    code, _, err = aws_cli(roentgen, "get-group", "--group-name", "cli-slow")
    assert code != 0 and "InvalidRequestException" in err


def test_group_references_in_filters(xray, python_traces, node_traces):
    wait_for_traces(xray, [*python_traces.values(), *node_traces.values()])
    mine = set(python_traces.values()) | set(node_traces.values())
    group = xray.create_group(GroupName="e2e-failures", FilterExpression="fault OR throttle")["Group"]
    try:
        found = set(summaries(xray, FilterExpression='group.name = "e2e-failures" AND user = "alice"')) & mine
        assert found == {python_traces["/fail"], python_traces["/throttle"]}
        found = set(summaries(xray, FilterExpression=f'group.arn = "{group["GroupARN"]}"')) & mine
        assert found == {python_traces["/fail"], python_traces["/throttle"], node_traces["/fail"], node_traces["/throttle"]}
        with pytest.raises(botocore.exceptions.ClientError) as error:
            xray.get_trace_summaries(StartTime=time.time() - 60, EndTime=time.time(),
                                     FilterExpression='group.name = "nope"')
        assert "no group with the name" in error.value.response["Error"]["Message"]
    finally:
        xray.delete_group(GroupName="e2e-failures")
