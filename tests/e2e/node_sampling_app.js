// Sampling decisions of the official X-Ray SDK for Node.js with centralized sampling on (its
// default). The SDK fetches rules and targets from the daemon address, roentgen's HTTP address
// here. Its pollers use module-private periods (5 minutes, 10 seconds), so this app shortens
// every period of 10 seconds or more to one second before loading the SDK.
// Protocol on stdout/stdin: print the first decisions as JSON, wait for a line, then report
// how long a rule change took to arrive.
'use strict';

const realSetInterval = global.setInterval;
global.setInterval = (fn, ms, ...args) => realSetInterval(fn, ms >= 10000 ? 1000 : ms, ...args);
const AWSXRay = require('aws-xray-sdk-core');
AWSXRay.setContextMissingStrategy('LOG_ERROR');
const sampler = AWSXRay.middleware.sampler;

function sampled(serviceName, n) {
  let count = 0;
  for (let i = 0; i < n; i++) {
    if (sampler.shouldSample({ host: 'localhost', httpMethod: 'GET', urlPath: '/', serviceName })) {
      count++;
    }
  }
  return count;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const deadline = Date.now() + 20000;
  while (sampled('node-all', 5) < 5 && Date.now() < deadline) {
    await sleep(200);
  }
  process.stdout.write(JSON.stringify({ blocked: sampled('node-blocked', 50), all: sampled('node-all', 50) }) + '\n');
  await new Promise((resolve) => process.stdin.once('data', resolve));
  const started = Date.now();
  let changed = false;
  while (!changed && Date.now() < started + 20000) {
    changed = sampled('node-blocked', 5) > 0;
    await sleep(200);
  }
  await sleep(2500); // let the target poller report the statistics
  process.stdout.write(JSON.stringify({ changed, seconds: (Date.now() - started) / 1000 }) + '\n');
  process.exit(0);
}

main();
