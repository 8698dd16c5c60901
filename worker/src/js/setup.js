// Runs once after Deno's bootstrap and before the function's code. Returns the
// `run` function the worker calls for every invocation; nothing here is put
// on globalThis, so user code cannot replace it.
((internals) => {
  const core = internals.core;
  const { parse, stringify } = JSON;
  const PromiseResolve = Promise.resolve.bind(Promise);
  const PromiseThen = Function.prototype.call.bind(Promise.prototype.then);
  // Attributes console output to the invocation whose (async) call chain
  // produced it; V8 carries the value across awaits, timers and fetches.
  const requestVar = new core.AsyncVariable();
  const print = core.print;
  globalThis.console = new internals.Console((msg, level) => {
    const id = requestVar.get();
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

  const toJson = (value) => {
    const text = stringify(value);
    return text === undefined ? "null" : text;
  };
  return function run(id, handler, input) {
    const previous = requestVar.enter(id);
    try {
      const result = handler(parse(input));
      if (result !== null && typeof result === "object" && typeof result.then === "function") {
        return PromiseThen(PromiseResolve(result), toJson);
      }
      return toJson(result);
    } finally {
      core.setAsyncContext(previous);
    }
  };
})(Deno[Deno.internal])
