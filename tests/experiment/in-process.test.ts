// The experiment with no --address starts its own services in this process. Their jobs go to a
// folder of their own: a server already running on the configured jobs folder (the README's
// first run, left open) holds that folder's lock, and the experiment must not need it.
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { experiment } from "../../services/experiment/experiment.ts";
import { PRESETS } from "../../services/experiment/presets.ts";
import { startProcess, type ServiceProcess } from "../../scripts/service-process.ts";

const root = mkdtempSync(join(tmpdir(), "vaccine-experiment-in-process-"));
const saved = { ...process.env };
let server: ServiceProcess | undefined;
afterAll(async () => {
  await server?.stop();
  process.env = saved;
  rmSync(root, { recursive: true, force: true });
});

describe("vaccine experiment in process", () => {
  it("trains beside a server that holds the configured jobs folder", { timeout: 120_000 }, async () => {
    const env = { VACCINE_JOBS_DIR: join(root, "jobs"), VACCINE_STORE_ROOT: join(root, "store"), VACCINE_CACHE_DIR: join(root, "cache"), VACCINE_BACKEND: "wasm" };
    server = await startProcess("services/main.ts", env);
    expect(existsSync(join(env.VACCINE_JOBS_DIR, "executor.lock"))).toBe(true);
    Object.assign(process.env, env);
    // Stopped at its first training step: a Create refused by the lock fails before any.
    const trained = new Error("a job trained");
    const run = experiment({ preset: PRESETS.tiny, out: join(root, "out"), hooks: { onProgress: (l) => { if (l.step !== undefined) throw trained; } } });
    await expect(run).rejects.toBe(trained);
    // The server's folder holds no job of the experiment's, and the experiment left no folder behind.
    expect(readdirSync(env.VACCINE_JOBS_DIR).filter((f) => f !== "executor.lock")).toEqual([]);
  });
});
