"""Sampling decisions of the official X-Ray SDK for Python with centralized sampling on.

The SDK fetches rules and targets from the daemon address (roentgen's HTTP address here), as in
production. Only its polling periods are shortened, so a test need not wait five minutes.
Protocol on stdout/stdin: print the first decisions as JSON, wait for a line, then report how
long a rule change took to arrive.
"""

import json
import sys
import time

from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.sampling import rule_poller

rule_poller.DEFAULT_INTERVAL = 1
xray_recorder.configure(sampling=True, context_missing="LOG_ERROR")
xray_recorder.sampler._target_poller._interval = 1


def sampled(service, n):
    count = 0
    for _ in range(n):
        segment = xray_recorder.begin_segment(service)
        count += 1 if segment.sampled else 0
        xray_recorder.end_segment()
    return count


def main():
    deadline = time.time() + 20
    while sampled("py-all", 5) < 5 and time.time() < deadline:
        time.sleep(0.2)
    print(json.dumps({"blocked": sampled("py-blocked", 50), "all": sampled("py-all", 50)}), flush=True)
    sys.stdin.readline()
    started = time.time()
    changed = False
    while not changed and time.time() < started + 20:
        changed = sampled("py-blocked", 5) > 0
        time.sleep(0.2)
    time.sleep(2.5)  # let the target poller report the statistics
    print(json.dumps({"changed": changed, "seconds": time.time() - started}), flush=True)


if __name__ == "__main__":
    main()
