// The CLI's watch across interruptions (cli/resumed-watch.ts): a stream cut with UNAVAILABLE
// is opened again after the last event seen, saying so; any other error, or interruptions
// for too long, end it.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { JobEventSchema, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import { resumedWatch } from "../../services/cli/resumed-watch.ts";

const event = (sequence: number) => create(JobEventSchema, { sequence });

/** A server whose streams are scripted: each open gets the next script, events then maybe an error. */
function server(scripts: { events: number[]; error?: ConnectError }[]) {
  const opened: number[] = [];
  const watch = (after: number) =>
    (async function* () {
      opened.push(after);
      const script = scripts.shift()!;
      for (const s of script.events) yield { event: event(s) };
      if (script.error) throw script.error;
    })();
  return { watch, opened };
}

async function all(it: AsyncIterable<JobEvent>) {
  const out: number[] = [];
  for await (const e of it) out.push(e.sequence);
  return out;
}

describe("resumedWatch", () => {
  it("opens a stream cut with UNAVAILABLE again after the last event seen, and says so", async () => {
    const unavailable = new ConnectError("the job queue cannot be reached; retry later", Code.Unavailable);
    const s = server([{ events: [1, 2, 3], error: unavailable }, { events: [], error: unavailable }, { events: [4, 5] }]);
    const pauses: [string, number][] = [];
    expect(await all(resumedWatch(s.watch, { onPause: (why, seconds) => pauses.push([why, seconds]), firstPauseMs: 10 }))).toEqual([1, 2, 3, 4, 5]);
    expect(s.opened).toEqual([0, 3, 3]);
    expect(pauses).toEqual([
      ["the job queue cannot be reached; retry later", 0.01],
      ["the job queue cannot be reached; retry later", 0.02],
    ]);
  });

  it("ends with any other error, and with UNAVAILABLE for longer than it rides out", async () => {
    const s = server([{ events: [1], error: new ConnectError("no such job", Code.NotFound) }]);
    await expect(all(resumedWatch(s.watch, { onPause: () => {}, firstPauseMs: 10 }))).rejects.toMatchObject({ code: Code.NotFound });
    expect(s.opened).toEqual([0]);
    const down = new ConnectError("down", Code.Unavailable);
    const t = server(Array.from({ length: 20 }, () => ({ events: [], error: down })));
    await expect(all(resumedWatch(t.watch, { onPause: () => {}, firstPauseMs: 10, giveUpMs: 50 }))).rejects.toMatchObject({ code: Code.Unavailable });
    expect(t.opened.length).toBeGreaterThan(1);
    expect(t.opened.length).toBeLessThan(10);
  });
});
