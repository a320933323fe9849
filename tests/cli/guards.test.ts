// `vaccine finetune --guard lisa|safety-mix` in process against a real server: each flag lands
// in its FineTuneSpec field, a guard's flag without its guard is a usage error, and a short
// job of each guard runs to SUCCEEDED.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestSuite } from "../helpers/server.ts";
import { cli, jsonLines, trainFlags, trainingSuite } from "./harness.ts";

let suite: TestSuite;
let env: Record<string, string>;
let base: string;
const DATA = "store://datasets/cli-guards.jsonl";
const TRAIN = trainFlags(DATA);

beforeAll(async () => {
  ({ suite, env, base } = await trainingSuite(DATA));
});
afterAll(() => suite.close());

describe("finetune --guard", () => {
  it("refuses a guard's flags without that guard, with exit 2", async () => {
    const cases: [string[], RegExp][] = [
      [["--mix-fraction", "0.2"], /--mix-fraction does not apply without --guard/],
      [["--guard", "lisa", "--mix-fraction", "0.2"], /--mix-fraction does not apply to --guard lisa/],
      [["--guard", "safety-mix", "--user-steps", "3"], /--user-steps does not apply to --guard safety-mix/],
      [["--guard-data", DATA], /--guard-data does not apply without --guard/],
      [["--guard", "lisa", "--guard-data", DATA, "--guard-builtin", "alignment"], /--guard-data and --guard-builtin cannot be used together/],
      [["--guard", "nope"], /--guard: expected one of lisa, safety-mix, got "nope"/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(["finetune", "--aligned", base, ...TRAIN, ...args], env);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });

  it("runs a Lisa job and a safety-mix job, each flag in its spec field", async () => {
    const lisa = await cli(
      ["finetune", "--aligned", base, ...TRAIN, "--guard", "lisa", "--alignment-steps", "1", "--user-steps", "1", "--lisa-rho", "0.5", "--guard-data", DATA, "--watch", "--json"],
      env,
    );
    expect(lisa.code, lisa.stderr).toBe(0);
    const lisaJob = jsonLines(lisa.stdout).at(-1).job;
    expect(lisaJob.state).toBe("JOB_STATE_SUCCEEDED");
    expect(lisaJob.fineTune.lisa).toEqual({ alignmentSteps: 1, userSteps: 1, rho: 0.5, alignmentDataset: { uri: DATA } });

    const mix = await cli(["finetune", "--aligned", base, ...TRAIN, "--guard", "safety-mix", "--mix-fraction", "0.5", "--guard-builtin", "alignment", "--watch", "--json"], env);
    expect(mix.code, mix.stderr).toBe(0);
    const mixJob = jsonLines(mix.stdout).at(-1).job;
    expect(mixJob.state).toBe("JOB_STATE_SUCCEEDED");
    expect(mixJob.fineTune.safetyMix).toEqual({ fraction: 0.5, alignmentDataset: { builtin: { name: "alignment" } } });
  });
});
