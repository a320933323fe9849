// The shipped checkpoints: seeded into a store, and their refs computable without one.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { builtinRef, seedBuiltins } from "../../services/runtime/pipeline/builtins.ts";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import { CheckpointIntegrityError, checkpointHex } from "../../services/runtime/store/store.ts";

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

  it("stores again a shipped checkpoint whose stored copy was damaged (a file or the manifest), and says so", async () => {
    const root = mkdtempSync(join(tmpdir(), "vaccine-builtins-"));
    try {
      const store = new LocalCheckpointStore(root);
      const seeded = await seedBuiltins(store);
      const folder = join(root, "checkpoints", checkpointHex(seeded.base!));
      const weights = join(folder, "files", "model.safetensors");
      const bytes = readFileSync(weights);
      bytes[bytes.length - 1] ^= 0xff;
      writeFileSync(weights, bytes);
      await expect(store.get(seeded.base!)).rejects.toBeInstanceOf(CheckpointIntegrityError);
      const repaired: [string, string][] = [];
      expect(await seedBuiltins(store, (name, why) => repaired.push([name, why]))).toEqual(seeded);
      expect(repaired).toEqual([["base", expect.stringContaining("model.safetensors has sha256")]]);
      await store.get(seeded.base!);
      // A manifest that no longer hashes to the ref.
      writeFileSync(join(folder, "manifest.json"), readFileSync(join(folder, "manifest.json"), "utf8") + " ");
      repaired.length = 0;
      expect(await seedBuiltins(store, (name, why) => repaired.push([name, why]))).toEqual(seeded);
      expect(repaired).toEqual([["base", expect.stringContaining("hashes to")]]);
      await store.get(seeded.base!);
      // Nothing damaged, nothing stored again.
      repaired.length = 0;
      await seedBuiltins(store, (name, why) => repaired.push([name, why]));
      expect(repaired).toEqual([]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
