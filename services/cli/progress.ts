/**
 * Progress of jobs and scoring streams. On a terminal one bar is redrawn in place (\r and
 * erase-line) with notes printed above it; elsewhere (pipes, files, CI) plain lines only,
 * one every few steps, so logs stay readable and free of control characters.
 */
import { CheckpointKind, LogSeverity, type JobEvent } from "../../gen/vaccine/v1/jobs_pb.ts";
import type { ScoreProgress } from "../../gen/vaccine/v1/score_pb.ts";
import { formatRef } from "./args.ts";
import { codeName } from "./errors.ts";
import { duration, num, stateName, type Output } from "./output.ts";

export interface ProgressState {
  /** What is counted: "step", "scored". */
  label: string;
  done: number;
  total: number;
  /** Further "name value" fields (loss, ETA). */
  fields: string[];
}

export interface Progress {
  update(state: ProgressState): void;
  /** A line of its own, kept above the bar. */
  note(text: string): void;
  /** Leaves the last bar on screen and moves below it. */
  end(): void;
}

// Plain output prints about this many progress lines per run, whatever its length.
const PLAIN_LINES = 20;
const ERASE_LINE = "\x1b[K";

export function createProgress(out: Output, tty: boolean): Progress {
  return tty ? new TtyProgress(out) : new PlainProgress(out);
}

class TtyProgress implements Progress {
  private bar = "";
  constructor(private readonly out: Output) {}

  update(state: ProgressState): void {
    this.bar = this.render(state);
    this.out.write(`\r${this.bar}${ERASE_LINE}`);
  }

  note(text: string): void {
    this.out.write(`\r${ERASE_LINE}${text}\n${this.bar ? this.bar + ERASE_LINE : ""}`);
  }

  end(): void {
    if (this.bar) this.out.write("\n");
    this.bar = "";
  }

  private render({ label, done, total, fields }: ProgressState): string {
    // One column short of the width: writing the last column makes some terminals wrap.
    const columns = Math.max(20, (this.out.columns ?? 80) - 1);
    const fraction = total > 0 ? Math.min(1, done / total) : 0;
    const tail = ` ${done}/${total} ${Math.floor(fraction * 100)}%${fields.map((f) => `  ${f}`).join("")}`;
    const width = Math.max(10, Math.min(40, columns - label.length - tail.length - 3));
    const filled = Math.round(fraction * width);
    const bar = "=".repeat(filled) + (filled < width ? ">" + " ".repeat(width - filled - 1) : "");
    return `${label} [${bar}]${tail}`.slice(0, columns);
  }
}

class PlainProgress implements Progress {
  private printed: number | undefined;
  constructor(private readonly out: Output) {}

  update({ label, done, total, fields }: ProgressState): void {
    const every = Math.max(1, Math.ceil(total / PLAIN_LINES));
    if (this.printed !== undefined && done !== total && done - this.printed < every) return;
    this.printed = done;
    this.out.write(`${label} ${done}/${total}${fields.map((f) => `  ${f}`).join("")}\n`);
  }

  note(text: string): void {
    this.out.write(text + "\n");
  }

  end(): void {}
}

// Recent steps weigh more in the ETA, so it follows speed changes (e.g. the tau refresh).
const EMA = 0.3;

/** Feeds a job's events to a progress display; `perturbation` adds Vaccine's norm. */
export function jobProgress(progress: Progress, options: { perturbation: boolean }): (event: JobEvent) => void {
  let stepSeconds: number | undefined;
  return (event) => {
    const e = event.event;
    switch (e.case) {
      case "step": {
        const s = e.value;
        stepSeconds = stepSeconds === undefined ? s.stepSeconds : EMA * s.stepSeconds + (1 - EMA) * stepSeconds;
        const fields = [`loss ${num(s.loss)}`];
        if (options.perturbation) fields.push(`perturbation ${num(s.perturbationNorm)}`);
        fields.push(`ETA ${duration(stepSeconds * (s.totalSteps - s.step))}`);
        progress.update({ label: "step", done: s.step, total: s.totalSteps, fields });
        break;
      }
      case "stateChange": {
        const why = e.value.error ? ` (${codeName(e.value.error.code)}: ${e.value.error.message})` : "";
        progress.note(`state ${stateName(e.value.to)}${why}`);
        break;
      }
      case "checkpointWritten": {
        const what = e.value.kind === CheckpointKind.RESULT ? "result" : "training state";
        progress.note(`${what} at step ${e.value.step}: ${formatRef(e.value.checkpoint)}`);
        break;
      }
      case "log":
        progress.note(`log ${(LogSeverity[e.value.severity] ?? "").toLowerCase()}: ${e.value.message}`);
        break;
    }
  };
}

/** Feeds a scoring stream's progress to a display, with an ETA from the wall clock. */
export function scoreProgress(progress: Progress, now: () => number = () => performance.now()): (p: ScoreProgress) => void {
  const start = now();
  return ({ done, total }) => {
    const elapsed = (now() - start) / 1000;
    const fields = done > 0 ? [`ETA ${duration((elapsed / done) * (total - done))}`] : [];
    progress.update({ label: "scored", done, total, fields });
  };
}
