// Vitest global setup: tests that run the `vaccine` bin or a deployed entrypoint execute the
// compiled dist/, so rebuild it when any source is newer (npm ci builds it; edits since do not).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const SOURCES = ["services", "gen", "tsconfig.json", "tsconfig.build.json", "package.json"];
const STAMP = "dist/services/main.js";

function newest(path: string): number {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return Math.max(0, ...readdirSync(path).map((name) => newest(join(path, name))));
}

export default function setup(): void {
  let built = 0;
  try {
    built = statSync(STAMP).mtimeMs;
  } catch {
    // Never built.
  }
  if (Math.max(...SOURCES.map(newest)) <= built) return;
  // tsc emits even with type errors; those are the type check's to report (.ci/run), and
  // the tests then show what the code does.
  spawnSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "ignore" });
  statSync(STAMP);
}
