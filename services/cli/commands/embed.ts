/** embed and drift: EmbedService's hidden states and harmful embedding drift. */
import { ComputeDriftResponseSchema, EmbedResponseSchema, Pooling, type LayerEmbedding } from "../../../gen/vaccine/v1/embed_pb.ts";
import type { Command } from "../command.ts";
import { UsageError } from "../errors.ts";
import { choice, int, ints, ref, toggle } from "../flags.ts";
import { num, table, writeJson } from "../output.ts";
import { CHECKPOINT, DATASET_FLAGS, datasetRef } from "../spec-flags.ts";

const POOLINGS: Record<string, Pooling> = { mean: Pooling.MEAN, last: Pooling.LAST_TOKEN, none: Pooling.NONE };
// Text output shows a vector's norm and first values; --json has every value.
const PREVIEW = 4;

function layerRow(l: LayerEmbedding): string[] {
  const v = l.vectors!;
  const norm = Math.sqrt(v.values.reduce((s, x) => s + x * x, 0));
  const head = v.values.slice(0, PREVIEW).map((x) => num(x)).join(", ");
  return [l.layer === -1 ? "final" : String(l.layer), `${v.rows}x${v.cols}`, num(norm), `[${head}${v.values.length > PREVIEW ? ", ..." : ""}]`];
}

const LAYERS = ints("layers", "<list>", "Comma-separated decoder layers, 0-based (default every layer).");
const FINAL = toggle("final", "Also return the final hidden state.");
const POOLING = choice("pooling", "<pooling>", "mean, last or none (one vector per token); default mean.", POOLINGS);

const embed: Command = {
  summary: "Hidden states of a checkpoint for each text: the layers' attention outputs and the final hidden state.",
  synopsis: "--checkpoint <ref> [options] <text>...",
  flags: [CHECKPOINT, LAYERS, FINAL, POOLING],
  argument: { name: "[text...]", help: "Texts to embed (at least one)." },
  async run(ctx) {
    const f = ctx.flags;
    if (ctx.args.length === 0) throw new UsageError("give at least one text to embed");
    const res = await ctx.clients().embed.embed({
      checkpoint: f.required(CHECKPOINT),
      texts: ctx.args,
      layers: f.get(LAYERS) ?? [],
      includeFinalHidden: f.has(FINAL),
      pooling: f.get(POOLING),
    });
    if (ctx.json) return writeJson(ctx.stdout, EmbedResponseSchema, res);
    ctx.stdout.write(`hidden size ${res.hiddenSize}\n`);
    res.embeddings.forEach((e, i) => {
      ctx.stdout.write(`\ntext ${i + 1} (${e.tokenCount} tokens)\n`);
      ctx.stdout.write(table([["LAYER", "SHAPE", "NORM", "VALUES"], ...e.layers.map(layerRow)]));
    });
  },
};

const REFERENCE = ref("reference", "<ref>", "Checkpoint drift is measured from, e.g. the aligned model (required).");
const CANDIDATE = ref("candidate", "<ref>", "Checkpoint measured, e.g. the fine-tuned model (required).");
const PROBE_SIZE = int("probe-size", "<n>", "Probe examples (default 100).");

const drift: Command = {
  summary: "Harmful embedding drift: how far a candidate's attention outputs moved from a reference checkpoint's.",
  synopsis: "--reference <ref> --candidate <ref> [--data <uri> | --builtin <name>] [--probe-size <n>]",
  details: "Probe texts default to a fixed sample of the built-in alignment data.",
  flags: [REFERENCE, CANDIDATE, ...DATASET_FLAGS, PROBE_SIZE],
  async run(ctx) {
    const f = ctx.flags;
    const res = await ctx.clients().embed.computeDrift({
      reference: f.required(REFERENCE),
      candidate: f.required(CANDIDATE),
      probeDataset: datasetRef(f, false),
      probeSize: f.get(PROBE_SIZE),
    });
    if (ctx.json) return writeJson(ctx.stdout, ComputeDriftResponseSchema, res);
    const rows = res.layers.map((l) => [String(l.layer), num(l.squaredNorm, 6), num(l.l2Norm, 6)]);
    ctx.stdout.write(table([["LAYER", "SQUARED NORM", "L2 NORM"], ...rows, ["total", num(res.totalSquaredNorm, 6), num(res.totalL2Norm, 6)]]));
    ctx.stdout.write(`\n${res.probeSize} probe examples, ${res.tokenCount} tokens\n${res.definition}\n`);
  },
};

export const EMBED_COMMANDS = { embed, drift };
