// Finds a module's handler: `export function handler`, `export default
// function`, `export default { handler }`.
((ns) => {
  for (const c of [ns.handler, ns.default, ns.default?.handler]) {
    if (typeof c === "function") return c;
  }
  return undefined;
})
