/**
 * The cluster store: S3-compatible object storage, with a local cache of verified checkouts.
 *   <prefix>checkpoints/<hex>/files/<path>     uploaded first
 *   <prefix>checkpoints/<hex>/manifest.json    uploaded last: the commit marker
 *   <prefix><namespace>/<name>                 named objects (datasets)
 * A checkpoint is visible only once its manifest exists, so an interrupted put leaves only
 * unreferenced file objects (a lifecycle rule on the prefix can expire them).
 */
import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readFile, realpath, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { stageFolder, verifyFolder, writeHashed, writeSynced } from "./folder.ts";
import {
  type CheckpointManifest,
  HashingStream,
  MANIFEST_FILE,
  decodeManifest,
  encodeManifest,
  newManifest,
  sha256Hex,
} from "./manifest.ts";
import {
  CHECKPOINTS,
  type CheckpointCheckout,
  CheckpointIntegrityError,
  CheckpointNotFoundError,
  type CheckpointRef,
  type CheckpointStore,
  DEFAULT_MAX_OBJECT_BYTES,
  InvalidStoreUriError,
  type ObjectInfo,
  type PutCheckpointOptions,
  type ReadObjectOptions,
  STORE_SCHEME,
  StoreObjectNotFoundError,
  StoreObjectTooLargeError,
  type StoredObject,
  checkpointHex,
  checkpointRef,
  objectFolderKey,
  isObjectUri,
  objectKey,
  validateRelativePath,
} from "./store.ts";

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix for everything this store writes, e.g. "vaccine/" ("" for the bucket root). */
  prefix?: string;
  /** For S3-compatible services (MinIO, Ceph, ...). */
  endpoint?: string;
  region?: string;
  /** Omit to use the SDK's default chain (environment, profile, IRSA, instance role). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  forcePathStyle?: boolean;
  /** Local folder for verified checkouts (and put staging). */
  cacheDir: string;
}

const FILES = "files";
const STAGING = ".staging";
/** Far above any real manifest; only bounds what a hostile bucket could make us buffer. */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;
/** The largest object one PutObject may carry. */
const MAX_PUT_BYTES = 5 * 1024 ** 3;

export class S3CheckpointStore implements CheckpointStore {
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly cacheDir: string;
  private cacheRoot?: string;

