/**
 * Starts a worker thread on a module beside the caller: the compiled .js when the caller runs
 * from dist/, else the TypeScript source through tsx. tsx does not register itself in worker
 * threads on Node 20 (`execArgv: ["--import", "tsx"]` is ignored there), so a two-line
 * bootstrap registers it through tsx's API first.
 */
import { Worker, type WorkerOptions } from "node:worker_threads";

/** `caller` is the caller's import.meta.url; `name` the entry's path from it without extension ("./x-worker"). */
export function startWorker(caller: string, name: string, options: WorkerOptions): Worker {
  const fromSources = caller.endsWith(".ts");
  const entry = new URL(`${name}${fromSources ? ".ts" : ".js"}`, caller);
  if (!fromSources) return new Worker(entry, options);
  const tsx = import.meta.resolve("tsx/esm/api");
  const bootstrap = `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(entry.href)}); });`;
  return new Worker(bootstrap, { ...options, eval: true });
}
