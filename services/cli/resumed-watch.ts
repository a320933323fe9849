/**
 * A job's events, followed across interruptions: a stream cut with UNAVAILABLE (an api that
 * shuts down, the queue's Redis away for a moment) is opened again after the last event seen
 * (after_sequence), with a growing pause, while the job goes on. Any other error, or
 * interruptions for longer than `giveUpMs` in a row, end the watch with that error.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";

export interface ResumeOptions {
  /** Told before each pause: why the stream stopped and how long until it is opened again. */
  onPause: (why: string, seconds: number) => void;
  /** How long interruptions in a row are ridden out (default 2 minutes). */
  giveUpMs?: number;
  /** The first pause; each next one doubles, up to 8 s (default 0.5 s). */
  firstPauseMs?: number;
}

export async function* resumedWatch(watch: (afterSequence: number) => AsyncIterable<{ event?: JobEvent }>, options: ResumeOptions): AsyncGenerator<JobEvent> {
  let after = 0;
  let pause = options.firstPauseMs ?? 500;
  let since: number | undefined;
  for (;;) {
    try {
      for await (const { event } of watch(after)) {
        if (!event) continue;
        after = event.sequence;
        since = undefined;
        yield event;
      }
      return;
    } catch (err) {
      const e = ConnectError.from(err);
      since ??= Date.now();
      if (e.code !== Code.Unavailable || Date.now() - since > (options.giveUpMs ?? 120_000)) throw err;
      options.onPause(e.rawMessage, pause / 1000);
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 8000);
    }
  }
}
