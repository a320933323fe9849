// The bound on Score's decoding calls (common/call-slots.ts): at most `limit` run at once,
// the others start in arrival order as slots free, and a caller that gives up while it
// waits leaves the line without taking a slot; a stream holds its slot until it ends or its
// reader stops.
import { describe, expect, it } from "vitest";
import { CallSlots } from "../../services/common/call-slots.ts";

/** Work that runs until its release() (a long decoding). */
function held() {
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  return { release, work: () => done };
}
const turn = () => new Promise((r) => setImmediate(r));

describe("CallSlots", () => {
  it("runs at most `limit` calls at once, the others in arrival order", async () => {
    const slots = new CallSlots(2);
    const started: string[] = [];
    const calls = ["a", "b", "c", "d"].map((name) => {
      const h = held();
      const result = slots.run(async () => {
        started.push(name);
        await h.work();
        return name.toUpperCase();
      });
      return { ...h, result };
    });
    await turn();
    expect(started).toEqual(["a", "b"]);
    expect(slots.queued).toBe(2);
    calls[1].release();
    expect(await calls[1].result).toBe("B");
    await turn();
    expect(started).toEqual(["a", "b", "c"]);
    calls[0].release();
    await calls[0].result;
    await turn();
    expect(started).toEqual(["a", "b", "c", "d"]);
    expect(slots.queued).toBe(0);
    calls[2].release();
    calls[3].release();
    expect(await Promise.all(calls.map((c) => c.result))).toEqual(["A", "B", "C", "D"]);
  });

  it("frees the slot of a call that fails", async () => {
    const slots = new CallSlots(1);
    await expect(slots.run(() => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect(await slots.run(async () => "next")).toBe("next");
  });

  it("lets a waiting call leave on its signal, with the signal's reason, and keeps the order of the rest", async () => {
    const slots = new CallSlots(1);
    const first = held();
    const running = slots.run(first.work);
    const leaving = new AbortController();
    const gaveUp = slots.run(async () => "never", leaving.signal);
    const started: string[] = [];
    const next = slots.run(async () => void started.push("next"));
    await turn();
    expect(slots.queued).toBe(2);
    const reason = new Error("deadline");
    leaving.abort(reason);
    await expect(gaveUp).rejects.toBe(reason);
    expect(slots.queued).toBe(1);
    first.release();
    await running;
    await next;
    expect(started).toEqual(["next"]);
    // An aborted signal takes no slot at all.
    await expect(slots.run(async () => "x", AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(await slots.run(async () => "free")).toBe("free");
  });

  it("holds a stream's slot until the stream ends, or until its reader stops early", async () => {
    const slots = new CallSlots(1);
    async function* items() {
      yield 1;
      yield 2;
    }
    const reader = slots.stream(items);
    expect((await reader.next()).value).toBe(1);
    const waiting = slots.run(async () => "after");
    await turn();
    expect(slots.queued).toBe(1);
    await reader.return(undefined); // the client went away mid-stream
    expect(await waiting).toBe("after");
    const all: number[] = [];
    for await (const x of slots.stream(items)) all.push(x);
    expect(all).toEqual([1, 2]);
    expect(await slots.run(async () => "free")).toBe("free");
  });
});