  constructor(options: S3StoreOptions) {
    this.bucket = options.bucket;
    this.prefix = normalisePrefix(options.prefix ?? "");
    this.cacheDir = options.cacheDir;
    this.client = new S3Client({
      endpoint: options.endpoint,
      region: options.region ?? "us-east-1",
      credentials: options.credentials,
      forcePathStyle: options.forcePathStyle,
      // Checksums only where S3 requires them: many S3-compatible servers reject the
      // chunked trailing checksums the SDK otherwise sends. Integrity is ours (sha256).
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
  }

  async put(localDir: string, options: PutCheckpointOptions): Promise<CheckpointRef> {
    // Staging a local copy pins the bytes: the upload is exactly what was hashed.
    const staging = await this.newStaging();
    try {
      const files = await stageFolder(localDir, join(staging, FILES));
      const bytes = encodeManifest(newManifest(options, files));
      const hex = sha256Hex(bytes);
      const ref = checkpointRef(hex);
      if (!(await this.exists(ref))) {
        for (const [path, { size }] of Object.entries(files)) {
          await this.client.send(new PutObjectCommand({
            Bucket: this.bucket,
            Key: this.fileKey(hex, path),
            Body: createReadStream(join(staging, FILES, ...path.split("/"))),
            ContentLength: size,
          }));
        }
        await this.client.send(new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.manifestKey(hex),
          Body: bytes,
          ContentType: "application/json",
        }));
      }
      // The staged copy is already a verified checkout: keep it as the cache entry.
      await writeSynced(join(staging, MANIFEST_FILE), bytes);
      await this.commitToCache(staging, hex);
      return ref;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  async get(ref: CheckpointRef): Promise<CheckpointCheckout> {
    const hex = checkpointHex(ref);
    const cached = await this.cachedCheckout(hex);
    if (cached) return cached;
    const manifest = await this.readManifest(ref);
    const staging = await this.newStaging();
    try {
      await mkdir(join(staging, FILES));
      for (const [path, expected] of Object.entries(manifest.files)) {
        const target = join(staging, FILES, ...path.split("/"));
        await mkdir(dirname(target), { recursive: true });
        const body = await this.getBody(this.fileKey(hex, path), () => {
          throw new CheckpointIntegrityError(`checkpoint ${ref.uri}: file ${path} is missing from the bucket`);
        });
        const actual = await writeHashed(body, target);
        if (actual.size !== expected.size || actual.sha256 !== expected.sha256) {
          throw new CheckpointIntegrityError(
            `checkpoint ${ref.uri}: file ${path} is ${actual.size} bytes with sha256 ${actual.sha256}, the manifest says ${expected.size} bytes with ${expected.sha256}`,
          );
        }
      }
      await writeSynced(join(staging, MANIFEST_FILE), encodeManifest(manifest));
      if (await this.commitToCache(staging, hex)) {
        // Verified while downloading; later gets re-verify the cache entry.
        return { dir: await realpath(join(await this.root(), CHECKPOINTS, hex, FILES)), manifest };
      }
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
    const concurrent = await this.cachedCheckout(hex);
    if (!concurrent) throw new CheckpointIntegrityError(`checkpoint ${ref.uri}: a concurrent cache entry did not verify`);
    return concurrent;
  }

  async exists(ref: CheckpointRef): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.manifestKey(checkpointHex(ref)) }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  async list(): Promise<CheckpointRef[]> {
    const pattern = new RegExp(`^${escapeRegExp(this.prefix + CHECKPOINTS)}/([0-9a-f]{64})/${escapeRegExp(MANIFEST_FILE)}$`);
    const refs: CheckpointRef[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({
        Bucket: this.bucket,
        Prefix: `${this.prefix}${CHECKPOINTS}/`,
        ContinuationToken: token,
      }));
      for (const object of page.Contents ?? []) {
        const match = pattern.exec(object.Key ?? "");
        if (match) refs.push(checkpointRef(match[1]));
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return refs.sort((a, b) => (a.uri < b.uri ? -1 : 1));
  }

  async readManifest(ref: CheckpointRef): Promise<CheckpointManifest> {
    const hex = checkpointHex(ref);
    const body = await this.getBody(this.manifestKey(hex), () => {
      throw new CheckpointNotFoundError(`checkpoint ${ref.uri} does not exist`);
    });
    const bytes = await readAll(body, MAX_MANIFEST_BYTES, () => new CheckpointIntegrityError(`checkpoint ${ref.uri}: manifest is implausibly large`));
    return decodeManifest(bytes, hex);
  }

  async committedAt(ref: CheckpointRef): Promise<Date> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.manifestKey(checkpointHex(ref)) }));
      // A put of content already stored skips the upload, so this is the first commit's time.
      return head.LastModified ?? new Date(0);
    } catch (err) {
      if (isNotFound(err)) throw new CheckpointNotFoundError(`checkpoint ${ref.uri} does not exist`);
      throw err;
    }
  }

  async putObject(uri: string, data: Uint8Array): Promise<StoredObject> {
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.prefix + objectKey(uri), Body: data }));
    return { uri, size: data.byteLength, sha256: sha256Hex(data) };
  }

  async readObject(uri: string, options: ReadObjectOptions = {}): Promise<Buffer> {
    const limit = options.maxBytes ?? DEFAULT_MAX_OBJECT_BYTES;
    const body = await this.getBody(this.prefix + objectKey(uri), () => {
      throw new StoreObjectNotFoundError(uri);
    });
    return readAll(body, limit, () => new StoreObjectTooLargeError(`${uri} is over the ${limit}-byte limit`));
  }

  async putObjectFile(uri: string, path: string): Promise<StoredObject> {
    const key = this.prefix + objectKey(uri);
    const { size } = await stat(path);
    // One PUT is atomic (the object appears whole or not at all); S3 caps it at 5 GiB.
    if (size > MAX_PUT_BYTES) throw new StoreObjectTooLargeError(`${uri}: ${size} bytes is over the ${MAX_PUT_BYTES}-byte single-upload limit`);
    const source = createReadStream(path);
    const hasher = new HashingStream();
    source.on("error", (err) => hasher.destroy(err));
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: source.pipe(hasher), ContentLength: size }));
    } finally {
      // A failed request may leave the file half read: release it either way.
      source.destroy();
    }
    return { uri, ...hasher.result() };
  }

  async readObjectStream(uri: string): Promise<Readable> {
    return this.getBody(this.prefix + objectKey(uri), () => {
      throw new StoreObjectNotFoundError(uri);
    });
  }

  async listObjects(folderUri: string): Promise<ObjectInfo[]> {
    const prefix = this.prefix + objectFolderKey(folderUri);
    const found: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }));
      for (const object of page.Contents ?? []) {
        const uri = STORE_SCHEME + (object.Key ?? "").slice(this.prefix.length);
        // Keys written by other tools that no store URI can name are not ours to list.
        if (isObjectUri(uri)) found.push({ uri, size: object.Size ?? 0, modified: object.LastModified ?? new Date(0) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return found.sort((a, b) => (a.uri < b.uri ? -1 : 1));
  }

  async delete(ref: CheckpointRef): Promise<void> {
    const hex = checkpointHex(ref);
    // The manifest first: from then on it is not found, and a get cannot fetch it again.
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.manifestKey(hex) }));
    const folder = `${this.prefix}${CHECKPOINTS}/${hex}/`;
    for (;;) {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: folder }));
      const keys = (page.Contents ?? []).map((o) => o.Key!).filter(Boolean);
      if (keys.length === 0) break;
      await Promise.all(keys.map((Key) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }))));
    }
    await rm(join(await this.root(), CHECKPOINTS, hex), { recursive: true, force: true });
  }

  async deleteObject(uri: string): Promise<void> {
    // S3 deletes are idempotent: a missing key is a success.
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + objectKey(uri) }));
  }

  /** Closes the S3 client's connections. */
  close(): void {
    this.client.destroy();
  }

  private fileKey(hex: string, path: string): string {
    return `${this.prefix}${CHECKPOINTS}/${hex}/${FILES}/${path}`;
  }

  private manifestKey(hex: string): string {
    return `${this.prefix}${CHECKPOINTS}/${hex}/${MANIFEST_FILE}`;
  }

  private async getBody(key: string, onMissing: () => never): Promise<Readable> {
    try {
      const response = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return response.Body as Readable;
    } catch (err) {
      if (isNotFound(err)) onMissing();
      throw err;
    }
  }

  /** A verified cache entry, or undefined (a corrupt entry is removed and refetched). */
  private async cachedCheckout(hex: string): Promise<CheckpointCheckout | undefined> {
    const root = await this.root();
    const dir = join(root, CHECKPOINTS, hex);
    try {
      const bytes = await readFile(join(dir, MANIFEST_FILE)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") throw new CheckpointIntegrityError(`cache entry ${hex} has no manifest`);
        throw err;
      });
      const manifest = decodeManifest(bytes, hex);
      return { dir: await verifyFolder(join(dir, FILES), manifest, root), manifest };
    } catch (err) {
      if (!(err instanceof CheckpointIntegrityError)) throw err;
      await rm(dir, { recursive: true, force: true });
      return undefined;
    }
  }

  /** Renames a complete staging folder into the cache; false if an entry was already there. */
  private async commitToCache(staging: string, hex: string): Promise<boolean> {
    const checkpoints = join(await this.root(), CHECKPOINTS);
    await mkdir(checkpoints, { recursive: true });
    try {
      await rename(staging, join(checkpoints, hex));
      return true;
    } catch (err) {
      // A concurrent get or put committed the entry first.
      if ((err as NodeJS.ErrnoException).code === "ENOTEMPTY" || (err as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw err;
    }
  }

  private async newStaging(): Promise<string> {
    const dir = join(await this.root(), STAGING, randomUUID());
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** The cache folder's real path (containment checks compare real paths). */
  private async root(): Promise<string> {
    if (!this.cacheRoot) {
      await mkdir(this.cacheDir, { recursive: true });
      this.cacheRoot = await realpath(this.cacheDir);
    }
    return this.cacheRoot;
  }
}

function normalisePrefix(prefix: string): string {
  const trimmed = prefix.replace(/^\/+|\/+$/g, "");
  if (trimmed === "") return "";
  try {
    validateRelativePath(trimmed);
  } catch (err) {
    throw new InvalidStoreUriError(`S3 prefix ${JSON.stringify(prefix)} is not a plain key prefix`, { cause: err });
  }
  return `${trimmed}/`;
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === "NoSuchKey" || e?.name === "NotFound" || e?.$metadata?.httpStatusCode === 404;
}

/** Reads a stream, stopping with tooLarge() as soon as it passes limit bytes. */
async function readAll(body: Readable, limit: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).byteLength;
    if (size > limit) {
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
