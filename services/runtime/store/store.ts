/**
 * The checkpoint store contract: content-addressed checkpoints (a folder plus a manifest)
 * and plain named objects such as datasets, addressed by `store://` URIs.
 */
import type { Readable } from "node:stream";
import type { CheckpointManifest } from "./manifest.ts";

/** A checkpoint by reference: `store://checkpoints/<hex>` plus "sha256:<hex>" of its manifest. */
export interface CheckpointRef {
  uri: string;
  digest: string;
}

export interface PutCheckpointOptions {
  /** "model", "adapter", "training-state", or another kind. */
  kind: string;
  /** Free JSON (lineage: parent checkpoint, base model, ...). Part of the digest. */
  meta?: Record<string, unknown>;
}

export interface CheckpointCheckout {
  /** A local folder holding exactly the manifest's files, verified against it. */
  dir: string;
  manifest: CheckpointManifest;
}

export interface StoredObject {
  uri: string;
  size: number;
  sha256: string;
}

/** A named object as a listing shows it. */
export interface ObjectInfo {
  uri: string;
  size: number;
  /** When the object was last written (an ordering key for listings). */
  modified: Date;
}

export interface ReadObjectOptions {
  /** Refuse objects larger than this (default DEFAULT_MAX_OBJECT_BYTES). */
  maxBytes?: number;
}

export const DEFAULT_MAX_OBJECT_BYTES = 256 * 1024 * 1024;

export interface CheckpointStore {
  /** Stores a folder atomically; identical content and options give the same ref. */
  put(localDir: string, options: PutCheckpointOptions): Promise<CheckpointRef>;
  /** A verified local copy of the checkpoint. */
  get(ref: CheckpointRef): Promise<CheckpointCheckout>;
  /** Whether the checkpoint is committed (its manifest exists); files are not verified. */
  exists(ref: CheckpointRef): Promise<boolean>;
  /** Every committed checkpoint, sorted by URI. */
  list(): Promise<CheckpointRef[]>;
  /** The manifest, checked against the ref's digest. */
  readManifest(ref: CheckpointRef): Promise<CheckpointManifest>;
  /**
   * When the checkpoint was committed (its manifest written). Not part of the digest, so
   * storing the same content again keeps the first time.
   */
  committedAt(ref: CheckpointRef): Promise<Date>;
  /**
   * Removes a checkpoint: not found once its manifest is gone (first), then its files go.
   * A reader holding its folder may fail half way. Nothing happens if it is not stored.
   */
  delete(ref: CheckpointRef): Promise<void>;
  /** Writes (or atomically replaces) a named object such as `store://datasets/x.jsonl`. */
  putObject(uri: string, data: Uint8Array): Promise<StoredObject>;
  readObject(uri: string, options?: ReadObjectOptions): Promise<Buffer>;
  /** Writes (or atomically replaces) a named object with a local file's bytes, streamed, never held whole. */
  putObjectFile(uri: string, path: string): Promise<StoredObject>;
  /** An object's bytes as a stream, for objects too large to buffer. */
  readObjectStream(uri: string): Promise<Readable>;
  /** Every object under a folder URI such as `store://datasets` (any depth), sorted by URI. */
  listObjects(folderUri: string): Promise<ObjectInfo[]>;
  /** Removes a named object; removing one that does not exist is not an error. */
  deleteObject(uri: string): Promise<void>;
}

/** Base of every store error; `reason` is a stable code the gRPC layer maps. */
export class StoreError extends Error {
  readonly reason: string = "STORE_ERROR";
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Not a well-formed store URI or checkpoint ref (wrong scheme, bad name, malformed digest, a digest its URI does not name). */
export class InvalidStoreUriError extends StoreError {
  override readonly reason = "INVALID_STORE_URI";
}

/** A URI, manifest path or symlink that would reach outside the store root. */
export class StorePathEscapeError extends StoreError {
  override readonly reason = "STORE_PATH_ESCAPE";
}

export class CheckpointNotFoundError extends StoreError {
  override readonly reason = "CHECKPOINT_NOT_FOUND";
}

/** Stored content does not match its digest, manifest or ref. */
export class CheckpointIntegrityError extends StoreError {
  override readonly reason = "CHECKPOINT_INTEGRITY";
}

/** The folder given to put() cannot be stored (missing, directory symlinks, special files). */
export class InvalidCheckpointSourceError extends StoreError {
  override readonly reason = "CHECKPOINT_SOURCE_INVALID";
}

export class StoreObjectNotFoundError extends StoreError {
  override readonly reason = "STORE_OBJECT_NOT_FOUND";
  constructor(
    readonly uri: string,
    what = "does not exist",
  ) {
    super(`${uri} ${what}`);
  }
}

export class StoreObjectTooLargeError extends StoreError {
  override readonly reason = "STORE_OBJECT_TOO_LARGE";
}

export const STORE_SCHEME = "store://";
export const CHECKPOINTS = "checkpoints";
const HEX_DIGEST = /^[0-9a-f]{64}$/;
/** Names start with a letter, digit or "_", so hidden staging entries are never addressable. */
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._=+@-]*$/;

