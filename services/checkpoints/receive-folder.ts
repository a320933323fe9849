/**
 * The file chunks of an ImportCheckpoint call written into a folder as they arrive: each
 * chunk is awaited on disk before the next is read (a fast client cannot outrun the disk,
 * and memory holds one chunk), paths are checked before anything is created, and the size
 * limits are enforced on the bytes received so far, not after the fact.
 */
import { createHash, type Hash } from "node:crypto";
import { type FileHandle, mkdir, open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Code } from "@connectrpc/connect";
import type { ImportCheckpointRequest } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import type { UploadLimits } from "../common/deps.ts";
import { invalidArgument, rpcError } from "../platform/errors.ts";
import type { ManifestFile } from "../runtime/store/manifest.ts";
import { validateRelativePath } from "../runtime/store/store.ts";
import { notAChunk } from "../platform/validate.ts";

/** The contract's bound on one chunk message. */
const MAX_CHUNK_BYTES = 4 * 1024 * 1024;
/** Longest path in a folder, and longest name in it (most file systems' own limit). */
const MAX_PATH_CHARS = 1024;
const MAX_NAME_BYTES = 255;
/** Most files in one folder: real checkpoints have tens, and each file costs an inode whatever its size. */
const MAX_FILES = 10_000;

/**
 * Writes every chunk message after the metadata into dir (which must be empty); resolves the
 * bytes received and each file's sha256 and size, by path (the store's manifest entries).
 * `admitted` is told the bytes received so far after each chunk, and throws to stop (a quota).
 */
export async function receiveFolder(
  messages: AsyncIterator<ImportCheckpointRequest>,
  dir: string,
  limits: Pick<UploadLimits, "maxFileBytes" | "maxCheckpointBytes">,
  admitted: (bytes: number) => Promise<void> = async () => {},
): Promise<{ bytes: number; files: Record<string, ManifestFile> }> {
  const files = new Map<string, ManifestFile>();
  const folders = new Set<string>();
  let current: { path: string; handle: FileHandle; size: number; hash: Hash } | undefined;
  const finish = (file: NonNullable<typeof current>) => files.set(file.path, { sha256: file.hash.digest("hex"), size: file.size });
  let bytes = 0;
  try {
    for (let next = await messages.next(); !next.done; next = await messages.next()) {
      const content = next.value.content;
      if (content.case !== "chunk") {
        throw notAChunk(content.case);
      }
      const { path, data } = content.value;
      if (data.byteLength > MAX_CHUNK_BYTES) {
        throw invalidArgument([{ field: "chunk.data", description: `is ${data.byteLength} bytes; at most ${MAX_CHUNK_BYTES} per message` }]);
      }
      if (current?.path !== path) {
        if (current) {
          await current.handle.close();
          finish(current);
          current = undefined;
        }
        if (files.size >= MAX_FILES) throw tooLarge(`the checkpoint has more than ${MAX_FILES} files`, { limit: "max_files", limit_files: String(MAX_FILES), file: path });
        const segments = checkPath(path, files, folders);
        const target = join(dir, ...segments);
        await mkdir(dirname(target), { recursive: true });
        current = { path, handle: await open(target, "wx"), size: 0, hash: createHash("sha256") };
      }
      current.size += data.byteLength;
      bytes += data.byteLength;
      if (current.size > limits.maxFileBytes) {
        throw tooLarge(`file ${path} is over the ${limits.maxFileBytes}-byte limit on one file of a checkpoint`, { limit: "max_file_bytes", limit_bytes: String(limits.maxFileBytes), file: path });
      }
      if (bytes > limits.maxCheckpointBytes) {
        throw tooLarge(`the checkpoint is over the ${limits.maxCheckpointBytes}-byte limit on all its files`, { limit: "max_checkpoint_bytes", limit_bytes: String(limits.maxCheckpointBytes), file: path });
      }
      await admitted(bytes);
      current.hash.update(data);
      await current.handle.write(data);
    }
    if (current) finish(current);
  } finally {
    await current?.handle.close();
  }
  if (files.size === 0) throw invalidArgument([{ field: "chunk", description: "no files were sent" }]);
  return { bytes, files: Object.fromEntries(files) };
}

/**
 * A path's segments once it is known to be relative, normalised and confined: no "..",
 * ".", empty segments, leading "/", backslashes, NUL or other control characters, and no
 * clash with a file or folder already received. Refusals name the path.
 */
function checkPath(path: string, finished: ReadonlyMap<string, ManifestFile>, folders: Set<string>): string[] {
  const refuse = (why: string): never => {
    throw invalidArgument([{ field: "chunk.path", description: `${JSON.stringify(path)}: ${why}` }]);
  };
  if (finished.has(path)) refuse("continues after another file started; send each file's chunks together");
  if (path.length > MAX_PATH_CHARS) refuse(`is longer than ${MAX_PATH_CHARS} characters`);
  let segments: string[] = [];
  try {
    segments = validateRelativePath(path);
  } catch (err) {
    // The store's own rule for manifest paths, so whatever is received can be stored.
    refuse((err as Error).message.replace(/^"(?:[^"\\]|\\.)*": /, ""));
  }
  if (segments.some((s) => Buffer.byteLength(s) > MAX_NAME_BYTES)) refuse(`has a name longer than ${MAX_NAME_BYTES} bytes`);
  if (folders.has(path)) refuse("is already a folder of this checkpoint");
  for (let i = 1; i < segments.length; i++) {
    const prefix = segments.slice(0, i).join("/");
    if (finished.has(prefix)) refuse(`${prefix} is already a file of this checkpoint`);
    folders.add(prefix);
  }
  return segments;
}

/** RESOURCE_EXHAUSTED; the metadata names the limit passed, its value, and the file being received. */
function tooLarge(message: string, metadata: Record<string, string>) {
  return rpcError(Code.ResourceExhausted, "CHECKPOINT_TOO_LARGE", message, metadata);
}
