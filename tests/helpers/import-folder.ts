// The messages of a checkpoint import (CheckpointService.ImportCheckpoint, a client stream) made
// from a folder, as a client sends them: the metadata, then each file in chunks.
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { CheckpointType, ImportCheckpointRequest } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import type { CheckpointRef } from "../../services/runtime/store/store.ts";

/** Every file of a folder, relative paths, sorted. */
export async function filesOf(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const entry of (await readdir(join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const path = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await filesOf(dir, path)));
    else out.push(path);
  }
  return out;
}

export type Meta = { type: CheckpointType; base?: CheckpointRef; displayName?: string };
export const meta = (m: Meta): ImportCheckpointRequest => ({ content: { case: "metadata", value: m } }) as ImportCheckpointRequest;
export const chunk = (path: string, data: Uint8Array): ImportCheckpointRequest => ({ content: { case: "chunk", value: { path, data } } }) as ImportCheckpointRequest;

/** The messages of a folder's import: metadata, then each file in chunks. */
export async function* folderMessages(dir: string, m: Meta, chunkBytes = 64 * 1024): AsyncGenerator<ImportCheckpointRequest> {
  yield meta(m);
  for (const path of await filesOf(dir)) {
    const bytes = await readFile(join(dir, ...path.split("/")));
    if (bytes.byteLength === 0) yield chunk(path, bytes);
    for (let i = 0; i < bytes.byteLength; i += chunkBytes) yield chunk(path, bytes.subarray(i, i + chunkBytes));
  }
}
