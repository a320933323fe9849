import { describe, expect, it } from "vitest";
import { BUILTIN_DATASETS, loadBuiltin } from "../../services/runtime/data/builtin.ts";
import { DatasetError } from "../../services/runtime/data/dataset-error.ts";

const examples = (name: string, s: Parameters<typeof loadBuiltin>[1]) => {
  const d = loadBuiltin(name, s);
  if (d.kind !== "examples") throw new Error("expected examples");
  return d.examples;
};

describe("builtin datasets", () => {
  it("builds every dataset at the requested size", () => {
    for (const name of Object.keys(BUILTIN_DATASETS)) {
      const d = loadBuiltin(name, { size: 40, seed: 1, harmfulRatio: name.endsWith("-mix") ? 0.1 : undefined });
      expect(d.kind === "texts" ? d.texts.length : d.examples.length, name).toBe(40);
    }
    expect(loadBuiltin("corpus", { size: 5, seed: 1 }).kind).toBe("texts");
  });

  it("mixes int(p*n) harmful examples into a task", () => {
    const mix = examples("sst2-mix", { size: 1000, seed: 2, harmfulRatio: 0.05 });
    expect(mix.length).toBe(1000);
    expect(mix.filter((e) => e.harmful).length).toBe(50);
    expect(JSON.stringify(examples("sst2-mix", { size: 1000, seed: 2, harmfulRatio: 0.05 }))).toBe(JSON.stringify(mix));
  });

  it("serves test splits where they exist", () => {
    const train = examples("gsm8k", { size: 50, seed: 1, split: "train" });
    const test = examples("gsm8k", { size: 50, seed: 1, split: "test" });
    const seen = new Set(train.map((e) => e.instruction));
    expect(test.some((e) => seen.has(e.instruction))).toBe(false);
  });

  const invalid: [string, Parameters<typeof loadBuiltin>[1], string, string][] = [
    ["nope", { size: 1, seed: 1 }, "DATASET_UNKNOWN", "name"],
    ["alignment", { size: 1, seed: 1, split: "test" }, "DATASET_INVALID", "split"],
    ["sst2", { size: 0, seed: 1 }, "DATASET_INVALID", "size"],
    ["sst2", { size: 1.5, seed: 1 }, "DATASET_INVALID", "size"],
    ["sst2", { size: 1, seed: -1 }, "DATASET_INVALID", "seed"],
    ["sst2-mix", { size: 10, seed: 1, harmfulRatio: 1.5 }, "DATASET_INVALID", "harmfulRatio"],
    ["sst2", { size: 10, seed: 1, harmfulRatio: 0.1 }, "DATASET_INVALID", "harmfulRatio"],
    ["harmful-eval", { size: 5000, seed: 1 }, "DATASET_TOO_LARGE", "size"],
    // floor(0.1 x 1) harmful + floor(0.9 x 1) benign: nothing.
    ["sst2-mix", { size: 1, seed: 1, harmfulRatio: 0.1 }, "DATASET_EMPTY", "size"],
    ["toString", { size: 1, seed: 1 }, "DATASET_UNKNOWN", "name"],
  ];
  it.each(invalid)("refuses %s %j with %s on %s", (name, settings, reason, field) => {
    try {
      loadBuiltin(name, settings);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(DatasetError);
      expect((err as DatasetError).reason).toBe(reason);
      expect((err as DatasetError).field).toBe(field);
      // Messages name fields as the contract does (harmful_ratio), never the runtime's camelCase.
      expect((err as DatasetError).message).not.toMatch(/harmfulRatio/);
    }
  });
});
