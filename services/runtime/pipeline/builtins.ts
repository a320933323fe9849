/**
 * The checkpoints shipped in the repository (models/base, the tiny unaligned base model;
 * models/moderation, the moderation classifier; models/refusal, the refusal classifier of
 * the answer classes, a moderation-format checkpoint), put into the store at start so requests
 * can name them by reference. Content-addressed, so their refs are the same everywhere.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { encodeManifest, newManifest, sha256Hex, type ManifestFile } from "../store/manifest.ts";
import { CheckpointIntegrityError, checkpointRef, type CheckpointRef, type CheckpointStore } from "../store/store.ts";
import { MODELS_DIR } from "../models-dir.ts";
import { KIND } from "./kinds.ts";

export const BUILTIN_CHECKPOINTS = {
  base: { dir: join(MODELS_DIR, "base"), kind: KIND.model },
  moderation: { dir: join(MODELS_DIR, "moderation"), kind: KIND.moderation },
  refusal: { dir: join(MODELS_DIR, "refusal"), kind: KIND.moderation },
} as const;

export type BuiltinRefs = Partial<Record<keyof typeof BUILTIN_CHECKPOINTS, CheckpointRef>>;

const optionsOf = (name: string, kind: string) => ({ kind, meta: { name: `builtin/${name}` } });
const present = (dir: string) => existsSync(join(dir, "config.json"));

/**
 * Puts each shipped checkpoint that is present into the store (idempotent), and stores again
 * one whose stored copy no longer matches its digest: a shipped checkpoint cannot be deleted
 * (CHECKPOINT_BUILTIN), so a damaged copy would otherwise answer DATA_LOSS until someone
 * removed its files by hand. `onRepaired` hears each one stored again, and why.
 */
export async function seedBuiltins(store: CheckpointStore, onRepaired: (name: string, why: string) => void = () => {}): Promise<BuiltinRefs> {
  const refs: BuiltinRefs = {};
  for (const [name, { dir, kind }] of Object.entries(BUILTIN_CHECKPOINTS)) {
    if (!present(dir)) continue;
    const ref = await store.put(dir, optionsOf(name, kind));
    // The files are checked against the manifest, and the manifest against the ref.
    const damage = await store.get(ref).then(
      () => undefined,
      (err: unknown) => {
        if (err instanceof CheckpointIntegrityError) return err.message;
        throw err;
      },
    );
    if (damage !== undefined) {
      await store.delete(ref);
      await store.put(dir, optionsOf(name, kind));
      onRepaired(name, damage);
    }
    refs[name as keyof BuiltinRefs] = ref;
  }
  return refs;
}

/**
 * The ref a shipped checkpoint has in every store, computed from its files without a store
 * (what put() would return), so clients can name it: `builtin:base` in the CLI.
 */
export function builtinRef(name: keyof typeof BUILTIN_CHECKPOINTS): CheckpointRef | undefined {
  const { dir, kind } = BUILTIN_CHECKPOINTS[name];
  if (!present(dir)) return undefined;
  const files: Record<string, ManifestFile> = {};
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) walk(path);
      else {
        const data = readFileSync(join(dir, path));
        files[path] = { sha256: sha256Hex(data), size: data.length };
      }
    }
  };
  walk("");
  return checkpointRef(sha256Hex(encodeManifest(newManifest(optionsOf(name, kind), files))));
}
