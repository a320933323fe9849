/** Flags that several commands take (checkpoint, moderation, dataset, adapter, training), and the messages they build. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { DatasetFormat, DatasetSplit, type DatasetRefSchema, type LoraConfigSchema, type TrainingConfigSchema } from "../../gen/vaccine/v1/common_pb.ts";
import { UsageError } from "./errors.ts";
import { choice, float, int, ref, text, uint, type Flag, type FlagValues } from "./flags.ts";

export const CHECKPOINT = ref("checkpoint", "<ref>", "Model or adapter checkpoint, uri@digest (required).");
export const MAX_NEW_TOKENS = int("max-new-tokens", "<n>", "Longest answer, in tokens.");
export const THRESHOLD = float("threshold", "<t>", "Moderation threshold: flag when the top category probability exceeds it (default 0.5).");
export const MODERATION_MODEL = ref("moderation-model", "<ref>", "Moderation model (default: the server's).");

export const DATASET_FORMATS: Record<string, DatasetFormat> = {
  alpaca: DatasetFormat.ALPACA,
  beavertails: DatasetFormat.BEAVERTAILS,
  refusal: DatasetFormat.REFUSAL,
  sst2: DatasetFormat.SST2,
  agnews: DatasetFormat.AGNEWS,
  gsm8k: DatasetFormat.GSM8K,
};
const SPLITS: Record<string, DatasetSplit> = { train: DatasetSplit.TRAIN, test: DatasetSplit.TEST };

const DATA = text("data", "<uri>", "Dataset file in the store, e.g. store://datasets/mine.jsonl.");
const FORMAT = choice("format", "<format>", "Row format of --data: alpaca, beavertails, refusal, sst2, agnews, gsm8k (default: the first row's).", DATASET_FORMATS);
const BUILTIN = text(
  "builtin",
  "<name>",
  "Built-in generated dataset: alignment, harmful, harmful-eval, moderation, sst2, agnews, gsm8k, corpus, sst2-mix, agnews-mix, gsm8k-mix.",
);
const SPLIT = choice("split", "<split>", "Split of --builtin: train or test (default train).", SPLITS);
const SIZE = int("size", "<n>", "Examples drawn from --builtin (default: the dataset's size).");
const DATA_SEED = uint("data-seed", "<n>", "Generator seed of --builtin (default 0).");
const RATIO = float("ratio", "<p>", "Harmful fraction of a --builtin mixture, in [0, 1] (default 0.1).");
const BUILTIN_ONLY: Flag<unknown>[] = [SPLIT, SIZE, DATA_SEED, RATIO];

export const DATASET_FLAGS: Flag<unknown>[] = [DATA, FORMAT, BUILTIN, ...BUILTIN_ONLY];

/** The DatasetRef of --data or --builtin; undefined when neither is given and none is required. */
export function datasetRef(flags: FlagValues, required: boolean): MessageInitShape<typeof DatasetRefSchema> | undefined {
  flags.exclusive(DATA, BUILTIN);
  const uri = flags.get(DATA);
  const name = flags.get(BUILTIN);
  const builtinOnly = BUILTIN_ONLY.filter((f) => flags.has(f));
  if (uri !== undefined) {
    if (builtinOnly.length) throw new UsageError(`--${builtinOnly[0].name} applies to --builtin, not --data`);
    return { source: { case: "uri", value: uri }, format: flags.get(FORMAT) };
  }
  if (name !== undefined) {
    if (flags.has(FORMAT)) throw new UsageError("--format applies to --data, not --builtin");
    const builtin = { name, split: flags.get(SPLIT), size: flags.get(SIZE), seed: flags.get(DATA_SEED), harmfulRatio: flags.get(RATIO) };
    return { source: { case: "builtin", value: builtin } };
  }
  const stray = [...builtinOnly, ...(flags.has(FORMAT) ? [FORMAT] : [])];
  if (required || stray.length) throw new UsageError("--data <uri> or --builtin <name> is required");
  return undefined;
}

const RANK = int("rank", "<r>", "LoRA rank (default 8).");
const ALPHA = float("alpha", "<a>", "LoRA alpha; the update is scaled by alpha/rank.");
const DROPOUT = float("dropout", "<p>", "Dropout on the adapter input, in [0, 1) (default 0.1).");
const TARGETS = text("targets", "<modules>", "Comma-separated modules to adapt, e.g. q_proj,v_proj (default all seven).");

export const LORA_FLAGS: Flag<unknown>[] = [RANK, ALPHA, DROPOUT, TARGETS];

/** Only what was given: unset fields take the server's documented defaults. */
function given<T extends Record<string, unknown>>(fields: T): T | undefined {
  return Object.values(fields).some((v) => v !== undefined && !(Array.isArray(v) && v.length === 0)) ? fields : undefined;
}

export function loraConfig(flags: FlagValues): MessageInitShape<typeof LoraConfigSchema> | undefined {
  return given({
    rank: flags.get(RANK),
    alpha: flags.get(ALPHA),
    dropout: flags.get(DROPOUT),
    targetModules: flags.get(TARGETS)?.split(",").map((s) => s.trim()) ?? [],
  });
}

const LR = float("lr", "<rate>", "Peak learning rate.");
const EPOCHS = int("epochs", "<n>", "Passes over the dataset (ignored with --max-steps).");
const MAX_STEPS = int("max-steps", "<n>", "Total optimizer steps.");
const BATCH_SIZE = int("batch-size", "<n>", "Examples per step (default 5).");
const MAX_SEQ_LEN = int("max-seq-len", "<n>", "Longest tokenized example (default 200).");
const WARMUP = float("warmup", "<ratio>", "Fraction of steps of linear warm-up (default 0.1).");
const WEIGHT_DECAY = float("weight-decay", "<w>", "AdamW weight decay (default 0.1).");
const GRAD_CLIP = float("grad-clip", "<norm>", "Global gradient-norm clip (default 1).");
const SEED = uint("seed", "<n>", "Seed for initialisation, dropout and data order (default 0).");
const CHECKPOINT_EVERY = int("checkpoint-every", "<n>", "Write a resumable training state every n steps (default 50).");

export const TRAINING_FLAGS: Flag<unknown>[] = [LR, EPOCHS, MAX_STEPS, BATCH_SIZE, MAX_SEQ_LEN, WARMUP, WEIGHT_DECAY, GRAD_CLIP, SEED, CHECKPOINT_EVERY];

export function trainingConfig(flags: FlagValues): MessageInitShape<typeof TrainingConfigSchema> | undefined {
  return given({
    learningRate: flags.get(LR),
    epochs: flags.get(EPOCHS),
    maxSteps: flags.get(MAX_STEPS),
    batchSize: flags.get(BATCH_SIZE),
    maxSequenceLength: flags.get(MAX_SEQ_LEN),
    warmupRatio: flags.get(WARMUP),
    weightDecay: flags.get(WEIGHT_DECAY),
    gradClip: flags.get(GRAD_CLIP),
    seed: flags.get(SEED),
    checkpointEvery: flags.get(CHECKPOINT_EVERY),
  });
}
