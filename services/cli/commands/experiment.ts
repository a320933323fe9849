/** experiment: the paper's comparison on the built-in world, with a report and charts. */
import os from "node:os";
import { PRESETS } from "../../experiment/presets.ts";
import type { Command } from "../command.ts";
import { CONNECTION_FLAGS, resolveConnection } from "../connection.ts";
import { UsageError } from "../errors.ts";
import { choice, ref, text, uint } from "../flags.ts";
import { interactive } from "../output.ts";
import { createProgress } from "../progress-bar.ts";

const PRESET = choice("preset", "<name>", `One of ${Object.keys(PRESETS).join(", ")} (default quick).`, PRESETS);
const OUT = text("out", "<dir>", "Output folder (default out/experiment-<preset>).");
// Not the client --address: unset, the services start in this process.
const SUITE_ADDRESS = text("address", "<url>", "A running suite (default: start the services in this process).");
const PARALLEL = uint("parallel", "<n>", "Cells run at once, each training job in its own thread (default: the number of cores).");
const BASE = ref("base", "<uri@digest>", "Base checkpoint (default: the shipped base model).");

const experiment: Command = {
  summary: "Run non-aligned, SFT and Vaccine alignment against harmful fine-tuning and write a report.",
  synopsis: "[--preset quick|full|tiny] [--out <dir>] [--parallel <n>] [--address <url> [--tls-ca <file>] [--token-file <file>] ...] [--base <ref>]",
  details:
    "Drives the services over gRPC: at --address (with the TLS and token options of the client " +
    "commands), or started in this process when it is unset.\n" +
    "Writes results.json, report.md and SVG charts to --out; a rerun skips the cells already in " +
    "results.json. quick and full fit one sitting (the README gives their measured times); full is " +
    "the whole protocol (every method and guard, six ratios, three seeds).",
  local: true,
  flags: [PRESET, OUT, PARALLEL, SUITE_ADDRESS, BASE, ...CONNECTION_FLAGS],
  async run(ctx) {
    const address = ctx.flags.get(SUITE_ADDRESS);
    const given = CONNECTION_FLAGS.filter((f) => ctx.flags.has(f));
    if (address === undefined && given.length) throw new UsageError(`${given.map((f) => `--${f.name}`).join(", ")} only with --address: the services started in this process are plaintext, without credentials`);
    const connection = address === undefined ? undefined : resolveConnection(address, ctx.flags, ctx.env, ctx.stderr);
    const preset = ctx.flags.get(PRESET) ?? PRESETS.quick;
    const out = ctx.flags.get(OUT) ?? `out/experiment-${preset.name}`;
    const parallel = ctx.flags.get(PARALLEL) ?? os.availableParallelism();
    if (parallel < 1) throw new UsageError("--parallel: at least 1");
    const progress = createProgress(ctx.stdout, interactive(ctx));
    // Imported here so other commands do not load the model runtime.
    const { experiment: run } = await import("../../experiment/experiment.ts");
    let seconds: number;
    try {
      ({ seconds } = await run({
        preset: preset.name,
        out,
        address: connection?.url,
        client: connection?.options,
        base: ctx.flags.get(BASE),
        parallel,
        hooks: {
          onProgress: (p) => {
            if (p.index > 0) {
              progress.end();
              progress.note(`[${p.index}/${p.total}] ${p.cell}`);
            } else if (p.step !== undefined) {
              const fields = [`loss ${p.loss?.toFixed(3)}`, ...(p.perturbationNorm ? [`|eps| ${p.perturbationNorm.toFixed(3)}`] : [])];
              progress.update({ label: p.cell, done: p.step, total: p.totalSteps ?? 0, fields });
            }
          },
        },
      }));
    } finally {
      // A bar left running would keep its redraw timer, and the process, alive.
      progress.end();
    }
    ctx.stdout.write(`report: ${out}/report.md (${(seconds / 60).toFixed(1)} min)\n`);
  },
};

export const EXPERIMENT_COMMANDS = { experiment };
