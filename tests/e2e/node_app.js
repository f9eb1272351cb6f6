// A small HTTP service instrumented with the official X-Ray SDK for Node.js (aws-xray-sdk-core).
// It handles three requests (ok, throttled, failing) as an instrumented server would, sends an
// SQS message through the captured AWS SDK v3 and makes a captured downstream HTTP call, and
// prints the trace ids it produced as JSON. The daemon
// address comes from AWS_XRAY_DAEMON_ADDRESS, exactly as in production.
'use strict';

const crypto = require('crypto');
const AWSXRay = require('aws-xray-sdk-core');
const { SQSClient, SendMessageCommand } = require('@aws-sdk/client-sqs');
AWSXRay.setContextMissingStrategy('LOG_ERROR');
const http = AWSXRay.captureHTTPs(require('http'));
const ns = AWSXRay.getNamespace();
const traces = {};

function downstream(port, done) {
  http.get({ host: '127.0.0.1', port, path: '/inventory' }, (res) => {
    res.resume();
    res.on('end', done);
  });
}

// The AWS SDK for JavaScript v3, captured, sends to this same server standing in for SQS.
let sqs;
const QUEUE_URL = 'https://sqs.us-east-1.amazonaws.com/123456789012/orders-queue';

function sqsStandIn(req, res) {
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    const message = JSON.parse(body).MessageBody || '';
    const md5 = crypto.createHash('md5').update(message).digest('hex');
    res.setHeader('Content-Type', 'application/x-amz-json-1.0');
    res.end(JSON.stringify({ MessageId: 'e2e-message', MD5OfMessageBody: md5 }));
  });
}

const server = http.createServer((req, res) => {
  if (req.url === '/inventory') {
    res.end('ok');
    return;
  }
  if (req.method === 'POST') {
    sqsStandIn(req, res);
    return;
  }
  const segment = new AWSXRay.Segment('node-svc');
  segment.addIncomingRequestData(new AWSXRay.middleware.IncomingRequestData(req));
  segment.setUser('bob');
  segment.addAnnotation('tenant', 'globex');
  segment.addAnnotation('attempt', 1);
  segment.addAnnotation('vip', false);
  segment.addMetadata('headers', { accept: req.headers.accept || '*/*' }, 'request');
  traces[req.url] = segment.trace_id;
  res.on('finish', () => {
    segment.http.close(res);
    if (res.statusCode === 429) {
      segment.addThrottleFlag();
      segment.addErrorFlag();
    } else if (res.statusCode >= 500) {
      segment.addFaultFlag();
    } else if (res.statusCode >= 400) {
      segment.addErrorFlag();
    }
    segment.close();
  });
  ns.run(() => {
    AWSXRay.setSegment(segment);
    const query = segment.addNewSubsegment('inventory@mysql.internal');
    query.namespace = 'remote';
    query.addSqlData({ url: 'mysql://mysql.internal:3306/inventory', database_type: 'MySQL', sanitized_query: 'SELECT 1' });
    query.close();
    const enqueue = sqs.send(new SendMessageCommand({ QueueUrl: QUEUE_URL, MessageBody: `order for ${req.url}` }));
    enqueue.catch((err) => process.stderr.write(`SQS stand-in call failed: ${err}\n`)).then(() => downstream(server.address().port, () => {
      if (req.url === '/throttle') {
        res.statusCode = 429;
      } else if (req.url === '/fail') {
        const work = segment.addNewSubsegment('render');
        work.addError(new Error('template missing'));
        work.close();
        res.statusCode = 500;
      }
      res.end();
    }));
  });
});

server.listen(0, '127.0.0.1', async () => {
  const port = server.address().port;
  sqs = AWSXRay.captureAWSv3Client(new SQSClient({
    region: 'us-east-1',
    endpoint: `http://127.0.0.1:${port}`,
    credentials: { accessKeyId: 'AKIDE2E', secretAccessKey: 'e2e-secret' },
  }));
  for (const path of ['/ok', '/throttle', '/fail']) {
    await new Promise((resolve) => {
      require('http').get({ host: '127.0.0.1', port, path }, (res) => {
        res.resume();
        res.on('end', resolve);
      });
    });
  }
  // Segments go out over UDP when they close; give the sockets a moment before exiting.
  setTimeout(() => {
    process.stdout.write(JSON.stringify(traces));
    process.exit(0);
  }, 300);
});
