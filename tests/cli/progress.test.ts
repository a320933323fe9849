// Progress displays without a server: the bar redrawn in place on a (fake) terminal, plain
// lines elsewhere, and job events and scoring progress turned into both.
import { create } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import { CheckpointKind, JobEventSchema, JobState, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { ScoreProgressSchema } from "../../gen/vaccine/v1/score_pb.ts";
import { jobProgress } from "../../services/cli/commands/jobs.ts";
import { scoreProgress } from "../../services/cli/commands/score.ts";
import { interactive } from "../../services/cli/output.ts";
import { createProgress } from "../../services/cli/progress-bar.ts";
import { Capture } from "./harness.ts";

const REF = { uri: "store://checkpoints/ab", digest: `sha256:${"ab".repeat(32)}` };

function events(total: number): JobEvent[] {
  const out: JobEvent[] = [create(JobEventSchema, { event: { case: "stateChange", value: { from: JobState.QUEUED, to: JobState.RUNNING } } })];
  for (let step = 1; step <= total; step++) {
    out.push(create(JobEventSchema, { event: { case: "step", value: { step, totalSteps: total, loss: 2 / step, perturbationNorm: 0.5, stepSeconds: 2 } } }));
    if (step === 2) out.push(create(JobEventSchema, { event: { case: "checkpointWritten", value: { checkpoint: REF, kind: CheckpointKind.TRAINING_STATE, step } } }));
  }
  out.push(create(JobEventSchema, { event: { case: "stateChange", value: { from: JobState.RUNNING, to: JobState.SUCCEEDED } } }));
  return out;
}

/**
 * The lines a terminal shows after `text`: \r and ESC[<n>G move along the line, ESC[K and
 * ESC[0K erase to its end, ESC[2K erases all of it; any other control sequence is refused.
 */
function screen(text: string): string[] {
  const lines = [""];
  let col = 0;
  for (const [token, n, code] of text.matchAll(/\x1b\[(\d*)([A-Za-z])|[\s\S]/g)) {
    const row = lines.length - 1;
    if (token === "\r") col = 0;
    else if (token === "\n") (lines.push(""), (col = 0));
    else if (code === "G") col = Number(n || 1) - 1;
    else if (code === "K" && (n === "" || n === "0")) lines[row] = lines[row].slice(0, col);
    else if (code === "K" && n === "2") lines[row] = "";
    else if (code !== undefined || token === "\x1b") throw new Error(`unexpected control sequence ${JSON.stringify(token)}`);
    else (lines[row] = lines[row].slice(0, col).padEnd(col) + token + lines[row].slice(col + 1)), col++;
  }
  return lines;
}

describe("on a terminal", () => {
  // The bar redraws on a timer (cli-progress's frames): fake timers make its frames explicit.
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("redraws one bar in place and prints notes above it", () => {
    const tty = new Capture(true, 72);
    const progress = createProgress(tty, true);
    const feed = jobProgress(progress, { perturbation: true });
    for (const e of events(4)) {
      feed(e);
      vi.advanceTimersByTime(100);
    }
    progress.end();

    // What a terminal shows: each redraw overwrote the last, notes (whole, refs must paste) stayed above.
    expect(screen(tty.text)).toEqual([
      "state RUNNING",
      `training state at step 2: ${REF.uri}@${REF.digest}`,
      "state SUCCEEDED",
      "step [===================] 4/4 100%  loss 0.5  perturbation 0.5  ETA 0s",
      "",
    ]);
    // Every step was drawn, each over the last: only notes start new lines.
    const draws = [...tty.text.matchAll(/step \[[^\x1b\n]*/g)].map(([d]) => d);
    expect([...new Set(draws.map((d) => d.match(/\] (\d)\/4/)![1]))]).toEqual(["1", "2", "3", "4"]);
    expect(draws[0]).toMatch(/^step \[=*-*\] 1\/4 25% {2}loss 2 {2}perturbation 0\.5 {2}ETA 6s$/);
    expect(tty.text.split("\n")).toHaveLength(5);
    // Bars fit the terminal: redrawing a wrapped line would leave copies behind.
    for (const d of draws) expect(d.length).toBeLessThan(72);
    // Ended, the bar leaves no redraw timer to keep the process alive.
    expect(vi.getTimerCount()).toBe(0);
  });

  it("narrows the bar to a narrow terminal", () => {
    const tty = new Capture(true, 40);
    const progress = createProgress(tty, true);
    progress.update({ label: "scored", done: 5, total: 10, fields: ["ETA 3s"] });
    progress.end();
    const [line, after] = screen(tty.text);
    expect(line.length).toBeLessThan(40);
    expect(line).toMatch(/^scored \[=+-+\] 5\/10 50% {2}ETA 3s$/);
    expect(after).toBe("");
  });

  it("starts a new bar after an end, below the last one", () => {
    const tty = new Capture(true, 60);
    const progress = createProgress(tty, true);
    progress.update({ label: "cell a", done: 2, total: 2, fields: [] });
    progress.end();
    progress.note("[2/2] cell b");
    progress.update({ label: "cell b", done: 1, total: 2, fields: [] });
    progress.end();
    expect(screen(tty.text).map((l) => l.replace(/\[[=-]+\]/, "[]"))).toEqual(["cell a [] 2/2 100%", "[2/2] cell b", "cell b [] 1/2 50%", ""]);
  });
});

describe("off a terminal", () => {
  it("is chosen for pipes and files, and in CI even on a terminal", () => {
    const io = (tty: boolean, env: Record<string, string>) => ({ stdout: new Capture(tty), stderr: new Capture(), env });
    expect(interactive(io(true, {}))).toBe(true);
    expect(interactive(io(true, { CI: "false" }))).toBe(true);
    expect(interactive(io(false, {}))).toBe(false);
    expect(interactive(io(true, { CI: "true" }))).toBe(false);
  });

  it("prints plain lines every few steps, no control characters", () => {
    const out = new Capture();
    const progress = createProgress(out, false);
    const feed = jobProgress(progress, { perturbation: false });
    for (const e of events(100)) feed(e);
    progress.end();
    expect(out.text).not.toMatch(/[\x1b\r]/);
    const steps = out.text.split("\n").filter((l) => l.startsWith("step "));
    // The first step, then every fifth (100 / 20 lines), and always the last.
    expect(steps.map((l) => Number(l.match(/^step (\d+)\//)![1]))).toEqual([1, 6, 11, 16, 21, 26, 31, 36, 41, 46, 51, 56, 61, 66, 71, 76, 81, 86, 91, 96, 100]);
    expect(steps[0]).toBe("step 1/100  loss 2  ETA 3m18s");
    expect(out.text).toMatch(/^state RUNNING\nstep 1\/100/);
    expect(out.text.endsWith("state SUCCEEDED\n")).toBe(true);
  });

  it("starts counting again after an end (the experiment's next cell)", () => {
    const out = new Capture();
    const progress = createProgress(out, false);
    for (const done of [1, 2, 100]) progress.update({ label: "a", done, total: 100, fields: [] });
    progress.end();
    progress.update({ label: "b", done: 1, total: 100, fields: [] });
    expect(out.text).toBe("a 1/100\na 100/100\nb 1/100\n");
  });

  it("shows a scoring stream's progress with an ETA from the clock", () => {
    const out = new Capture();
    let now = 0;
    const feed = scoreProgress(createProgress(out, false), () => now);
    for (const done of [0, 10, 20]) {
      now = done * 100;
      feed(create(ScoreProgressSchema, { done, total: 20 }));
    }
    expect(out.text).toBe("scored 0/20\nscored 10/20  ETA 1s\nscored 20/20  ETA 0s\n");
  });

  it("names a failed job's status code and message in its state line", () => {
    const out = new Capture();
    const error = create(StatusSchema, { code: 9, message: "bad parent", details: [anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "X" }))] });
    jobProgress(createProgress(out, false), { perturbation: false })(
      create(JobEventSchema, { event: { case: "stateChange", value: { from: JobState.RUNNING, to: JobState.FAILED, error } } }),
    );
    expect(out.text).toBe("state FAILED (FAILED_PRECONDITION: bad parent)\n");
  });
});
