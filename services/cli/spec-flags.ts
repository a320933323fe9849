/** Flags that several commands take (checkpoint, moderation, dataset, adapter, training, alignment method, guard), and the messages they build. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { DatasetFormat, DatasetSplit, type DatasetRefSchema, type LoraConfigSchema, type TrainingConfigSchema } from "../../gen/vaccine/v1/common_pb.ts";
import type { AlignSpecSchema, FineTuneSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
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

const DATA = text("data", "<uri>", "Dataset in the store, store://datasets/<sha256> as `vaccine datasets upload` prints it.");
const FORMAT = choice("format", "<format>", "Row format of --data: alpaca, beavertails, refusal, sst2, agnews, gsm8k (default: the first row's).", DATASET_FORMATS);
const BUILTIN = text(
  "builtin",
  "<name>",
  "Built-in generated dataset: alignment, harmful, harmful-eval, moderation, sst2, agnews, agnews-hard, gsm8k, corpus, sst2-mix, agnews-mix, agnews-hard-mix, gsm8k-mix.",
);
const SPLIT = choice("split", "<split>", "Split of --builtin: train or test (default train; score task: test, the held-out examples).", SPLITS);
const SIZE = int("size", "<n>", "Examples drawn from --builtin (default: the dataset's size).");
const DATA_SEED = uint("data-seed", "<n>", "Generator seed of --builtin (default 0).");
const RATIO = float("ratio", "<p>", "Harmful fraction of a --builtin mixture, in [0, 1] (default 0.1).");
const BUILTIN_ONLY: Flag<unknown>[] = [SPLIT, SIZE, DATA_SEED, RATIO];

export const DATASET_FLAGS: Flag<unknown>[] = [DATA, FORMAT, BUILTIN, ...BUILTIN_ONLY];

/** The DatasetRef of --data or --builtin (of `split` unless --split says); undefined when neither is given and none is required. */
export function datasetRef(flags: FlagValues, required: boolean, split?: DatasetSplit): MessageInitShape<typeof DatasetRefSchema> | undefined {
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
    const builtin = { name, split: flags.get(SPLIT) ?? split, size: flags.get(SIZE), seed: flags.get(DATA_SEED), harmfulRatio: flags.get(RATIO) };
    return { source: { case: "builtin", value: builtin } };
  }
  const stray = [...builtinOnly, ...(flags.has(FORMAT) ? [FORMAT] : [])];
  if (required || stray.length) throw new UsageError("--data <uri> or --builtin <name> is required");
  return undefined;
}

const RANK = int("rank", "<r>", "LoRA rank (default 8).");
const ALPHA = float("alpha", "<a>", "LoRA alpha; the update is scaled by alpha/rank (default 4 for alignment, 1 for fine-tuning).");
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

const LR = float("lr", "<rate>", "Peak learning rate (default 1e-3 for alignment, 1e-5 for fine-tuning).");
const EPOCHS = int("epochs", "<n>", "Passes over the dataset (ignored with --max-steps; default 50 for alignment, 20 for fine-tuning).");
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

const GUARD = choice("guard", "<guard>", "Fine-tuning guard: lisa or safety-mix (default none).", { lisa: "lisa", "safety-mix": "safety-mix" } as const);
const ALIGNMENT_STEPS = int("alignment-steps", "<k1>", "Lisa: steps per cycle on the alignment data (default 100; 0 is plain fine-tuning).");
const USER_STEPS = int("user-steps", "<k2>", "Lisa: steps per cycle on the user data (default 900).");
const LISA_RHO = float("lisa-rho", "<rho>", "Lisa: strength of the proximal term towards the weights at the last switch (default 1).");
const MIX_FRACTION = float("mix-fraction", "<f>", "safety-mix: refusal examples added per user example, in [0, 1] (default 0.1).");
const GUARD_DATA = text("guard-data", "<uri>", "The guard's alignment dataset file in the store (default: the built-in alignment set).");
const GUARD_BUILTIN = text("guard-builtin", "<name>", "The guard's alignment dataset as a built-in name (default: alignment).");
const LISA_ONLY: Flag<unknown>[] = [ALIGNMENT_STEPS, USER_STEPS, LISA_RHO];

export const GUARD_FLAGS: Flag<unknown>[] = [GUARD, ...LISA_ONLY, MIX_FRACTION, GUARD_DATA, GUARD_BUILTIN];

/** FineTuneSpec.guard from --guard and its flags; a guard's flag without that guard is a usage error. */
export function guardOneof(flags: FlagValues): MessageInitShape<typeof FineTuneSpecSchema>["guard"] {
  flags.exclusive(GUARD_DATA, GUARD_BUILTIN);
  const guard = flags.get(GUARD);
  const misplaced = [...(guard === "lisa" ? [] : LISA_ONLY), ...(guard === "safety-mix" ? [] : [MIX_FRACTION]), ...(guard ? [] : [GUARD_DATA, GUARD_BUILTIN])];
  const stray = misplaced.find((f) => flags.has(f));
  if (stray) throw new UsageError(`--${stray.name} does not apply ${guard ? `to --guard ${guard}` : "without --guard"}`);
  if (guard === undefined) return undefined;
  const uri = flags.get(GUARD_DATA);
  const name = flags.get(GUARD_BUILTIN);
  const alignmentDataset =
    uri !== undefined ? { source: { case: "uri" as const, value: uri } } : name !== undefined ? { source: { case: "builtin" as const, value: { name } } } : undefined;
  if (guard === "safety-mix") return { case: "safetyMix", value: { fraction: flags.get(MIX_FRACTION), alignmentDataset } };
  return { case: "lisa", value: { alignmentSteps: flags.get(ALIGNMENT_STEPS), userSteps: flags.get(USER_STEPS), rho: flags.get(LISA_RHO), alignmentDataset } };
}

