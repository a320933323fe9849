/** experiment: the paper's comparison on the built-in world, with a report and charts. */
import { PRESETS, type Preset } from "../../experiment/presets.ts";
import { UsageError } from "../args.ts";
import type { Command } from "../command.ts";
import { interactive } from "../output.ts";
import { createProgress } from "../progress.ts";

const experiment: Command = {
  summary: "Run non-aligned, SFT and Vaccine alignment against harmful fine-tuning and write a report.",
  synopsis: "[--preset quick|full] [--out <dir>] [--address <url>] [--base <ref>]",
  details:
    "Drives the services over gRPC: at --address, or started in this process when it is unset.\n" +
    "Writes results.json, report.md and SVG charts to --out; a rerun skips the cells already in\n" +
    "results.json. The README gives the measured time of quick; full runs three seeds and a wider rho sweep.",
  local: true,
  options: {
    preset: { type: "string", value: "<name>", help: `One of ${Object.keys(PRESETS).join(", ")} (default quick).` },
    out: { type: "string", value: "<dir>", help: "Output folder (default out/experiment-<preset>)." },
    address: { type: "string", value: "<url>", help: "A running suite (default: start the services in this process)." },
    base: { type: "string", value: "<uri@digest>", help: "Base checkpoint (default: the shipped base model)." },
  },
  async run(ctx) {
    const name = ctx.flags.str("preset") ?? "quick";
    if (!Object.hasOwn(PRESETS, name)) throw new UsageError(`--preset: expected one of ${Object.keys(PRESETS).join(", ")}, got "${name}"`);
    const out = ctx.flags.str("out") ?? `out/experiment-${name}`;
    const progress = createProgress(ctx.stdout, interactive(ctx));
    // Imported here so other commands do not load the model runtime.
    const { experiment: run } = await import("../../experiment/experiment.ts");
    const { seconds } = await run({
      preset: name as Preset["name"],
      out,
      address: ctx.flags.str("address"),
      base: ctx.flags.ref("base"),
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
    });
    progress.end();
    ctx.stdout.write(`report: ${out}/report.md (${(seconds / 60).toFixed(1)} min)\n`);
  },
};

export const EXPERIMENT_COMMANDS = { experiment };
