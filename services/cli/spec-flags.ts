/** Flags shared by the commands that name a dataset or train an adapter, and the messages they build. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { DatasetFormat, DatasetSplit, type DatasetRefSchema, type LoraConfigSchema, type TrainingConfigSchema } from "../../gen/vaccine/v1/common_pb.ts";
import { UsageError, type Flags, type OptionTable } from "./args.ts";

export const DATASET_OPTIONS: OptionTable = {
  data: { type: "string", value: "<uri>", help: "Dataset file in the store, e.g. store://datasets/mine.jsonl." },
  format: { type: "string", value: "<format>", help: "Row format of --data: alpaca, beavertails, refusal, sst2, agnews, gsm8k (default: detected per row)." },
  builtin: { type: "string", value: "<name>", help: "Built-in generated dataset: alignment, harmful, harmful-eval, moderation, sst2, agnews, gsm8k, corpus, sst2-mix, agnews-mix, gsm8k-mix." },
  split: { type: "string", value: "<split>", help: "Split of --builtin: train or test (default train)." },
  size: { type: "string", value: "<n>", help: "Examples drawn from --builtin (default: the dataset's size)." },
  "data-seed": { type: "string", value: "<n>", help: "Generator seed of --builtin (default 0)." },
  ratio: { type: "string", value: "<p>", help: "Harmful fraction of a --builtin mixture, in [0, 1] (default 0.1)." },
};

const FORMATS: Record<string, DatasetFormat> = {
  alpaca: DatasetFormat.ALPACA,
  beavertails: DatasetFormat.BEAVERTAILS,
  refusal: DatasetFormat.REFUSAL,
  sst2: DatasetFormat.SST2,
  agnews: DatasetFormat.AGNEWS,
  gsm8k: DatasetFormat.GSM8K,
};
const SPLITS: Record<string, DatasetSplit> = { train: DatasetSplit.TRAIN, test: DatasetSplit.TEST };

/** The DatasetRef of --data or --builtin; undefined when neither is given and none is required. */
export function datasetRef(flags: Flags, required: boolean): MessageInitShape<typeof DatasetRefSchema> | undefined {
  flags.exclusive("data", "builtin");
  const uri = flags.str("data");
  const name = flags.str("builtin");
  const builtinOnly = ["split", "size", "data-seed", "ratio"].filter((f) => flags.has(f));
  if (uri !== undefined) {
    if (builtinOnly.length) throw new UsageError(`--${builtinOnly[0]} applies to --builtin, not --data`);
    return { source: { case: "uri", value: uri }, format: flags.choice("format", FORMATS) };
  }
  if (name !== undefined) {
    if (flags.has("format")) throw new UsageError("--format applies to --data, not --builtin");
    const builtin = { name, split: flags.choice("split", SPLITS), size: flags.int("size"), seed: flags.uint("data-seed"), harmfulRatio: flags.num("ratio") };
    return { source: { case: "builtin", value: builtin } };
  }
  const stray = [...builtinOnly, ...(flags.has("format") ? ["format"] : [])];
  if (required || stray.length) throw new UsageError("--data <uri> or --builtin <name> is required");
  return undefined;
}

export const LORA_OPTIONS: OptionTable = {
  rank: { type: "string", value: "<r>", help: "LoRA rank (default 8)." },
  alpha: { type: "string", value: "<a>", help: "LoRA alpha; the update is scaled by alpha/rank." },
  dropout: { type: "string", value: "<p>", help: "Dropout on the adapter input, in [0, 1) (default 0.1)." },
  targets: { type: "string", value: "<modules>", help: "Comma-separated modules to adapt, e.g. q_proj,v_proj (default all seven)." },
};

/** Only what was given: unset fields take the server's documented defaults. */
function given<T extends Record<string, unknown>>(fields: T): T | undefined {
  return Object.values(fields).some((v) => v !== undefined && !(Array.isArray(v) && v.length === 0)) ? fields : undefined;
}

export function loraConfig(flags: Flags): MessageInitShape<typeof LoraConfigSchema> | undefined {
  return given({
    rank: flags.int("rank"),
    alpha: flags.num("alpha"),
    dropout: flags.num("dropout"),
    targetModules: flags.str("targets")?.split(",").map((s) => s.trim()) ?? [],
  });
}

export const TRAINING_OPTIONS: OptionTable = {
  lr: { type: "string", value: "<rate>", help: "Peak learning rate." },
  epochs: { type: "string", value: "<n>", help: "Passes over the dataset (ignored with --max-steps)." },
  "max-steps": { type: "string", value: "<n>", help: "Total optimizer steps." },
  "batch-size": { type: "string", value: "<n>", help: "Examples per step (default 5)." },
  "max-seq-len": { type: "string", value: "<n>", help: "Longest tokenized example (default 200)." },
  warmup: { type: "string", value: "<ratio>", help: "Fraction of steps of linear warm-up (default 0.1)." },
  "weight-decay": { type: "string", value: "<w>", help: "AdamW weight decay (default 0.1)." },
  "grad-clip": { type: "string", value: "<norm>", help: "Global gradient-norm clip (default 1)." },
  seed: { type: "string", value: "<n>", help: "Seed for initialisation, dropout and data order (default 0)." },
  "checkpoint-every": { type: "string", value: "<n>", help: "Write a resumable training state every n steps (default 50)." },
};

export function trainingConfig(flags: Flags): MessageInitShape<typeof TrainingConfigSchema> | undefined {
  return given({
    learningRate: flags.num("lr"),
    epochs: flags.int("epochs"),
    maxSteps: flags.int("max-steps"),
    batchSize: flags.int("batch-size"),
    maxSequenceLength: flags.int("max-seq-len"),
    warmupRatio: flags.num("warmup"),
    weightDecay: flags.num("weight-decay"),
    gradClip: flags.num("grad-clip"),
    seed: flags.uint("seed"),
    checkpointEvery: flags.int("checkpoint-every"),
  });
}
