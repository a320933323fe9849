// A Python grpcio client runs one short fine-tuning job of each guard (Lisa, safety mixing)
// through FineTuneService, with stubs generated from the contracts (tools as python-tools.ts finds them).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { findTools, generateStubs, PYTHON_ENV, run } from "./python-tools.ts";
import { putExamples } from "../helpers/tiny-store.ts";

const tools = findTools();
const stubs = mkdtempSync(join(tmpdir(), "vaccine-py-guards-"));
const DATA = "store://datasets/tiny-user.jsonl";
let suite: TestSuite | undefined;

beforeAll(async () => {
  if (tools.missing) return; // the test below fails with the message
  await generateStubs(tools, stubs, [
    "vaccine/v1/common.proto", "vaccine/v1/training.proto", "vaccine/v1/jobs.proto", "vaccine/v1/finetune.proto",
    "google/rpc/status.proto", "google/rpc/error_details.proto",
  ]);
  suite = await startSuite();
  await putExamples(suite.deps.store, DATA);
});
afterAll(async () => {
  await suite?.close();
  rmSync(stubs, { recursive: true, force: true });
});

describe("Python grpcio client: fine-tuning guards", () => {
  it("runs a Lisa job and a safety-mix job to SUCCEEDED", async () => {
    if (tools.missing) throw new Error(tools.missing);
    const { uri, digest } = suite!.base;
    const { stdout } = await run(tools.python!, ["tests/interop/python_guards.py", stubs, `127.0.0.1:${suite!.server.port}`, uri, digest, DATA], { env: PYTHON_ENV, timeout: 300_000 });
    expect(JSON.parse(stdout)).toEqual({
      lisa: { state: "JOB_STATE_SUCCEEDED", steps: 3, guard: "lisa" },
      safety_mix: { state: "JOB_STATE_SUCCEEDED", steps: 3, guard: "safety_mix" },
    });
  });
});
