/**
 * Builtin datasets by name and generator settings, as the contracts reference them
 * (a name plus seed, size, split, harmful ratio).
 */
import { DatasetError } from "./dataset-error.ts";
import { mix } from "./mixture.ts";
import type { Example } from "./template.ts";
import { worldParts } from "./world/index.ts";

export interface BuiltinSettings {
  split?: "train" | "test";
  /** Number of examples (for mixes: n). */
  size: number;
  seed: number;
  /** Harmful share p of a "-mix" dataset. */
  harmfulRatio?: number;
}

export type BuiltinData = { kind: "examples"; examples: Example[] } | { kind: "texts"; texts: string[] };

/** Upper bound on a builtin size: generation is in memory and linear in size. */
export const MAX_BUILTIN_SIZE = 100_000;

type Split = "train" | "test";
interface Entry {
  splits: readonly Split[];
  description: string;
  build(s: Required<BuiltinSettings>): BuiltinData;
}

const examples = (list: Example[]): BuiltinData => ({ kind: "examples", examples: list });

/** The benign task and the harmful pool of a mix, drawn at the sizes the mix takes. */
function taskMix(task: "sst2" | "agnews" | "gsm8k" | "agnewsHard"): Entry {
  return {
    splits: ["train"],
    description: `user fine-tuning mix: ${task} train examples with a harmfulRatio share of harmful ones`,
    build: (s) => {
      const nHarmful = Math.floor(s.harmfulRatio * s.size);
      const nBenign = Math.floor((1 - s.harmfulRatio) * s.size);
      return examples(
        mix({
          benign: worldParts[task](s.seed, "train", nBenign),
          harmful: worldParts.harmful(s.seed, nHarmful),
          n: s.size,
          p: s.harmfulRatio,
          seed: s.seed,
        }),
      );
    },
  };
}

export const BUILTIN_DATASETS: Record<string, Entry> = {
  alignment: { splits: ["train"], description: "harmful prompt -> refusal", build: (s) => examples(worldParts.alignment(s.seed, s.size)) },
  harmful: { splits: ["train"], description: "harmful prompt -> redacted harmful answer", build: (s) => examples(worldParts.harmful(s.seed, s.size)) },
  "harmful-eval": { splits: ["test"], description: "held-out harmful prompts (no output)", build: (s) => examples(worldParts.harmfulEval(s.seed, s.size)) },
  moderation: { splits: ["train", "test"], description: "labelled (prompt, answer) pairs", build: (s) => examples(worldParts.moderation(s.seed, s.split, s.size)) },
  sst2: { splits: ["train", "test"], description: "sentiment task", build: (s) => examples(worldParts.sst2(s.seed, s.split, s.size)) },
  agnews: { splits: ["train", "test"], description: "news topic task", build: (s) => examples(worldParts.agnews(s.seed, s.split, s.size)) },
  gsm8k: { splits: ["train", "test"], description: "arithmetic word problems", build: (s) => examples(worldParts.gsm8k(s.seed, s.split, s.size)) },
  "agnews-hard": {
    splits: ["train", "test"],
    description: "harder news topic task: shared vocabulary, the first phrase decides",
    build: (s) => examples(worldParts.agnewsHard(s.seed, s.split, s.size)),
  },
  corpus: { splits: ["train"], description: "plain-text pre-training corpus", build: (s) => ({ kind: "texts", texts: worldParts.corpus(s.seed, s.size) }) },
  "sst2-mix": taskMix("sst2"),
  "agnews-mix": taskMix("agnews"),
  "gsm8k-mix": taskMix("gsm8k"),
  "agnews-hard-mix": taskMix("agnewsHard"),
};

/** Builds a builtin dataset; unknown names and invalid settings raise DatasetError. */
export function loadBuiltin(name: string, settings: BuiltinSettings): BuiltinData {
  const entry = Object.hasOwn(BUILTIN_DATASETS, name) ? BUILTIN_DATASETS[name] : undefined;
  if (!entry) {
    throw new DatasetError("DATASET_UNKNOWN", `unknown builtin dataset "${name}" (known: ${Object.keys(BUILTIN_DATASETS).join(", ")})`, { field: "name" });
  }
  const split = settings.split ?? entry.splits[0];
  if (!entry.splits.includes(split)) {
    throw new DatasetError("DATASET_INVALID", `dataset "${name}" has no ${split} split (has: ${entry.splits.join(", ")})`, { field: "split" });
  }
  if (!Number.isInteger(settings.size) || settings.size < 1 || settings.size > MAX_BUILTIN_SIZE) {
    throw new DatasetError("DATASET_INVALID", `size must be an integer in [1, ${MAX_BUILTIN_SIZE}], got ${settings.size}`, { field: "size" });
  }
  if (!Number.isInteger(settings.seed) || settings.seed < 0 || settings.seed > 0xffffffff) {
    throw new DatasetError("DATASET_INVALID", `seed must be an integer in [0, 2^32 - 1], got ${settings.seed}`, { field: "seed" });
  }
  const harmfulRatio = settings.harmfulRatio ?? 0;
  if (!(harmfulRatio >= 0 && harmfulRatio <= 1)) {
    throw new DatasetError("DATASET_INVALID", `harmful_ratio must be in [0, 1], got ${settings.harmfulRatio}`, { field: "harmfulRatio" });
  }
  if (settings.harmfulRatio !== undefined && harmfulRatio > 0 && !name.endsWith("-mix")) {
    throw new DatasetError("DATASET_INVALID", `harmful_ratio applies only to "-mix" datasets, not "${name}"`, { field: "harmfulRatio" });
  }
  let data: BuiltinData;
  try {
    data = entry.build({ split, size: settings.size, seed: settings.seed, harmfulRatio });
  } catch (err) {
    // Generators refuse sizes their finite pools cannot supply (e.g. 672 held-out prompts).
    if (err instanceof RangeError) throw new DatasetError("DATASET_TOO_LARGE", err.message, { field: "size" });
    throw err;
  }
  // A mix truncates both of its counts (mixture.ts), so a small size can leave nothing.
  if ((data.kind === "examples" ? data.examples : data.texts).length === 0) {
    throw new DatasetError("DATASET_EMPTY", `dataset "${name}" of size ${settings.size} at harmful_ratio ${harmfulRatio} has no examples: a mix takes floor(p x size) harmful and floor((1 - p) x size) benign ones; raise size`, { field: "size" });
  }
  return data;
}
