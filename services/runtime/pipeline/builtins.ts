/**
 * The checkpoints shipped in the repository (models/base, the tiny unaligned base model;
 * models/moderation, the moderation classifier), put into the store at start so requests
 * can name them by reference. Content-addressed, so their refs are the same everywhere.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import { KIND } from "./load.ts";

export const BUILTIN_CHECKPOINTS = {
  base: { dir: fileURLToPath(new URL("../../../models/base/", import.meta.url)), kind: KIND.model },
  moderation: { dir: fileURLToPath(new URL("../../../models/moderation/", import.meta.url)), kind: KIND.moderation },
} as const;

export type BuiltinRefs = Partial<Record<keyof typeof BUILTIN_CHECKPOINTS, CheckpointRef>>;

/** Puts each shipped checkpoint that is present into the store (idempotent). */
export async function seedBuiltins(store: CheckpointStore): Promise<BuiltinRefs> {
  const refs: BuiltinRefs = {};
  for (const [name, { dir, kind }] of Object.entries(BUILTIN_CHECKPOINTS)) {
    if (!existsSync(`${dir}/config.json`)) continue;
    refs[name as keyof BuiltinRefs] = await store.put(dir, { kind, meta: { name: `builtin/${name}` } });
  }
  return refs;
}
