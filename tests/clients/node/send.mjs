// Sends a plan of Segment calls to Werkstroom with the real @segment/analytics-node SDK.
//
//   node send.mjs HOST WRITE_KEY < plan.json
//
// plan.json: {"flushAt": 1 | N, "calls": [call, ...]} where a call is
//   {"type": "page" | "identify" | "track" | "alias", ...the SDK's own parameters}
//   {"type": "flush"}               wait until everything queued so far is delivered
//   {"type": "sleep", "ms": 1200}   pause
// Exits 1 on any delivery error (an HTTP error answer or a failed request); prints one JSON
// line with the HTTP statuses it got.
import { Analytics } from "@segment/analytics-node";

const [host, writeKey] = process.argv.slice(2);
if (!host || !writeKey) {
  console.error("usage: node send.mjs HOST WRITE_KEY < plan.json");
  process.exit(2);
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const plan = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const analytics = new Analytics({
  writeKey,
  host,
  flushAt: plan.flushAt ?? 15,
  flushInterval: 60_000, // only flushAt and explicit flushes decide what travels together
  maxRetries: 1,
  httpRequestTimeout: 10_000,
});

const errors = [];
const statuses = [];
analytics.on("error", (err) => errors.push(String(err?.reason ?? err?.message ?? err)));
analytics.on("http_response", (res) => {
  statuses.push(res.status);
  if (res.status >= 300) errors.push(`HTTP ${res.status} ${res.statusText} from ${res.url}`);
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

for (const { type, ms, ...params } of plan.calls) {
  switch (type) {
    case "page":
    case "identify":
    case "track":
    case "alias":
      analytics[type](params);
      break;
    case "flush":
      await analytics.flush();
      break;
    case "sleep":
      await sleep(ms);
      break;
    default:
      console.error(`unknown call type ${JSON.stringify(type)}`);
      process.exit(2);
  }
}
await analytics.closeAndFlush({ timeout: 20_000 });

console.log(JSON.stringify({ statuses, errors }));
if (errors.length > 0) {
  console.error(`delivery failed: ${errors.join("; ")}`);
  process.exit(1);
}
