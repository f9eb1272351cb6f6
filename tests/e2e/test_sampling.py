"""Central sampling: rules through boto3 and the AWS CLI, and the official SDKs obeying them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions
import pytest

from conftest import CACHE, aws_cli


def rule(name, service, priority, reservoir, rate):
    return {"RuleName": name, "ResourceARN": "*", "Priority": priority, "FixedRate": rate,
            "ReservoirSize": reservoir, "ServiceName": service, "ServiceType": "*", "Host": "*",
            "HTTPMethod": "*", "URLPath": "*", "Version": 1}


def rule_names(xray):
    names = []
    for page in xray.get_paginator("get_sampling_rules").paginate():
        names += [r["SamplingRule"]["RuleName"] for r in page["SamplingRuleRecords"]]
    return names


def test_sampling_rules_through_boto3(xray):
    created = xray.create_sampling_rule(SamplingRule=rule("boto3-rule", "svc-*", 50, 2, 0.1))["SamplingRuleRecord"]
    assert created["SamplingRule"]["RuleARN"].endswith(":sampling-rule/boto3-rule")
    assert created["CreatedAt"] == created["ModifiedAt"]
    assert "boto3-rule" in rule_names(xray) and rule_names(xray)[-1] == "Default"

    with pytest.raises(botocore.exceptions.ClientError) as error:
        xray.create_sampling_rule(SamplingRule=rule("boto3-rule", "svc", 50, 2, 0.1))
    assert error.value.response["Error"]["Code"] == "InvalidRequestException"
    with pytest.raises(botocore.exceptions.ClientError) as error:
        xray.update_sampling_rule(SamplingRuleUpdate={"RuleName": "Default", "URLPath": "/x"})
    assert "Default" in error.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as error:
        xray.delete_sampling_rule(RuleName="Default")
    assert error.value.response["Error"]["Code"] == "InvalidRequestException"

    updated = xray.update_sampling_rule(SamplingRuleUpdate={"RuleName": "boto3-rule", "ReservoirSize": 7})
    assert updated["SamplingRuleRecord"]["SamplingRule"]["ReservoirSize"] == 7

    now = time.time()
    targets = xray.get_sampling_targets(SamplingStatisticsDocuments=[
        {"RuleName": "boto3-rule", "ClientID": "0123456789abcdef01234567", "Timestamp": now,
         "RequestCount": 70, "SampledCount": 7, "BorrowCount": 1},
        {"RuleName": "no-such-rule", "ClientID": "0123456789abcdef01234567", "Timestamp": now,
         "RequestCount": 1, "SampledCount": 0},
    ])
    target = targets["SamplingTargetDocuments"][0]
    assert target["RuleName"] == "boto3-rule" and target["FixedRate"] == 0.1
    assert 1 <= target["ReservoirQuota"] <= 7
    assert targets["UnprocessedStatistics"][0]["ErrorCode"] == "400"
    summaries = xray.get_sampling_statistic_summaries()["SamplingStatisticSummaries"]
    mine = next(s for s in summaries if s["RuleName"] == "boto3-rule")
    assert (mine["RequestCount"], mine["SampledCount"], mine["BorrowCount"]) == (70, 7, 1)

    deleted = xray.delete_sampling_rule(RuleARN=created["SamplingRule"]["RuleARN"])
    assert deleted["SamplingRuleRecord"]["SamplingRule"]["RuleName"] == "boto3-rule"
    assert "boto3-rule" not in rule_names(xray)


def test_sampling_rules_through_aws_cli(roentgen, tmp_path):
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(rule("cli-rule", "cli-svc", 60, 1, 0.5)))
    code, out, err = aws_cli(roentgen, "create-sampling-rule", "--sampling-rule", f"file://{path}")
    assert code == 0, err
    assert out["SamplingRuleRecord"]["SamplingRule"]["ServiceName"] == "cli-svc"
    code, out, err = aws_cli(roentgen, "get-sampling-rules")
    assert code == 0, err
    assert "cli-rule" in [r["SamplingRule"]["RuleName"] for r in out["SamplingRuleRecords"]]
    code, out, err = aws_cli(roentgen, "update-sampling-rule", "--sampling-rule-update",
                             json.dumps({"RuleName": "cli-rule", "FixedRate": 0.75}))
    assert code == 0, err
    assert out["SamplingRuleRecord"]["SamplingRule"]["FixedRate"] == 0.75
    code, out, err = aws_cli(roentgen, "delete-sampling-rule", "--rule-name", "cli-rule")
    assert code == 0, err
    path.write_text(json.dumps(rule("cli-bad", "x", 0, 1, 0.5)))
    code, _, err = aws_cli(roentgen, "create-sampling-rule", "--sampling-rule", f"file://{path}")
    assert code != 0 and "Priority" in err


def run_sdk(command, env, xray, blocked_rule):
    """Runs a sampling app: first decisions, then a rule change, then how long it took to arrive."""
    app = subprocess.Popen(command, env=env, cwd=Path(__file__).parent, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(app.stdout.readline() or "null")
        assert first is not None, app.stderr.read()
        xray.update_sampling_rule(SamplingRuleUpdate={"RuleName": blocked_rule, "FixedRate": 1.0})
        app.stdin.write("go\n")
        app.stdin.flush()
        second = json.loads(app.stdout.readline() or "null")
        assert second is not None, app.stderr.read()
        return first, second
    finally:
        app.kill()
        app.wait()


@pytest.mark.parametrize("sdk", ["python", "node"])
def test_sdks_obey_central_rules(roentgen, xray, sdk):
    prefix = "py" if sdk == "python" else "node"
    blocked, everything = f"{prefix}-blocked", f"{prefix}-all"
    xray.create_sampling_rule(SamplingRule=rule(blocked, blocked, 1, 0, 0.0))
    xray.create_sampling_rule(SamplingRule=rule(everything, everything, 2, 0, 1.0))
    try:
        if sdk == "python":
            command, env = [sys.executable, "python_sampling_app.py"], roentgen.sdk_env
        else:
            command = ["node", "node_sampling_app.js"]
            env = dict(roentgen.sdk_env, NODE_PATH=str(CACHE / "node" / "node_modules"))
        first, second = run_sdk(command, env, xray, blocked)
        assert first == {"blocked": 0, "all": 50}, "reservoir 0 and rate 0 stop sampling; rate 1 samples all"
        assert second["changed"], "the rule change reached the SDK at its next poll"
        summaries = xray.get_sampling_statistic_summaries()["SamplingStatisticSummaries"]
        reported = {s["RuleName"]: s for s in summaries}
        assert everything in reported and reported[everything]["RequestCount"] > 0, summaries
    finally:
        xray.delete_sampling_rule(RuleName=blocked)
        xray.delete_sampling_rule(RuleName=everything)
