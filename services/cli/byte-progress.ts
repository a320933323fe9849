/** Bytes moved by uploads and downloads, as a bar on a terminal only (none when piped or with --json). */
import type { Context } from "./command.ts";
import { duration, interactive, num } from "./output.ts";
import { createProgress, type Progress } from "./progress-bar.ts";

/** Counts bytes toward `total`, shown in KiB or MiB so the counts stay readable, with speed and ETA. */
export function byteProgress(ctx: Context, label: string, total: number): ((bytes: number) => void) & { end(): void } {
  const progress: Progress | undefined = !ctx.json && interactive(ctx) ? createProgress(ctx.stdout, true) : undefined;
  const [unit, size] = total >= 2 ** 20 ? ["MiB", 2 ** 20] : ["KiB", 1024];
  const started = Date.now();
  let done = 0;
  const update = (bytes: number) => {
    done += bytes;
    if (!progress) return;
    const seconds = (Date.now() - started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    progress.update({
      label: `${label} ${unit}`,
      done: Number(num(done / size, 1)),
      total: Number(num(total / size, 1)),
      fields: rate > 0 ? [`${num(rate / 2 ** 20, 1)} MiB/s`, `ETA ${duration((total - done) / rate)}`] : [],
    });
  };
  return Object.assign(update, { end: () => progress?.end() });
}
