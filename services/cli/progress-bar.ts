/**
 * Progress of jobs and scoring streams. On a terminal, a cli-progress bar redrawn in place with
 * notes printed above it; elsewhere (pipes, files, CI) plain lines only, one every few steps,
 * so logs stay readable and free of control characters.
 */
import cliProgress, { type GenericFormatter, type MultiBar, type SingleBar } from "cli-progress";
import type { Output } from "./output.ts";

// A CommonJS module whose exports Node cannot name statically: only the default import works.
const { Format, MultiBar: Bars } = cliProgress;

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
  /** Leaves the last bar on screen and moves below it; the next update starts a new bar. */
  end(): void;
}

export function createProgress(out: Output, tty: boolean): Progress {
  return tty ? new BarProgress(out) : new PlainProgress(out);
}

interface Payload {
  label: string;
  fields: string;
}

// "label [====----] 3/10 30%  loss 0.41  ETA 12s": the bar narrows so the fields fit, and the line
// stays one column short of the terminal (writing the last column makes some terminals wrap).
const format: GenericFormatter = (options, params, payload: Payload) => {
  const tail = ` ${params.value}/${params.total} ${Math.floor(params.progress * 100)}%${payload.fields}`;
  const width = params.maxWidth - 1;
  const barsize = Math.max(10, Math.min(40, width - payload.label.length - tail.length - 3));
  return `${payload.label} [${Format.BarFormat(params.progress, { ...options, barsize })}]${tail}`.slice(0, width);
};

class BarProgress implements Progress {
  private bars: MultiBar | undefined;
  private bar: SingleBar | undefined;
  constructor(private readonly out: Output) {}

  update({ label, done, total, fields }: ProgressState): void {
    const payload: Payload = { label, fields: fields.map((f) => `  ${f}`).join("") };
    if (this.bars && this.bar) {
      this.bar.setTotal(total);
      this.bar.update(done, payload);
      return;
    }
    this.bars = new Bars({
      // cli-progress writes, and reads isTTY and columns: all an Output has.
      stream: this.out as unknown as NodeJS.WritableStream,
      format,
      // Truncate lines rather than turn the terminal's line wrapping off (left off if the process is killed).
      linewrap: true,
      // Redraw on every frame: a note clears the bar's line even when its value has not moved.
      forceRedraw: true,
      emptyOnZero: true,
    });
    this.bar = this.bars.create(total, done, payload);
  }

  note(text: string): void {
    if (!this.bars) {
      this.out.write(`${text}\n`);
      return;
    }
    this.bars.log(`${text}\n`);
    // Flush now rather than on the next frame, so notes and steps keep their order.
    this.bars.update();
  }

  end(): void {
    this.bars?.stop();
    this.bars = this.bar = undefined;
  }
}

// Plain output prints about this many progress lines per run, whatever its length.
const PLAIN_LINES = 20;

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

  end(): void {
    this.printed = undefined;
  }
}
