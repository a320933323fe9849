// The batching window of common/call-batcher.ts with a recording run function: which calls
// share a run, and how each call's own error, deadline or cancellation stays its own.
import { describe, expect, it } from "vitest";
import { CallBatcher, type Outcome } from "../../services/common/call-batcher.ts";

/** A batcher whose runs are recorded; a call "bad" fails alone, a run holding "boom" throws. */
function recording(windowMs: number, maxRows: number) {
  const runs: string[][] = [];
  const signals: AbortSignal[] = [];
  let release = () => {};
  let held = Promise.resolve();
  const batcher = new CallBatcher<string, string>({ windowMs, maxRows }, async (calls, signal) => {
    runs.push(calls);
    signals.push(signal);
    await held;
    if (calls.includes("boom")) throw new Error("the run failed");
    return calls.map((c): Outcome<string> => (c === "bad" ? { error: new Error(`bad call`) } : { value: c.toUpperCase() }));
  });
  return {
    batcher,
    runs,
    /** Each run's signal, in run order. */
    signals,
    /** Holds the next runs until release() (a long forward pass). */
    hold: () => (held = new Promise<void>((r) => (release = r))),
    release: () => release(),
  };
}

describe("CallBatcher", () => {
  it("runs calls of one key that arrive within the window together, other keys apart", async () => {
    const b = recording(20, 100);
    const out = await Promise.all([b.batcher.call("k", "a", 1), b.batcher.call("k", "b", 1), b.batcher.call("j", "c", 1), b.batcher.call("k", "d", 1)]);
    expect(out).toEqual(["A", "B", "C", "D"]);
    expect(b.runs).toEqual([["a", "b", "d"], ["c"]]);
  });

  it("runs a full batch at once, a call over the bound alone, and every call alone with a zero window", async () => {
    const b = recording(10_000, 4);
    await Promise.all([b.batcher.call("k", "a", 3), b.batcher.call("k", "b", 1), b.batcher.call("k", "c", 9)]);
    expect(b.runs).toEqual([["a", "b"], ["c"]]); // a + b fill the 4 rows: run at once; c alone
    const off = recording(0, 100);
    await Promise.all([off.batcher.call("k", "a", 1), off.batcher.call("k", "b", 1)]);
    expect(off.runs).toEqual([["a"], ["b"]]);
  });

  it("fails a call's own error alone, and every call of a run that throws", async () => {
    const b = recording(20, 100);
    const settled = await Promise.allSettled([b.batcher.call("k", "a", 1), b.batcher.call("k", "bad", 1), b.batcher.call("j", "boom", 1), b.batcher.call("j", "c", 1)]);
    expect(settled.map((s) => (s.status === "fulfilled" ? s.value : (s.reason as Error).message))).toEqual(["A", "bad call", "the run failed", "the run failed"]);
  });

  it("lets a caller leave while its batch waits, and stop waiting while it runs, without the others noticing", async () => {
    const b = recording(30, 100);
    const leaving = new AbortController();
    const calls = [b.batcher.call("k", "a", 1), b.batcher.call("k", "b", 1, leaving.signal), b.batcher.call("k", "c", 1)];
    leaving.abort(new Error("deadline"));
    expect(await Promise.allSettled(calls)).toEqual([
      { status: "fulfilled", value: "A" },
      { status: "rejected", reason: new Error("deadline") },
      { status: "fulfilled", value: "C" },
    ]);
    expect(b.runs).toEqual([["a", "c"]]);

    b.hold();
    const cancelled = new AbortController();
    const running = [b.batcher.call("k", "d", 1, cancelled.signal), b.batcher.call("k", "e", 1)];
    await new Promise((r) => setTimeout(r, 60)); // the run has started and is held
    cancelled.abort(new Error("cancelled"));
    await expect(running[0]).rejects.toThrow("cancelled");
    b.release();
    await expect(running[1]).resolves.toBe("E");
    expect(b.runs.at(-1)).toEqual(["d", "e"]);
    // One caller of two gave up: the run goes on for the other.
    expect(b.signals.at(-1)!.aborted).toBe(false);
    const before = new AbortController();
    before.abort(new Error("too late"));
    await expect(b.batcher.call("k", "f", 1, before.signal)).rejects.toThrow("too late");
    expect(b.runs).toHaveLength(2);
  });

  it("tells a run that every caller of its batch gave up, so it can stop; never a run that finished", async () => {
    const b = recording(10, 100);
    b.hold();
    const [first, second] = [new AbortController(), new AbortController()];
    const calls = [b.batcher.call("k", "a", 1, first.signal), b.batcher.call("k", "b", 1, second.signal)];
    await new Promise((r) => setTimeout(r, 40)); // the run has started and is held
    first.abort(new Error("cancelled"));
    await expect(calls[0]).rejects.toThrow("cancelled");
    expect(b.signals[0].aborted).toBe(false);
    second.abort(new Error("deadline"));
    await expect(calls[1]).rejects.toThrow("deadline");
    expect(b.signals[0].aborted).toBe(true);
    expect(b.signals[0].reason).toEqual(new Error("every caller of the batch gave up"));
    b.release();
    // A run that answered its callers is not told afterwards.
    await b.batcher.call("k", "c", 1);
    expect(b.signals[1].aborted).toBe(false);
  });
});
