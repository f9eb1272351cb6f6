"""A small service instrumented with the official X-Ray SDK for Python.

It serves three requests (ok, throttled, failing) the way an instrumented web handler would
and prints the trace ids it produced as JSON. The daemon address comes from
AWS_XRAY_DAEMON_ADDRESS, exactly as in production.
"""

import http.client
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from aws_xray_sdk.core import patch, xray_recorder
from aws_xray_sdk.core.models import http as xray_http

# A threshold of 1 makes the SDK send each finished subsegment as its own document, as it does
# for large traces; BatchGetTraces must merge them back into the segment.
xray_recorder.configure(sampling=False, context_missing="LOG_ERROR", service="python-svc", streaming_threshold=1)
patch(["httplib", "botocore"])


class Downstream(BaseHTTPRequestHandler):
    """An HTTP dependency, and a loopback stand-in for DynamoDB's GetItem."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"Item": {"id": {"S": "42"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def handle(path, port):
    segment = xray_recorder.begin_segment("python-svc")
    segment.put_http_meta(xray_http.METHOD, "GET")
    segment.put_http_meta(xray_http.URL, f"http://python-svc.local{path}")
    segment.put_http_meta(xray_http.USER_AGENT, "e2e-client/1.0")
    segment.put_http_meta(xray_http.CLIENT_IP, "192.0.2.10")
    segment.set_user("alice")
    segment.put_annotation("tenant", "acme")
    segment.put_annotation("attempt", 3)
    segment.put_annotation("score", 0.75)
    segment.put_annotation("vip", True)
    segment.put_metadata("cart", {"items": [1, 2, 3], "total": 42.5}, "shop")

    with xray_recorder.in_subsegment("business-logic") as logic:
        logic.put_annotation("step", "pricing")
        with xray_recorder.in_subsegment("orders@db.internal") as sql:
            sql.namespace = "remote"
            sql.set_sql({
                "url": "postgresql://db.internal:5432/orders",
                "database_type": "PostgreSQL",
                "database_version": "15.4",
                "user": "app",
                "sanitized_query": "SELECT * FROM orders WHERE id = ?",
            })
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/inventory")
        conn.getresponse().read()
        dynamodb = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        dynamodb.get_item(TableName="orders", Key={"id": {"S": "42"}})

    status = 200
    if path == "/throttle":
        status = 429
    elif path == "/fail":
        status = 500
        try:
            with xray_recorder.in_subsegment("charge-card"):
                raise RuntimeError("card processor unavailable")
        except RuntimeError:
            pass
    segment.put_http_meta(xray_http.STATUS, status)
    trace_id = segment.trace_id
    xray_recorder.end_segment()
    return trace_id


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    traces = {path: handle(path, port) for path in ("/ok", "/throttle", "/fail")}
    server.shutdown()
    json.dump(traces, sys.stdout)


if __name__ == "__main__":
    main()
