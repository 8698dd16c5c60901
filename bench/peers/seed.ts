// The seed's design, rebuilt as a reference peer for fn-bench: one Deno
// process serves the API and runs every function in its own Web Worker
// (a V8 isolate on a thread of this process). It implements just what the
// benchmark calls, with the same paths and bodies as fn-supervisor:
//
//   POST /deploy {id, code}   -> {id, status, ready_ms} once the worker has
//                                evaluated the code
//   POST /invoke/{id}         -> the handler's return value as JSON
//   DELETE /delete/{id}       -> terminates the worker
//
//   deno run --allow-net --allow-read bench/peers/seed.ts --port 0
//
// It prints "seed listening on http://HOST:PORT" once it accepts requests.

const TIMEOUT_MS = 30_000;

// Appended to the function's source inside its worker module. The function
// declares `handler` at the top level (classic style) or exports it as
// `export default function handler`, so the name is in module scope either
// way; awaiting it covers async handlers.
const RUNNER = `
self.onmessage = async (event) => {
  const { rid, data } = event.data;
  try {
    const value = await handler(data);
    self.postMessage({ rid, ok: true, value: value === undefined ? null : value });
  } catch (err) {
    self.postMessage({ rid, ok: false, error: String(err?.message ?? err) });
  }
};
self.postMessage({ ready: true });
`;

type Reply = { rid: number; ok: boolean; value?: unknown; error?: string };

interface Fn {
  worker: Worker;
  pending: Map<number, (r: Reply) => void>;
}

const functions = new Map<string, Fn>();
let nextRid = 1;

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

function start(code: string): Promise<Fn> {
  const url = "data:application/javascript," + encodeURIComponent(code + "\n" + RUNNER);
  const worker = new Worker(url, { type: "module" });
  const fn: Fn = { worker, pending: new Map() };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.terminate();
      reject(new Error("top-level code did not finish in time"));
    }, TIMEOUT_MS);
    worker.onmessage = (event: MessageEvent) => {
      if (event.data?.ready) {
        clearTimeout(timer);
        worker.onmessage = (e: MessageEvent) => {
          const reply = e.data as Reply;
          const done = fn.pending.get(reply.rid);
          if (done) {
            fn.pending.delete(reply.rid);
            done(reply);
          }
        };
        resolve(fn);
      }
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      clearTimeout(timer);
      // An error after start-up fails every call in flight on this worker.
      for (const [rid, done] of fn.pending) {
        done({ rid, ok: false, error: event.message });
      }
      fn.pending.clear();
      reject(new Error(event.message));
    };
  });
}

async function deploy(req: Request): Promise<Response> {
  const t0 = performance.now();
  let body: { id?: string; code?: string };
  try {
    body = await req.json();
  } catch {
    return json(400, { error: "body is not JSON" });
  }
  if (!body.id || !body.code) return json(400, { error: "missing id or code" });
  let fn: Fn;
  try {
    fn = await start(body.code);
  } catch (err) {
    return json(400, { error: String((err as Error).message) });
  }
  // Like fn-supervisor: the old version serves until the new one is ready.
  functions.get(body.id)?.worker.terminate();
  functions.set(body.id, fn);
  return json(200, { id: body.id, status: "ready", ready_ms: performance.now() - t0 });
}

async function invoke(id: string, req: Request): Promise<Response> {
  const fn = functions.get(id);
  if (!fn) return json(404, { error: `no function ${id}` });
  const text = await req.text();
  let data: unknown = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      return json(400, { error: "body is not JSON" });
    }
  }
  const rid = nextRid++;
  let timer: number | undefined;
  const reply = await new Promise<Reply | null>((resolve) => {
    fn.pending.set(rid, resolve);
    timer = setTimeout(() => {
      fn.pending.delete(rid);
      resolve(null);
    }, TIMEOUT_MS);
    fn.worker.postMessage({ rid, data });
  });
  clearTimeout(timer);
  if (reply === null) return json(504, { error: "Execution timeout (30s)" });
  if (!reply.ok) return json(500, { error: reply.error });
  return json(200, reply.value);
}

function route(req: Request): Response | Promise<Response> {
  const path = new URL(req.url).pathname;
  if (req.method === "POST" && path === "/deploy") return deploy(req);
  if (req.method === "POST" && path.startsWith("/invoke/")) {
    return invoke(decodeURIComponent(path.slice("/invoke/".length)), req);
  }
  if (req.method === "DELETE" && path.startsWith("/delete/")) {
    const id = decodeURIComponent(path.slice("/delete/".length));
    const fn = functions.get(id);
    if (!fn) return json(404, { error: `no function ${id}` });
    fn.worker.terminate();
    functions.delete(id);
    return json(200, { id, status: "deleted" });
  }
  return json(404, { error: `no route for ${req.method} ${path}` });
}

const portArg = Deno.args.indexOf("--port");
const port = portArg >= 0 ? Number(Deno.args[portArg + 1]) : 8090;

Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen: ({ hostname, port }) => console.log(`seed listening on http://${hostname}:${port}`),
}, route);
