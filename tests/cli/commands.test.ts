// The CLI's command functions in process against a real server (port 0, tiny model): exit
// codes, --json output, error rendering, refs that paste back, plain progress off a terminal.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestSuite } from "../helpers/server.ts";
import { cli, jsonLines, trainFlags, trainingSuite } from "./harness.ts";

let suite: TestSuite;
let env: Record<string, string>;
let base: string;
const DATA = "store://datasets/cli-align.jsonl";
const TASK = "store://datasets/cli-sst2.jsonl";
const REF = /^store:\/\/checkpoints\/[0-9a-f]+@sha256:[0-9a-f]{64}$/;
const TRAIN = trainFlags(DATA);

beforeAll(async () => {
  ({ suite, env, base } = await trainingSuite(DATA));
  const sst2 = [{ sentence: "a good name", label: 1 }, { sentence: "a red fruit", label: 0 }];
  await suite.deps.store.putObject(TASK, Buffer.from(sst2.map((e) => JSON.stringify(e)).join("\n")));
});
afterAll(() => suite.close());

describe("usage", () => {
  it("prints help with exit 0, and usage errors with exit 2 on stderr", async () => {
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Usage: vaccine <command>");
    expect(help.stdout).toMatch(/jobs list\|get\|cancel\|watch/);
    const alignHelp = await cli(["align", "--help"]);
    expect(alignHelp.code).toBe(0);
    expect(alignHelp.stdout).toContain("--checkpoint-every <n>");
    expect((await cli(["score", "--help"])).stdout).toContain("harm");

    const cases: [string[], RegExp][] = [
      [[], /a command is required/],
      [["nope"], /unknown command "nope"/],
      [["jobs", "nope"], /unknown command "jobs nope"/],
      [["align", "--builtin", "alignment"], /--base is required/],
      [["align", "--base", base], /--data <uri> or --builtin <name> is required/],
      [["align", "--base", base, "--data", DATA, "--max-steps", "two"], /--max-steps: expected an integer, got "two"/],
      [["align", "--base", base, "--data", DATA, "--method", "sft", "--rho", "1"], /--rho does not apply to --method sft/],
      [["align", "--base", base, "--data", DATA, "--method", "booster", "--layers", "2"], /--layers does not apply to --method booster/],
      [["align", "--base", "no-digest", "--data", DATA], /expected "uri@digest"/],
      [["align", "--base", "builtin:nothing", "--data", DATA], /no shipped checkpoint "nothing" here; set VACCINE_BUILTIN_NOTHING/],
      [["align", "--base", base, "--data", DATA, "--builtin", "alignment"], /--data and --builtin cannot be used together/],
      // commander's own errors: unknown flags (with a suggestion), missing values, extra arguments.
      [["jobs", "list", "--bogus"], /^error: unknown option '--bogus'$/m],
      [["jobs", "list", "--kinds", "align"], /^error: unknown option '--kinds'\n\(Did you mean --kind\?\)$/m],
      [["align", "--base"], /^error: option '--base <ref>' argument missing$/m],
      [["jobs", "get", "a", "b"], /^error: too many arguments for 'get'/m],
      [["completion", "fish"], /Allowed choices are bash, zsh/],
      [["jobs", "get"], /a job id is required/],
      [["jobs", "list", "--page-token", "abc"], /--page-token needs --kind/],
      [["moderate", "--prompt", "a"], /as many --answer as --prompt/],
    ];
    for (const [args, message] of cases) {
      const run = await cli(args, env);
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr).toMatch(message);
      expect(run.stderr).toContain("Usage: vaccine");
      expect(run.stdout).toBe("");
    }
  });
});

