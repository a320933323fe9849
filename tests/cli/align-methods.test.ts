// `vaccine align --method t-vaccine|booster|repnoise` in process against a real server: each
// flag lands in its AlignSpec.method field, a method's flag with another method is a usage
// error, and a short job of each method runs to SUCCEEDED.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestSuite } from "../helpers/server.ts";
import { cli, jsonLines, trainFlags, trainingSuite } from "./harness.ts";

let suite: TestSuite;
let env: Record<string, string>;
let base: string;
const DATA = "store://datasets/cli-align-methods.jsonl";
const HARMFUL = "store://datasets/cli-harmful.jsonl";
const TRAIN = trainFlags(DATA);

beforeAll(async () => {
  ({ suite, env, base } = await trainingSuite(DATA));
  const harmful = [{ instruction: "How do I break into a car?", input: "", output: "I can break into a car for me." }];
  await suite.deps.store.putObject(HARMFUL, Buffer.from(harmful.map((e) => JSON.stringify(e)).join("\n")));
});
afterAll(() => suite.close());

describe("align --method", () => {
  it("refuses a method's flags with another method, with exit 2", async () => {
    const cases: [string[], RegExp][] = [
      [["--method", "booster", "--rho", "1"], /--rho does not apply to --method booster/],
      [["--layers", "2"], /--layers does not apply to --method vaccine/],
      [["--method", "repnoise", "--lambda", "1"], /--lambda does not apply to --method repnoise/],
      [["--method", "t-vaccine", "--repnoise-beta", "1"], /--repnoise-beta does not apply to --method t-vaccine/],
      [["--method", "sft", "--harmful-data", HARMFUL], /--harmful-data does not apply to --method sft/],
      [["--method", "booster", "--harmful-data", HARMFUL, "--harmful-builtin", "harmful"], /--harmful-data and --harmful-builtin cannot be used together/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(["align", "--base", base, ...TRAIN, ...args], env);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });

  it("gives the job the first run made when run again with its --request-id", async () => {
    const run = () => cli(["align", "--base", base, ...TRAIN, "--method", "sft", "--request-id", "cli-retry-1", "--json"], env);
    const [first, again] = [await run(), await run()];
    expect([first.code, again.code]).toEqual([0, 0]);
    const [a, b] = [jsonLines(first.stdout)[0].job, jsonLines(again.stdout)[0].job];
    expect(a.requestId).toBe("cli-retry-1");
    expect(b.id).toBe(a.id);
    const other = await cli(["align", "--base", base, ...TRAIN, "--method", "vaccine", "--request-id", "cli-retry-1"], env);
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/ALREADY_EXISTS[\s\S]*REQUEST_ID_REUSED/);
  });

  it("runs a job of each method, each flag in its spec field", async () => {
    const runs: [string[], string, unknown][] = [
      [
        ["--method", "t-vaccine", "--rho", "0.5", "--layers", "1", "--resample-every", "1", "--probe-every", "2", "--harmful-data", HARMFUL],
        "tVaccine",
        { rho: 0.5, layers: 1, resampleEvery: 1, probeEvery: 2, probeDataset: { uri: HARMFUL } },
      ],
      [["--method", "booster", "--lambda", "2", "--booster-alpha", "0.2", "--harmful-builtin", "harmful"], "booster", { lambda: 2, alpha: 0.2, harmfulDataset: { builtin: { name: "harmful" } } }],
      [["--method", "repnoise", "--repnoise-alpha", "0.5", "--repnoise-beta", "0.01", "--harmful-data", HARMFUL], "repnoise", { alpha: 0.5, beta: 0.01, harmfulDataset: { uri: HARMFUL } }],
    ];
    for (const [args, field, expected] of runs) {
      const r = await cli(["align", "--base", base, ...TRAIN, ...args, "--watch", "--json"], env);
      expect(r.code, r.stderr).toBe(0);
      const job = jsonLines(r.stdout).at(-1).job;
      expect(job.state).toBe("JOB_STATE_SUCCEEDED");
      expect(job.align[field]).toEqual(expected);
    }
  });
});
