// The shipped checkpoints: seeded into a store, and their refs computable without one.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { builtinRef, seedBuiltins } from "../../services/runtime/pipeline/builtins.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";

describe("built-in checkpoints", () => {
  it("are all shipped, and builtinRef computes exactly the ref the store gives them", async () => {
    const root = mkdtempSync(join(tmpdir(), "vaccine-builtins-"));
    try {
      const store = new LocalCheckpointStore(root);
      const seeded = await seedBuiltins(store);
      expect(Object.keys(seeded).sort()).toEqual(["base", "moderation", "refusal"]);
      expect(builtinRef("base")).toEqual(seeded.base);
      expect(builtinRef("moderation")).toEqual(seeded.moderation);
      expect(builtinRef("refusal")).toEqual(seeded.refusal);
      expect((await store.readManifest(seeded.moderation!)).kind).toBe("moderation");
      // The refusal classifier is a moderation-format checkpoint (one label, "refusal").
      expect((await store.readManifest(seeded.refusal!)).kind).toBe("moderation");
      // Idempotent: seeding again gives the same refs.
      expect(await seedBuiltins(store)).toEqual(seeded);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
