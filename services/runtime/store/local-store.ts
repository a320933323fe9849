/**
 * The default store: a local directory.
 *   <root>/checkpoints/<hex>/manifest.json   the commit marker and digest source
 *   <root>/checkpoints/<hex>/files/...       the checkpoint folder
 *   <root>/<namespace>/<name>                named objects (datasets)
 *   <root>/.staging/<random>/                writes in progress (never addressable)
 * A checkpoint is built complete under .staging and renamed into checkpoints/ in one step,
 * so an interrupted put leaves nothing visible.
 */
import { randomUUID } from "node:crypto";
import { mkdirSync, realpathSync } from "node:fs";
import { lstat, mkdir, open, readFile, readdir, realpath, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { assertInside, stageFolder, verifyFolder, writeSynced } from "./folder.ts";
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
  type PutCheckpointOptions,
  type ReadObjectOptions,
  StoreObjectNotFoundError,
  StoreObjectTooLargeError,
  type StoredObject,
  checkpointHex,
  checkpointRef,
  objectKey,
} from "./store.ts";

const STAGING = ".staging";
const FILES = "files";

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
    const path = join(this.root, ...objectKey(uri).split("/"));
    const real = await realpath(path).catch(() => {
      throw new StoreObjectNotFoundError(`${uri} does not exist`);
    });
    assertInside(this.root, real);
    const handle = await open(real, "r");
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw new StoreObjectNotFoundError(`${uri} is not a file`);
      const limit = options.maxBytes ?? DEFAULT_MAX_OBJECT_BYTES;
      if (info.size > limit) throw new StoreObjectTooLargeError(`${uri} is ${info.size} bytes, over the ${limit}-byte limit`);
      return await handle.readFile();
    } finally {
      await handle.close();
    }
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

  private async newStaging(): Promise<string> {
    const dir = join(this.root, STAGING, randomUUID());
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

/** Makes a rename durable: the new directory entry is only on disk once its folder is synced. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