export type StoreLocation =
  | { kind: "checkpoint"; hex: string }
  /** key: the path under the store root, e.g. "datasets/train.jsonl". */
  | { kind: "object"; key: string };

/**
 * Parses a store URI without any URL decoding or normalisation: those are exactly what
 * traversal tricks rely on, so "..", ".", empty segments, "\" and "%" are refused outright.
 */
export function parseStoreUri(uri: string): StoreLocation {
  if (typeof uri !== "string" || !uri.startsWith(STORE_SCHEME)) {
    throw new InvalidStoreUriError(`${JSON.stringify(uri)} is not a ${STORE_SCHEME} URI`);
  }
  const path = uri.slice(STORE_SCHEME.length);
  if (path === "") throw new InvalidStoreUriError(`${uri}: expected store://<namespace>/<name>`);
  const segments = validateRelativePath(path, uri);
  for (const segment of segments) {
    if (!SEGMENT.test(segment)) {
      throw new InvalidStoreUriError(`${uri}: "${segment}" is not a valid name (letters, digits and ._=+@- only)`);
    }
  }
  if (segments.length < 2) throw new InvalidStoreUriError(`${uri}: expected store://<namespace>/<name>`);
  if (segments[0] === CHECKPOINTS) {
    if (segments.length !== 2 || !HEX_DIGEST.test(segments[1])) {
      throw new InvalidStoreUriError(`${uri}: expected store://checkpoints/<64 lowercase hex digits>`);
    }
    return { kind: "checkpoint", hex: segments[1] };
  }
  return { kind: "object", key: segments.join("/") };
}

/** The object key of a URI, refusing checkpoint URIs (those are folders, read with get()). */
export function objectKey(uri: string): string {
  const location = parseStoreUri(uri);
  if (location.kind !== "object") throw new InvalidStoreUriError(`${uri} is a checkpoint, not a dataset or other object`);
  return location.key;
}

/** The digest's hex a checkpoint URI names, or undefined for any other string. */
export function checkpointHexOf(uri: string): string | undefined {
  try {
    const location = parseStoreUri(uri);
    return location.kind === "checkpoint" ? location.hex : undefined;
  } catch {
    return undefined;
  }
}

/** Whether a URI names an object (listings skip names no URI can hold). */
export function isObjectUri(uri: string): boolean {
  try {
    return parseStoreUri(uri).kind === "object";
  } catch {
    return false;
  }
}

/**
 * The key prefix ("datasets/") of a folder URI such as `store://datasets`: a folder is
 * valid exactly when an object one segment below it would be.
 */
export function objectFolderKey(uri: string): string {
  const key = objectKey(`${uri}/_`);
  return key.slice(0, -1);
}

export function checkpointRef(hex: string): CheckpointRef {
  return { uri: `${STORE_SCHEME}${CHECKPOINTS}/${hex}`, digest: `sha256:${hex}` };
}

/** The hex digest a ref names; its URI and digest must agree. */
export function checkpointHex(ref: CheckpointRef): string {
  const location = parseStoreUri(ref?.uri);
  if (location.kind !== "checkpoint") throw new InvalidStoreUriError(`${ref.uri} is not a checkpoint URI`);
  if (typeof ref.digest !== "string" || !/^sha256:[0-9a-f]{64}$/.test(ref.digest)) {
    throw new InvalidStoreUriError(`digest ${JSON.stringify(ref.digest)} is not "sha256:<64 lowercase hex digits>"`);
  }
  // A ref that contradicts itself is a bad request, not damage in the store: nothing was read.
  if (ref.digest !== `sha256:${location.hex}`) {
    throw new InvalidStoreUriError(`digest ${ref.digest} does not match the URI ${ref.uri}`);
  }
  return location.hex;
}

/**
 * Splits a "/"-separated relative path, refusing anything that could leave its root:
 * absolute paths, "..", ".", empty segments, backslashes, percent-encoding, control chars.
 * Used for URIs and for manifest file paths alike.
 */
export function validateRelativePath(path: string, context: string = path): string[] {
  const escape = (why: string): never => {
    throw new StorePathEscapeError(`${JSON.stringify(context)}: ${why}`);
  };
  if (path.startsWith("/")) escape("absolute paths are not allowed");
  if (path.includes("\\")) escape("backslashes are not allowed");
  if (path.includes("%")) escape("percent-encoding is not allowed");
  if (/[\u0000-\u001f\u007f]/.test(path)) escape("control characters are not allowed");
  const segments = path.split("/");
  for (const segment of segments) {
    if (segment === "..") escape('".." is not allowed');
    if (segment === ".") escape('"." is not allowed');
    if (segment === "") escape("empty path segments are not allowed");
  }
  return segments;
}
