// VaccineMethod.rho_relative end to end: `vaccine align --rho-relative` against a real server
// puts it in the spec, the job resolves it and records the norm and rho in its log and in the
// result's manifest; bad values and rho with rho_relative are INVALID_ARGUMENT naming the field.
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { rpcFailure } from "../helpers/errors.ts";
import type { TestSuite } from "../helpers/server.ts";
import { cli, jsonLines, trainFlags, trainingSuite } from "./harness.ts";

let suite: TestSuite;
let env: Record<string, string>;
let base: string;
const DATA = "store://datasets/cli-rho-relative.jsonl";
const TRAIN = trainFlags(DATA);

beforeAll(async () => {
  ({ suite, env, base } = await trainingSuite(DATA));
});
afterAll(() => suite.close());

describe("rho_relative", () => {
  it("is refused with rho, out of [0, 1] or not finite, naming the field", async () => {
    const align = createClient(AlignService, createConnectTransport({ baseUrl: suite.server.url, httpVersion: "2" }));
    const spec = (value: { rho?: number; rhoRelative?: number }) =>
      create(AlignSpecSchema, { baseCheckpoint: suite.base, dataset: { source: { case: "uri", value: DATA } }, method: { case: "vaccine", value } });
    for (const value of [{ rho: 1, rhoRelative: 0.1 }, { rhoRelative: 1.5 }, { rhoRelative: -0.1 }, { rhoRelative: Number.NaN }]) {
      const e = await rpcFailure(() => align.createAlignJob({ spec: spec(value) }));
      expect(e.code, JSON.stringify(value)).toBe(Code.InvalidArgument);
      expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["spec.vaccine.rho_relative"]);
    }
    const both = await rpcFailure(() => align.createAlignJob({ spec: spec({ rho: 1, rhoRelative: 0.1 }) }));
    expect(both.badRequest?.fieldViolations[0].description).toMatch(/together with rho/);
  });

  it("refuses --rho with --rho-relative, with exit 2", async () => {
    const r = await cli(["align", "--base", base, ...TRAIN, "--rho", "1", "--rho-relative", "0.1"], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--rho and --rho-relative cannot be used together/);
  });

  it("runs a job whose log and result record the measured norm and the rho it gave", async () => {
    const r = await cli(["align", "--base", base, ...TRAIN, "--rho-relative", "0.1", "--watch", "--json"], env);
    expect(r.code, r.stderr).toBe(0);
    const lines = jsonLines(r.stdout);
    const job = lines.at(-1).job;
    expect(job.state).toBe("JOB_STATE_SUCCEEDED");
    expect(job.align.vaccine).toEqual({ rhoRelative: 0.1 });
    const meta = (await suite.deps.store.readManifest(job.result)).meta.vaccine as { rho_relative: number; attention_norm: number; rho: number };
    expect(meta.rho_relative).toBe(0.1);
    expect(meta.attention_norm).toBeGreaterThan(0);
    expect(meta.rho).toBe(0.1 * meta.attention_norm);
    expect(r.stdout).toContain(`attention-output norm ${meta.attention_norm} of the first batch = rho ${meta.rho}`);
  });
});