const METHODS = { sft: "sft", vaccine: "vaccine", "t-vaccine": "t-vaccine", booster: "booster", repnoise: "repnoise" } as const;
const METHOD = choice("method", "<method>", "sft, vaccine, t-vaccine, booster or repnoise (default vaccine here; the API's default, with no method set, is sft; docs/defences.md).", METHODS);
const RHO = float("rho", "<rho>", "vaccine, t-vaccine: bound on the perturbation norm (default 2 for vaccine, 3 for t-vaccine; 0 is SFT).");
const RHO_RELATIVE = float("rho-relative", "<f>", "vaccine: rho as a fraction in [0, 1] of the attention-output norm of the first alignment batch, instead of --rho.");
const TAU = int("tau", "<n>", "vaccine: recompute the perturbation every n steps (default 1).");
const LAYERS = int("layers", "<n>", "t-vaccine: layers perturbed and trained at a time (default 8, capped at the model's depth).");
const RESAMPLE_EVERY = int("resample-every", "<n>", "t-vaccine: steps between two draws of the layers (default 20).");
const PROBE_EVERY = int("probe-every", "<n>", "t-vaccine: steps between two probes of the layer probabilities on harmful data (default 200).");
const LAMBDA = float("lambda", "<l>", "booster: weight of the harmful-step attenuation term (default 5; 0 is SFT).");
const BOOSTER_ALPHA = float("booster-alpha", "<a>", "booster: length of the normalised harmful step in weight space (default 0.1).");
const REPNOISE_ALPHA = float("repnoise-alpha", "<a>", "repnoise: weight of the MMD between harmful hidden states and noise (default 1).");
const REPNOISE_BETA = float("repnoise-beta", "<b>", "repnoise: weight of the bounded ascent on harmful answers (default 0.001).");
const HARMFUL_DATA = text("harmful-data", "<uri>", "t-vaccine, booster, repnoise: harmful dataset file in the store (default: the built-in harmful set).");
const HARMFUL_BUILTIN = text("harmful-builtin", "<name>", "t-vaccine, booster, repnoise: harmful dataset as a built-in name (default: harmful).");

/** The flags each method takes besides --method; any other method's flag is a usage error. */
const METHOD_ONLY: Record<keyof typeof METHODS, Flag<unknown>[]> = {
  sft: [],
  vaccine: [RHO, RHO_RELATIVE, TAU],
  "t-vaccine": [RHO, LAYERS, RESAMPLE_EVERY, PROBE_EVERY, HARMFUL_DATA, HARMFUL_BUILTIN],
  booster: [LAMBDA, BOOSTER_ALPHA, HARMFUL_DATA, HARMFUL_BUILTIN],
  repnoise: [REPNOISE_ALPHA, REPNOISE_BETA, HARMFUL_DATA, HARMFUL_BUILTIN],
};

export const ALIGN_METHOD_FLAGS: Flag<unknown>[] = [METHOD, RHO, RHO_RELATIVE, TAU, LAYERS, RESAMPLE_EVERY, PROBE_EVERY, LAMBDA, BOOSTER_ALPHA, REPNOISE_ALPHA, REPNOISE_BETA, HARMFUL_DATA, HARMFUL_BUILTIN];

/** AlignSpec.method from --method (default vaccine) and its flags; unset fields take the server's defaults. */
export function alignMethodOneof(flags: FlagValues): MessageInitShape<typeof AlignSpecSchema>["method"] {
  flags.exclusive(HARMFUL_DATA, HARMFUL_BUILTIN);
  flags.exclusive(RHO, RHO_RELATIVE);
  const method = flags.get(METHOD) ?? "vaccine";
  const stray = ALIGN_METHOD_FLAGS.find((f) => f !== METHOD && flags.has(f) && !METHOD_ONLY[method].includes(f));
  if (stray) throw new UsageError(`--${stray.name} does not apply to --method ${method}`);
  const uri = flags.get(HARMFUL_DATA);
  const name = flags.get(HARMFUL_BUILTIN);
  const harmful =
    uri !== undefined ? { source: { case: "uri" as const, value: uri } } : name !== undefined ? { source: { case: "builtin" as const, value: { name } } } : undefined;
  switch (method) {
    case "sft":
      return { case: "sft", value: {} };
    case "vaccine":
      return { case: "vaccine", value: { rho: flags.get(RHO), rhoRelative: flags.get(RHO_RELATIVE), refreshEvery: flags.get(TAU) } };
    case "t-vaccine":
      return {
        case: "tVaccine",
        value: { rho: flags.get(RHO), layers: flags.get(LAYERS), resampleEvery: flags.get(RESAMPLE_EVERY), probeEvery: flags.get(PROBE_EVERY), probeDataset: harmful },
      };
    case "booster":
      return { case: "booster", value: { lambda: flags.get(LAMBDA), alpha: flags.get(BOOSTER_ALPHA), harmfulDataset: harmful } };
    case "repnoise":
      return { case: "repnoise", value: { alpha: flags.get(REPNOISE_ALPHA), beta: flags.get(REPNOISE_BETA), harmfulDataset: harmful } };
  }
}
