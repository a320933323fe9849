/**
 * The default store: a local directory.
 *   <root>/checkpoints/<hex>/manifest.json   the commit marker and digest source
 *   <root>/checkpoints/<hex>/files/...       the checkpoint folder
 *   <root>/<namespace>/<name>                named objects (datasets)
 *   <root>/.staging/<random>.<pid>@<host>/   writes in progress (never addressable); those of a
 *                                            process of this host that is gone are swept at start
 * A checkpoint is built complete under .staging and renamed into checkpoints/ in one step,
 * so an interrupted put leaves nothing visible.
 */
import { randomUUID } from "node:crypto";
import os from "node:os";
import { createReadStream, mkdirSync, realpathSync } from "node:fs";
import { type FileHandle, lstat, mkdir, open, readFile, readdir, realpath, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { assertInside, stageFolder, verifyFolder, writeHashed, writeSynced } from "./folder.ts";
import {
  type CheckpointManifest,
  MANIFEST_FILE,
  decodeManifest,
  encodeManifest,
  newManifest,
  sha256Hex,
} from "./manifest.ts";
import {
  CHECKPOINTS,
  type CheckpointCheckout,
  CheckpointNotFoundError,
  type CheckpointRef,
  type CheckpointStore,
  DEFAULT_MAX_OBJECT_BYTES,
  type ObjectInfo,
  type PutCheckpointOptions,
  type ReadObjectOptions,
  StoreObjectNotFoundError,
  STORE_SCHEME,
  StoreObjectTooLargeError,
  type StoredObject,
  checkpointHex,
  checkpointRef,
  isObjectUri,
  objectFolderKey,
  objectKey,
} from "./store.ts";
import { sweepStale } from "../stale-temp.ts";

const STAGING = ".staging";
const FILES = "files";
// Staging folders are named after their host and process: a crash's are this host's to sweep,
// never those of a process on another host sharing the store.
const HOST = os.hostname().replace(/[^A-Za-z0-9.-]/g, "_");
const OURS = new RegExp(`\\.(\\d+)@${HOST.replace(/\./g, "\\.")}$`);

export class LocalCheckpointStore implements CheckpointStore {
  /** The real path of the root: containment checks compare real paths. */
  readonly root: string;

  constructor(root: string) {
    mkdirSync(root, { recursive: true });
    this.root = realpathSync(root);
  }

  async put(localDir: string, options: PutCheckpointOptions): Promise<CheckpointRef> {
    const staging = await this.newStaging();
    try {
      const files = await stageFolder(localDir, join(staging, FILES));
      const bytes = encodeManifest(newManifest(options, files));
      const hex = sha256Hex(bytes);
      await writeSynced(join(staging, MANIFEST_FILE), bytes);
      const checkpoints = join(this.root, CHECKPOINTS);
      await mkdir(checkpoints, { recursive: true });
      const ref = checkpointRef(hex);
      if (await this.exists(ref)) return ref;
      try {
        await rename(staging, join(checkpoints, hex));
      } catch (err) {
        // A concurrent put of the same content won the rename: same bytes, same ref.
        if (!(await this.exists(ref))) throw err;
      }
      await syncDir(checkpoints);
      return ref;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  async get(ref: CheckpointRef): Promise<CheckpointCheckout> {
    const { dir, manifest } = await this.loadManifest(ref);
    return { dir: await verifyFolder(join(dir, FILES), manifest, this.root), manifest };
  }

  async exists(ref: CheckpointRef): Promise<boolean> {
    const dir = join(this.root, CHECKPOINTS, checkpointHex(ref));
    const real = await realpath(join(dir, MANIFEST_FILE)).catch(() => undefined);
    if (real === undefined) return false;
    assertInside(this.root, real);
    return (await lstat(real)).isFile();
  }

  async list(): Promise<CheckpointRef[]> {
    const names = await readdir(join(this.root, CHECKPOINTS)).catch(() => [] as string[]);
    const refs: CheckpointRef[] = [];
    for (const name of names.sort()) {
      if (!/^[0-9a-f]{64}$/.test(name)) continue;
      const ref = checkpointRef(name);
      if (await this.exists(ref)) refs.push(ref);
    }
    return refs;
  }

  async readManifest(ref: CheckpointRef): Promise<CheckpointManifest> {
    return (await this.loadManifest(ref)).manifest;
  }

  async committedAt(ref: CheckpointRef): Promise<Date> {
    const { dir } = await this.loadManifest(ref);
    // The manifest is written once, in staging, just before the commit rename.
    return (await lstat(join(dir, MANIFEST_FILE))).mtime;
  }

  async delete(ref: CheckpointRef): Promise<void> {
    // Renamed out of checkpoints/ in one step, so it is never seen half removed.
    const doomed = await this.newStaging();
    try {
      await rename(join(this.root, CHECKPOINTS, checkpointHex(ref)), join(doomed, "deleted")).catch(ignoreGone);
      await syncDir(join(this.root, CHECKPOINTS)).catch(ignoreGone);
    } finally {
      await rm(doomed, { recursive: true, force: true });
    }
  }

  async putObject(uri: string, data: Uint8Array): Promise<StoredObject> {
    const segments = objectKey(uri).split("/");
    const parent = await this.makeDirsInside(segments.slice(0, -1));
    const staging = await this.newStaging();
    try {
      const temp = join(staging, "object");
      await writeSynced(temp, data);
      await rename(temp, join(parent, segments[segments.length - 1]));
      await syncDir(parent);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
    return { uri, size: data.byteLength, sha256: sha256Hex(data) };
  }

  async readObject(uri: string, options: ReadObjectOptions = {}): Promise<Buffer> {
    const handle = await this.openObject(uri);
    try {
      const { size } = await handle.stat();
      const limit = options.maxBytes ?? DEFAULT_MAX_OBJECT_BYTES;
      if (size > limit) throw new StoreObjectTooLargeError(`${uri} is ${size} bytes, over the ${limit}-byte limit`);
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  }

  async putObjectFile(uri: string, path: string): Promise<StoredObject> {
    const segments = objectKey(uri).split("/");
    const parent = await this.makeDirsInside(segments.slice(0, -1));
    const staging = await this.newStaging();
    try {
      const temp = join(staging, "object");
      const { sha256, size } = await writeHashed(createReadStream(path), temp);
      await rename(temp, join(parent, segments[segments.length - 1]));
      await syncDir(parent);
      return { uri, size, sha256 };
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  async readObjectStream(uri: string): Promise<Readable> {
    // The stream owns the handle and closes it when it ends or is destroyed.
    return (await this.openObject(uri)).createReadStream();
  }

  async listObjects(folderUri: string): Promise<ObjectInfo[]> {
    const prefix = objectFolderKey(folderUri);
    const dir = await realpath(join(this.root, ...prefix.slice(0, -1).split("/"))).catch(() => undefined);
    if (dir === undefined) return [];
    assertInside(this.root, dir);
    const found: ObjectInfo[] = [];
    await listObjectFiles(dir, `${STORE_SCHEME}${prefix}`, found);
    return found.sort((a, b) => (a.uri < b.uri ? -1 : 1));
  }

  async deleteObject(uri: string): Promise<void> {
    const real = await realpath(join(this.root, ...objectKey(uri).split("/"))).catch(ignoreGone);
    if (real === undefined) return;
    assertInside(this.root, real);
    // Another caller may delete it between these steps: gone is what was asked.
    const info = await lstat(real).catch(ignoreGone);
    if (info === undefined) return;
    if (!info.isFile()) throw new StoreObjectNotFoundError(uri, "is not an object");
    await rm(real).catch(ignoreGone);
    await syncDir(dirname(real));
  }

  /** Opens an object's file for reading, refusing anything that is not a regular file inside the root. */
  private async openObject(uri: string): Promise<FileHandle> {
    const path = join(this.root, ...objectKey(uri).split("/"));
    const real = await realpath(path).catch(() => {
      throw new StoreObjectNotFoundError(uri);
    });
    assertInside(this.root, real);
    // Deleted since realpath (a concurrent delete): as absent as before it.
    const handle = await open(real, "r").catch((err: NodeJS.ErrnoException) => {
      throw err.code === "ENOENT" ? new StoreObjectNotFoundError(uri) : err;
    });
    if (!(await handle.stat()).isFile()) {
      await handle.close();
      throw new StoreObjectNotFoundError(uri, "is not a file");
    }
    return handle;
  }

  private async loadManifest(ref: CheckpointRef): Promise<{ dir: string; manifest: CheckpointManifest }> {
    const hex = checkpointHex(ref);
    const notFound = () => {
      throw new CheckpointNotFoundError(`checkpoint ${ref.uri} does not exist`);
    };
    const dir = await realpath(join(this.root, CHECKPOINTS, hex)).catch(notFound);
    assertInside(this.root, dir);
    const manifestPath = await realpath(join(dir, MANIFEST_FILE)).catch(notFound);
    assertInside(this.root, manifestPath);
    return { dir, manifest: decodeManifest(await readFile(manifestPath), hex) };
  }

  /**
   * Removes the staging folders of this host's processes that are gone (a crash mid-write).
   * Once per process, at its start: a worker thread's store shares the process's pid.
   */
  async sweepStaging(): Promise<void> {
    await sweepStale(join(this.root, STAGING), OURS, new Set());
  }

  private async newStaging(): Promise<string> {
    const dir = join(this.root, STAGING, `${randomUUID()}.${process.pid}@${HOST}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** Creates the folders one level at a time, so a symlinked folder can never lead mkdir outside. */
  private async makeDirsInside(segments: string[]): Promise<string> {
    let dir = this.root;
    for (const segment of segments) {
      await mkdir(join(dir, segment)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw err;
      });
      dir = await realpath(join(dir, segment));
      assertInside(this.root, dir);
    }
    return dir;
  }
}

/** undefined for ENOENT (the file went in the meantime), the error otherwise. */
function ignoreGone(err: NodeJS.ErrnoException): undefined {
  if (err.code === "ENOENT") return undefined;
  throw err;
}

/** Regular files below dir, as URIs under uriPrefix; symlinks and names no URI can hold are skipped. */
async function listObjectFiles(dir: string, uriPrefix: string, found: ObjectInfo[]): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const uri = uriPrefix + entry.name;
    if (entry.isDirectory()) {
      await listObjectFiles(join(dir, entry.name), `${uri}/`, found);
    } else if (entry.isFile() && isObjectUri(uri)) {
      const info = await stat(join(dir, entry.name)).catch(() => undefined);
      // A file deleted while listing is simply not listed.
      if (info) found.push({ uri, size: info.size, modified: info.mtime });
    }
  }
}

/** Makes a rename durable: the new directory entry is only on disk once its folder is synced. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
