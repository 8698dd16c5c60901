// Finds the handler: `export function handler`, `export default function`,
// `export default { handler }`, or a classic script's global `handler`.
((ns) => {
  const candidates = ns === undefined
    ? [globalThis.handler]
    : [ns.handler, ns.default, ns.default?.handler];
  for (const c of candidates) {
    if (typeof c === "function") return c;
  }
  return undefined;
})
