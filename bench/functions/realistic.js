// The "realistic" benchmark function. fn-bench deploys this source ten times
// (r0..r9) and spreads 50 connections over them. Each call does a little of
// what real handlers do: async crypto, state kept across calls in module
// scope, and now and then a short wait that yields the event loop.

const encoder = new TextEncoder();
const seen = new Map();
let calls = 0;

async function handler(data) {
  calls += 1;
  const key = String(data?.key ?? "anonymous");
  const count = (seen.get(key) ?? 0) + 1;
  seen.set(key, count);
  const digest = await crypto.subtle.digest("SHA-256", encoder.encode(JSON.stringify(data)));
  const bytes = new Uint8Array(digest);
  let hex = "";
  for (const b of bytes) hex += b.toString(16).padStart(2, "0");
  // Every 7th call waits on a real timer, so the handler's promise
  // resolves through the timer queue, not only through microtasks.
  if (calls % 7 === 0) await new Promise((resolve) => setTimeout(resolve, 1));
  return { key, count, sha256: hex, calls, keys: seen.size };
}
