/** embed and drift: EmbedService's hidden states and harmful embedding drift. */
import { ComputeDriftResponseSchema, EmbedResponseSchema, Pooling, type LayerEmbedding } from "../../../gen/vaccine/v1/embed_pb.ts";
import { UsageError } from "../args.ts";
import type { Command } from "../command.ts";
import { num, table, writeJson } from "../output.ts";
import { DATASET_OPTIONS, datasetRef } from "../spec-flags.ts";

const POOLING: Record<string, Pooling> = { mean: Pooling.MEAN, last: Pooling.LAST_TOKEN, none: Pooling.NONE };
// Text output shows a vector's norm and first values; --json has every value.
const PREVIEW = 4;

function layerRow(l: LayerEmbedding): string[] {
  const v = l.vectors!;
  const norm = Math.sqrt(v.values.reduce((s, x) => s + x * x, 0));
  const head = v.values.slice(0, PREVIEW).map((x) => num(x)).join(", ");
  return [l.layer === -1 ? "final" : String(l.layer), `${v.rows}x${v.cols}`, num(norm), `[${head}${v.values.length > PREVIEW ? ", ..." : ""}]`];
}

const embed: Command = {
  summary: "Hidden states of a checkpoint for each text: the layers' attention outputs and the final hidden state.",
  synopsis: "--checkpoint <ref> [options] <text>...",
  options: {
    checkpoint: { type: "string", value: "<ref>", help: "Model or adapter checkpoint, uri@digest (required)." },
    layers: { type: "string", value: "<list>", help: "Comma-separated decoder layers, 0-based (default every layer)." },
    final: { type: "boolean", help: "Also return the final hidden state." },
    pooling: { type: "string", value: "<pooling>", help: "mean, last or none (one vector per token); default mean." },
  },
  async run(ctx) {
    const f = ctx.flags;
    if (f.positionals.length === 0) throw new UsageError("give at least one text to embed");
    const res = await ctx.clients().embed.embed({
      checkpoint: f.requiredRef("checkpoint"),
      texts: f.positionals,
      layers: f.ints("layers"),
      includeFinalHidden: f.bool("final"),
      pooling: f.choice("pooling", POOLING),
    });
    if (ctx.json) return writeJson(ctx.stdout, EmbedResponseSchema, res);
    ctx.stdout.write(`hidden size ${res.hiddenSize}\n`);
    res.embeddings.forEach((e, i) => {
      ctx.stdout.write(`\ntext ${i + 1} (${e.tokenCount} tokens)\n`);
      ctx.stdout.write(table([["LAYER", "SHAPE", "NORM", "VALUES"], ...e.layers.map(layerRow)]));
    });
  },
};

const drift: Command = {
  summary: "Harmful embedding drift: how far a candidate's attention outputs moved from a reference checkpoint's.",
  synopsis: "--reference <ref> --candidate <ref> [--data <uri> | --builtin <name>] [--probe-size <n>]",
  details: "Probe texts default to a fixed sample of the built-in alignment data.",
  options: {
    reference: { type: "string", value: "<ref>", help: "Checkpoint drift is measured from, e.g. the aligned model (required)." },
    candidate: { type: "string", value: "<ref>", help: "Checkpoint measured, e.g. the fine-tuned model (required)." },
    ...DATASET_OPTIONS,
    "probe-size": { type: "string", value: "<n>", help: "Probe examples (default 100)." },
  },
  async run(ctx) {
    const f = ctx.flags;
    const res = await ctx.clients().embed.computeDrift({
      reference: f.requiredRef("reference"),
      candidate: f.requiredRef("candidate"),
      probeDataset: datasetRef(f, false),
      probeSize: f.int("probe-size"),
    });
    if (ctx.json) return writeJson(ctx.stdout, ComputeDriftResponseSchema, res);
    const rows = res.layers.map((l) => [String(l.layer), num(l.squaredNorm, 6), num(l.l2Norm, 6)]);
    ctx.stdout.write(table([["LAYER", "SQUARED NORM", "L2 NORM"], ...rows, ["total", num(res.totalSquaredNorm, 6), num(res.totalL2Norm, 6)]]));
    ctx.stdout.write(`\n${res.probeSize} probe examples, ${res.tokenCount} tokens\n${res.definition}\n`);
  },
};

export const EMBED_COMMANDS = { embed, drift };
