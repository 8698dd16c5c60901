// Finds a classic script's handler. Evaluated as a second script, so it sees
// the first one's top-level `const`/`let` bindings (which are not properties
// of globalThis) as well as `function handler` and `var handler`.
(() => {
  try {
    if (typeof handler === "function") return handler;
  } catch {
    // A `let handler` still in its temporal dead zone.
  }
  const h = globalThis.handler;
  return typeof h === "function" ? h : undefined;
})()
