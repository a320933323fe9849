/** Local folder work shared by the store backends: staging copies, verification, containment. */
import { createReadStream, createWriteStream } from "node:fs";
import { lstat, mkdir, open, readdir, realpath, stat } from "node:fs/promises";
import { join, sep } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { type CheckpointManifest, HashingStream, type ManifestFile, hashFile } from "./manifest.ts";
import {
  CheckpointIntegrityError,
  InvalidCheckpointSourceError,
  StorePathEscapeError,
  validateRelativePath,
} from "./store.ts";

/**
 * Copies srcDir into destDir (created) and returns the manifest files. The hashes come from
 * the bytes written, so a source changing mid-copy can never disagree with its manifest.
 * Symlinks to files are followed (Hugging Face caches are made of them); symlinks to
 * directories and special files are refused.
 */
export async function stageFolder(srcDir: string, destDir: string): Promise<Record<string, ManifestFile>> {
  const info = await stat(srcDir).catch(() => undefined);
  if (!info?.isDirectory()) throw new InvalidCheckpointSourceError(`${srcDir} is not a readable folder`);
  await mkdir(destDir, { recursive: true });
  // Storing a folder that holds the store itself would copy the copy forever.
  const [realSrc, realDest] = await Promise.all([realpath(srcDir), realpath(destDir)]);
  if (realDest.startsWith(realSrc + sep)) {
    throw new InvalidCheckpointSourceError(`${srcDir} contains the store's own folder ${destDir}`);
  }
  const files: Record<string, ManifestFile> = {};
  await copyTree(srcDir, destDir, "", files);
  return files;
}

async function copyTree(src: string, dest: string, rel: string, files: Record<string, ManifestFile>): Promise<void> {
  const entries = (await readdir(src, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const entry of entries) {
    const relPath = rel === "" ? entry.name : `${rel}/${entry.name}`;
    const from = join(src, entry.name);
    const to = join(dest, entry.name);
    try {
      validateRelativePath(relPath);
    } catch {
      throw new InvalidCheckpointSourceError(`${from}: this file name cannot be stored`);
    }
    let kind: { isFile(): boolean; isDirectory(): boolean } = entry;
    if (entry.isSymbolicLink()) {
      kind = await stat(from).catch((err: unknown) => {
        throw new InvalidCheckpointSourceError(`${from} is a dangling symlink or vanished`, { cause: err });
      });
      if (kind.isDirectory()) throw new InvalidCheckpointSourceError(`${from} is a symlink to a folder`);
    }
    if (kind.isDirectory()) {
      await mkdir(to);
      await copyTree(from, to, relPath, files);
    } else if (kind.isFile()) {
      files[relPath] = await writeHashed(createReadStream(from), to);
    } else {
      throw new InvalidCheckpointSourceError(`${from} is not a regular file or folder`);
    }
  }
}

/** Writes a stream to a new file (never overwriting), fsynced, and returns its sha256 and size. */
export async function writeHashed(source: Readable, path: string): Promise<ManifestFile> {
  const hasher = new HashingStream();
  // flush: fsync before close, so a later rename never commits a half-written file.
  await pipeline(source, hasher, createWriteStream(path, { flags: "wx", flush: true }));
  return hasher.result();
}

/** Writes a new file and fsyncs it, so a later rename never commits a half-written file. */
export async function writeSynced(path: string, data: Uint8Array): Promise<void> {
  const handle = await open(path, "wx");
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Checks that dir holds exactly the manifest's files with their sizes and hashes, and
 * nothing that leads outside root. Returns the folder's real path.
 */
export async function verifyFolder(dir: string, manifest: CheckpointManifest, root: string): Promise<string> {
  const real = await realpath(dir).catch(() => {
    throw new CheckpointIntegrityError(`checkpoint folder ${dir} is missing`);
  });
  assertInside(root, real);
  const found = new Set<string>();
  await listFiles(real, "", found, root);
  for (const [path, expected] of Object.entries(manifest.files)) {
    if (!found.delete(path)) throw new CheckpointIntegrityError(`file ${path} is missing from ${dir}`);
    const actual = await hashFile(join(real, ...path.split("/")));
    if (actual.size !== expected.size) {
      throw new CheckpointIntegrityError(`file ${path} is ${actual.size} bytes, the manifest says ${expected.size}`);
    }
    if (actual.sha256 !== expected.sha256) {
      throw new CheckpointIntegrityError(`file ${path} has sha256 ${actual.sha256}, the manifest says ${expected.sha256}`);
    }
  }
  if (found.size > 0) {
    throw new CheckpointIntegrityError(`files not in the manifest: ${[...found].sort().join(", ")}`);
  }
  return real;
}

/** Throws unless realPath (already resolved) is root itself or inside it. */
export function assertInside(root: string, realPath: string): void {
  if (realPath !== root && !realPath.startsWith(root + sep)) {
    throw new StorePathEscapeError(`${realPath} is outside the store root ${root}`);
  }
}

async function listFiles(dir: string, rel: string, found: Set<string>, root: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const relPath = rel === "" ? entry.name : `${rel}/${entry.name}`;
    const path = join(dir, entry.name);
    if (entry.isSymbolicLink()) {
      // The store never writes symlinks: one leading out is an attack, any other is tampering.
      const target = await realpath(path).catch(() => path);
      if (target !== path) assertInside(root, target);
      throw new CheckpointIntegrityError(`${relPath} is a symlink`);
    }
    if (entry.isDirectory()) await listFiles(path, relPath, found, root);
    else if ((await lstat(path)).isFile()) found.add(relPath);
    else throw new CheckpointIntegrityError(`${relPath} is not a regular file`);
  }
}