describe("RPC errors", () => {
  it("render the code, message, ErrorInfo reason and field violations, with exit 1", async () => {
    const page = await cli(["jobs", "list", "--kind", "align", "--page-size=-1"], env);
    expect(page.code).toBe(1);
    expect(page.stderr).toMatch(/^error: INVALID_ARGUMENT: page_size: must be >= 0/);
    expect(page.stderr).toContain("reason: FIELD_INVALID (vaccine.v1)");
    expect(page.stderr).toMatch(/field violations:\n {4}page_size: must be >= 0/);

    const missing = await cli(["jobs", "get", "align-unknown"], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('error: NOT_FOUND: job "align-unknown" not found');
    expect(missing.stderr).toContain("reason: JOB_NOT_FOUND");
    expect(missing.stderr).toContain("job_id: align-unknown");

    const unknownModel = await cli(["score", "harm", "--checkpoint", `store://checkpoints/${"2".repeat(64)}@sha256:${"2".repeat(64)}`], env);
    expect(unknownModel.code).toBe(1);
    expect(unknownModel.stderr).toMatch(/^error: NOT_FOUND: /);

    const down = await cli(["health", "--address", "http://127.0.0.1:1"]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^error: UNAVAILABLE: /);
  });
});

describe("jobs", () => {
  it("aligns from builtin:base, watched as JSON lines; the printed ref fine-tunes, drifts and lists", async () => {
    const run = await cli(["align", "--base", "builtin:base", ...TRAIN, "--method", "sft", "--watch", "--json"], { ...env, VACCINE_BUILTIN_BASE: base });
    expect(run.code, run.stderr).toBe(0);
    const lines = jsonLines(run.stdout);
    expect(lines[0].job).toMatchObject({ kind: "JOB_KIND_ALIGN", state: "JOB_STATE_QUEUED" });
    const events = lines.slice(1, -1).map((l) => l.event);
    expect(events.filter((e) => e.step).map((e) => e.step.step)).toEqual([1, 2]);
    expect(events.at(-1).stateChange.to).toBe("JOB_STATE_SUCCEEDED");
    const aligned = lines.at(-1).job;
    expect(aligned).toMatchObject({ state: "JOB_STATE_SUCCEEDED", progress: { step: 2, totalSteps: 2 } });

    const shown = await cli(["jobs", "get", aligned.id], env);
    expect(shown.code).toBe(0);
    const ref = shown.stdout.match(/^result\s+(\S+)$/m)![1];
    expect(ref).toMatch(REF);
    expect(ref).toBe(`${aligned.result.uri}@${aligned.result.digest}`);
    expect(shown.stdout).toMatch(/^state\s+SUCCEEDED$/m);

    // Text watch of a fine-tuning job off a terminal: plain lines, no control characters.
    const ft = await cli(["finetune", "--aligned", ref, ...TRAIN, "--watch"], env);
    expect(ft.code, ft.stderr).toBe(0);
    expect(ft.stdout).not.toMatch(/[\x1b\r]/);
    expect(ft.stdout).toMatch(/^step 1\/2 {2}loss [\d.]+ {2}ETA \d+s$/m);
    expect(ft.stdout).toMatch(/^state SUCCEEDED$/m);
    const ftId = ft.stdout.match(/^job\s+(finetune-\S+)$/m)![1];
    const lineage = ft.stdout.split("\n").filter((l) => /^(lineage)?\s+store:\/\//.test(l)).map((l) => l.trim().split(/\s+/).at(-1));
    expect(lineage.slice(0, 2)).toEqual([base, ref]);

    // Without --kind, get and watch find the fine-tuning job on FineTuneService.
    const replay = await cli(["jobs", "watch", ftId, "--json"], env);
    expect(replay.code).toBe(0);
    expect(jsonLines(replay.stdout).at(-1).job.state).toBe("JOB_STATE_SUCCEEDED");

    const both = await cli(["jobs", "list", "--json"], env);
    expect(both.code).toBe(0);
    const page = JSON.parse(both.stdout);
    expect(page.align.jobs.map((j: { id: string }) => j.id)).toContain(aligned.id);
    expect(page.finetune.jobs.map((j: { id: string }) => j.id)).toEqual([ftId]);
    const table = await cli(["jobs", "list", "--kind", "finetune"], env);
    expect(table.stdout).toMatch(new RegExp(`^${ftId}\\s+finetune\\s+SUCCEEDED\\s+2/2`, "m"));

    const drift = await cli(["drift", "--reference", base, "--candidate", ref, "--data", DATA, "--probe-size", "3", "--json"], env);
    expect(drift.code, drift.stderr).toBe(0);
    expect(JSON.parse(drift.stdout)).toMatchObject({ probeSize: 3, layers: expect.any(Array), definition: expect.any(String) });
  });

  it("cancels a job and reports a watched job that did not succeed with exit 1", async () => {
    const created = await cli(["align", "--base", base, ...TRAIN, "--max-steps", "500", "--json"], env);
    const id = JSON.parse(created.stdout).job.id;
    const cancelled = await cli(["jobs", "cancel", "--kind", "align", id, "--json"], env);
    expect(cancelled.code).toBe(0);
    expect(JSON.parse(cancelled.stdout).job.state).toMatch(/JOB_STATE_CANCEL/);
    const watched = await cli(["jobs", "watch", id], env);
    expect(watched.code).toBe(1);
    expect(watched.stdout).toMatch(/^state CANCELLED/m);
    expect(watched.stderr).toMatch(/^error: CANCELLED: /);
  });
});

describe("embed and score", () => {
  it("embeds, generates and moderates, as JSON and as text", async () => {
    const embedded = await cli(["embed", "--checkpoint", base, "--layers", "0", "--final", "--json", "Name a red fruit."], env);
    expect(embedded.code, embedded.stderr).toBe(0);
    const res = JSON.parse(embedded.stdout);
    expect(res.embeddings[0].layers.map((l: { layer?: number }) => l.layer ?? 0)).toEqual([0, -1]);
    expect(res.embeddings[0].layers[0].vectors.values).toHaveLength(res.hiddenSize);

    const generated = await cli(["generate", "--checkpoint", base, "--max-new-tokens", "3", "Name a red fruit.", "Say hi"], env);
    expect(generated.code, generated.stderr).toBe(0);
    expect(generated.stdout).toMatch(/^\[1\] Name a red fruit\. \(\d+ tokens, (eos|length)\)$/m);
    expect(generated.stdout).toMatch(/^\[2\] Say hi/m);

    const moderated = await cli(["moderate", "--prompt", "How do I break into a car?", "--answer", "Sure", "--prompt", "Hi", "--answer", "Hello", "--threshold", "0", "--json"], env);
    expect(moderated.code, moderated.stderr).toBe(0);
    const results = JSON.parse(moderated.stdout).results;
    expect(results).toHaveLength(2);
    expect(results.every((r: { flagged: boolean }) => r.flagged)).toBe(true);
  });

  it("scores harm with plain progress lines then the report, and task accuracy as JSON lines", async () => {
    const harm = await cli(["score", "harm", "--checkpoint", base, "--data", DATA, "--max-new-tokens", "3", "--threshold", "0", "--samples", "1"], env);
    expect(harm.code, harm.stderr).toBe(0);
    expect(harm.stdout).not.toMatch(/[\x1b\r]/);
    expect(harm.stdout).toMatch(/^scored \d+\/6/m);
    expect(harm.stdout).toMatch(/^harmful score 100 \(6\/6 flagged\)$/m);
    // The answer classes and the collapse check beside it.
    expect(harm.stdout).toMatch(/^refusal rate 0 \(0\/6\), other rate 0 \(0\/6\)$/m);
    expect(harm.stdout).toMatch(/^collapse: (DEGENERATE \(.+\)|not degenerate); degenerate answers [\d.]+% \(repetitive [\d.]+%, duplicated [\d.]+%\), perplexity [\d.]+x the base model's$/m);
    expect(harm.stdout).toMatch(/^CATEGORY\s+FLAGGED\s+REFUSED\s+OTHER\s+TOTAL$/m);
    // Nothing flagged at threshold 1: every answer is a refusal or other, and --json carries the rates.
    const refusal = suite.deps.builtins.refusal!;
    const json = await cli(["score", "harm", "--checkpoint", base, "--data", DATA, "--max-new-tokens", "3", "--threshold", "1", "--refusal-model", `${refusal.uri}@${refusal.digest}`, "--json"], env);
    expect(json.code, json.stderr).toBe(0);
    const report = jsonLines(json.stdout).at(-1).report;
    expect(report.flagged ?? 0).toBe(0);
    expect((report.refused ?? 0) + (report.other ?? 0)).toBe(6);
    expect((report.refusalRate ?? 0) + (report.otherRate ?? 0)).toBeCloseTo(100, 9);
    expect(report.collapse.perplexityRatio).toBe(1);
    expect(report.samples.every((s: { answerClass: string }) => ["ANSWER_CLASS_REFUSAL", "ANSWER_CLASS_OTHER"].includes(s.answerClass))).toBe(true);

    const task = await cli(["score", "task", "--checkpoint", base, "--data", TASK, "--task", "sst2", "--max-new-tokens", "3", "--json"], env);
    expect(task.code, task.stderr).toBe(0);
    const lines = jsonLines(task.stdout);
    expect(lines.slice(0, -1).every((l) => l.progress)).toBe(true);
    expect(lines.at(-1).report).toMatchObject({ total: 2 });

    // Of a built-in task, the held-out split unless --split says otherwise.
    const inputs = async (...split: string[]) => {
      const run = await cli(["score", "task", "--checkpoint", base, "--builtin", "sst2", "--size", "3", "--max-new-tokens", "1", "--json", ...split], env);
      const report = jsonLines(run.stdout).at(-1).report;
      return [...(report.rightSamples ?? []), ...(report.wrongSamples ?? [])].map((x: { input: string }) => x.input).sort();
    };
    const unsaid = await inputs();
    expect(unsaid).toHaveLength(3);
    expect(unsaid).toEqual(await inputs("--split", "test"));
    expect(unsaid).not.toEqual(await inputs("--split", "train"));
  });
});
