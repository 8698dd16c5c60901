// Runs once after Deno's bootstrap and before the function's code. Returns
// the worker's private entry points (and a one-time installer); nothing here is reachable from user
// code afterwards, so a function cannot replace or forge them.
((internals) => {
  const core = internals.core;
  const { parse, stringify } = JSON;
  const { freeze, create, defineProperty } = Object;
  const getContext = core.getAsyncContext;
  const setContext = core.setAsyncContext;
  const print = core.print;
  const NotCapable = Deno.errors.NotCapable;
  // The invocation an async call chain belongs to is stored under this key
  // of V8's continuation-preserved data, next to Deno's own AsyncVariables
  // (which copy every key when they enter). The worker reads it from Rust,
  // both to attribute console lines and to find out whose code is spinning.
  const KEY = "fnrt.request";
  const current = () => {
    const ctx = getContext();
    return ctx == null ? undefined : ctx[KEY];
  };

  // Console lines carry their invocation in a prefix that only this closure
  // writes; user code cannot reach `print` (internals are removed below), so
  // no string a function prints can change the attribution.
  globalThis.console = new internals.Console((msg, level) => {
    const id = current();
    print(`\u0001${id ?? ""}\u0001${level}\u0001${msg}`, level > 1);
  });
  // Keep an unhandled rejection or an uncaught timer error from failing
  // whichever invocation happens to be running: report it as a log line.
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    console.error("Uncaught (in promise)", e.reason);
  });
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    console.error("Uncaught", e.error ?? e.message);
  });
  // node's `process` reaches module loaders that need services this sandbox
  // does not provide; functions get the web platform and `Deno` instead.
  delete globalThis.process;

  // Friendly errors for what the sandbox refuses anyway (the ops behind
  // these are replaced in Rust, which is what actually holds).
  const refuse = (what, why) =>
    function () {
      throw new NotCapable(`${what} is not allowed: ${why}`);
    };
  const served = "functions are called over HTTP, they do not serve";
  for (
    const [name, why] of [
      ["exit", "a function cannot end its worker"],
      ["listen", served],
      ["listenTls", served],
      ["listenDatagram", served],
      ["serve", served],
      ["openKv", "functions have no local storage"],
      ["cron", "functions are invoked, not scheduled"],
    ]
  ) {
    try {
      defineProperty(Deno, name, {
        value: refuse(`Deno.${name}()`, why),
        writable: false,
        configurable: false,
        enumerable: true,
      });
    } catch {
      // Not configurable in this Deno version: the op replacement holds.
    }
  }
  // Prompts are impossible in a worker: answer "denied" at once.
  const permissions = Deno.permissions;
  if (permissions) {
    const denied = (desc) =>
      Promise.resolve(freeze({ state: "denied", partial: false, onchange: null, name: desc?.name }));
    permissions.request = denied;
    permissions.requestSync = (desc) =>
      freeze({ state: "denied", partial: false, onchange: null, name: desc?.name });
  }
  // WebCrypto digests of small buffers are computed inline (the worker
  // passes `digestInline`, see inline_digest in ext.rs); everything else,
  // including every error, is Deno's own. The helpers are captured now,
  // before user code can replace them.
  const SubtleProto = globalThis.SubtleCrypto?.prototype;
  const slowDigest = SubtleProto?.digest;
  const subtle = globalThis.crypto?.subtle;
  const lower = Function.prototype.call.bind(String.prototype.toLowerCase);
  const apply = Reflect.apply;
  const digestNames = freeze({
    __proto__: null,
    "sha-1": "SHA-1",
    "sha-256": "SHA-256",
    "sha-384": "SHA-384",
    "sha-512": "SHA-512",
  });
  const installDigest = (digestInline) => {
    if (typeof slowDigest !== "function" || subtle === undefined) return;
    const inline = {
      async digest(algorithm, data) {
        if (this === subtle && typeof algorithm === "string" && arguments.length >= 2) {
          const name = digestNames[lower(algorithm)];
          if (name !== undefined) {
            const out = digestInline(name, data);
            if (out !== null) return out;
          }
        }
        return await apply(slowDigest, this, arguments);
      },
    }.digest;
    defineProperty(inline, "length", { value: slowDigest.length, configurable: true });
    defineProperty(SubtleProto, "digest", {
      value: inline,
      writable: true,
      enumerable: true,
      configurable: true,
    });
  };

  // `Deno[Deno.internal]` exposes core (print, ops, async context): remove
  // it so user code cannot forge log attribution or reach raw ops.
  delete Deno[Deno.internal];

  let secrets = freeze(create(null));
  const setSecrets = (pairs) => {
    const next = create(null);
    for (const [k, v] of pairs) next[k] = v;
    secrets = freeze(next);
  };

  const toJson = (value) => {
    const text = stringify(value);
    return text === undefined ? "null" : text;
  };
  // An async function always returns an intrinsic promise, whatever the
  // user did to Promise, its species or `then`.
  const finish = async (pending) => toJson(await pending);

  function run(id, handler, input, requestKey, deadline) {
    const previous = getContext();
    setContext({ __proto__: null, ...previous, [KEY]: id });
    try {
      const ctx = freeze({ __proto__: null, secrets, requestId: requestKey, deadline });
      const result = handler(parse(input), ctx);
      if (result !== null && (typeof result === "object" || typeof result === "function")) {
        if (typeof result.then === "function") return finish(result);
      }
      return toJson(result);
    } finally {
      setContext(previous);
    }
  }

  return [run, setSecrets, installDigest];
})(Deno[Deno.internal])
