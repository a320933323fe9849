// `node bin/vaccine.mjs` as a user runs it, with stdout a pipe: exit codes, plain progress of
// a Vaccine job watched to SUCCEEDED, and `serve` answering health checks until SIGTERM.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { cli, serve, vaccine } from "./harness.ts";
import { putExamples } from "../helpers/tiny-store.ts";

let suite: TestSuite;
let env: Record<string, string>;
const DATA = "store://datasets/cli-process.jsonl";

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  suite = await startSuite();
  env = { VACCINE_ADDRESS: suite.server.url };
  await putExamples(suite.deps.store, DATA);
});
afterAll(() => suite.close());

describe("vaccine as a process", () => {
  it("watches a Vaccine alignment job to SUCCEEDED in plain lines, and exits 1 and 2 on errors", async () => {
    const base = `${suite.base.uri}@${suite.base.digest}`;
    const args = ["--base", base, "--data", DATA, "--method", "vaccine", "--rho", "0.5", "--max-steps", "4", "--batch-size", "3", "--lr", "0.03", "--max-seq-len", "64", "--rank", "4", "--checkpoint-every", "2"];
    const [run, usage, rpc] = await Promise.all([
      vaccine(["align", ...args, "--watch"], env),
      vaccine(["align", "--data", DATA], env),
      vaccine(["jobs", "get", "--kind", "finetune", "no-such-job"], env),
    ]);

    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).not.toMatch(/[\x1b\r]/);
    const lines = run.stdout.split("\n");
    expect(lines[0]).toMatch(/^job align-\S+ created$/);
    const steps = lines.filter((l) => l.startsWith("step "));
    expect(steps).toHaveLength(4);
    for (const [i, line] of steps.entries()) expect(line).toMatch(new RegExp(`^step ${i + 1}/4  loss [\\d.]+  perturbation 0\\.5  ETA \\d+s$`));
    expect(lines.filter((l) => /^state [A-Z]+$/.test(l)).map((l) => l.slice(6))).toEqual(["QUEUED", "RUNNING", "SUCCEEDED"]);
    expect(lines.filter((l) => l.startsWith("training state at step ")).map((l) => l.split(":")[0])).toEqual(["training state at step 2"]);
    const result = run.stdout.match(/^result\s+(\S+)$/m)![1];
    expect(result).toMatch(/^store:\/\/checkpoints\/[0-9a-f]+@sha256:[0-9a-f]{64}$/);
    expect(lines).toContain(`result at step 4: ${result}`);
    expect(run.stdout).toMatch(/^method\s+vaccine \(rho 0\.5\)$/m);

    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^error: --base is required\n\nUsage: vaccine align /);
    expect(rpc.code).toBe(1);
    expect(rpc.stderr).toMatch(/^error: NOT_FOUND: job "no-such-job" not found\n {2}reason: JOB_NOT_FOUND/);
  });

  it("serves the chosen services, answers health checks, and exits 0 on SIGTERM", async () => {
    expect((await cli(["serve", "--services", "embed,nope"])).code).toBe(2);
    expect((await cli(["serve", "--port", "70000"])).code).toBe(2);
    // A telemetry typo stops the start with one line, no stack trace and no export storm.
    const otel = await vaccine(["serve", "--port", "0"], { OTEL_METRICS_EXPORTER: "otlp", OTEL_METRIC_EXPORT_INTERVAL: "60s", OTEL_TRACES_EXPORTER: "jaeger" });
    expect(otel.code).toBe(2);
    expect(otel.stderr).toBe('Bad configuration:\n  OTEL_TRACES_EXPORTER="jaeger" is invalid: expected otlp, console, none\n  OTEL_METRIC_EXPORT_INTERVAL="60s" is invalid: expected milliseconds, an integer above 0\n');

    const root = mkdtempSync(join(tmpdir(), "vaccine-cli-serve-"));
    try {
      const server = await serve(["--services", "embed", "--port", "0", "--host", "127.0.0.1"], {
        VACCINE_STORE_ROOT: join(root, "store"),
        VACCINE_JOBS_DIR: join(root, "jobs"),
        VACCINE_BACKEND: "cpu",
      });
      const address = `http://127.0.0.1:${server.port}`;
      const health = await cli(["health", "--address", address]);
      expect(health).toMatchObject({ code: 0, stdout: "SERVING\n" });
      const embed = await cli(["health", "--address", address, "--service", "vaccine.v1.EmbedService", "--json"]);
      expect(JSON.parse(embed.stdout)).toEqual({ status: "SERVING" });
      // Only embed is served.
      const align = await cli(["jobs", "list", "--kind", "align", "--address", address]);
      expect(align.code).toBe(1);
      expect(align.stderr).toMatch(/^error: UNIMPLEMENTED: /);

      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
