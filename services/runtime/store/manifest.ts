/**
 * Checkpoint manifests: canonical JSON of the files (sha256, size), kind and meta. The
 * checkpoint digest is the sha256 of these exact bytes, so the encoding must be canonical.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { Transform, type TransformCallback } from "node:stream";
import { isPlainObject } from "../json.ts";
import { CheckpointIntegrityError, type PutCheckpointOptions, validateRelativePath } from "./store.ts";

export const MANIFEST_FILE = "manifest.json";

export interface ManifestFile {
  sha256: string;
  size: number;
}

export interface CheckpointManifest {
  version: 1;
  kind: string;
  /** By "/"-separated path relative to the checkpoint folder. */
  files: Record<string, ManifestFile>;
  meta: Record<string, unknown>;
}

/**
 * JSON with object keys sorted (by UTF-16 code units, as RFC 8785) and no whitespace.
 * Undefined object properties are omitted, as JSON.stringify does; other non-JSON values
 * (NaN, Infinity, undefined in arrays, functions, class instances) throw a TypeError.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`canonical JSON cannot hold ${value}`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object" && [Object.prototype, null].includes(Object.getPrototypeOf(value))) {
    const record = value as Record<string, unknown>;
    const members = Object.keys(record)
      .filter((key) => record[key] !== undefined)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonicalJson(record[key])}`);
    return `{${members.join(",")}}`;
  }
  throw new TypeError(`canonical JSON cannot hold a ${typeof value === "object" ? value.constructor?.name : typeof value}`);
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** sha256 and size of a file, streamed. */
export async function hashFile(path: string): Promise<ManifestFile> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).byteLength;
  }
  return { sha256: hash.digest("hex"), size };
}

/** A pass-through stream that hashes what flows through it (copying and downloading). */
export class HashingStream extends Transform {
  private readonly hash = createHash("sha256");
  private size = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.byteLength;
    callback(null, chunk);
  }

  /** Call once, after the stream has finished. */
  result(): ManifestFile {
    return { sha256: this.hash.digest("hex"), size: this.size };
  }
}

export function newManifest(options: PutCheckpointOptions, files: CheckpointManifest["files"]): CheckpointManifest {
  if (typeof options.kind !== "string" || options.kind === "") throw new TypeError("checkpoint kind must be a non-empty string");
  return { version: 1, kind: options.kind, files, meta: options.meta ?? {} };
}

export function encodeManifest(manifest: CheckpointManifest): Buffer {
  return Buffer.from(canonicalJson(manifest), "utf8");
}

/**
 * Checks manifest bytes against the hex digest that addressed them, then their shape.
 * Any failure is a CheckpointIntegrityError (or a StorePathEscapeError for hostile paths).
 */
export function decodeManifest(bytes: Uint8Array, hex: string): CheckpointManifest {
  const actual = sha256Hex(bytes);
  if (actual !== hex) {
    throw new CheckpointIntegrityError(`manifest of checkpoint ${hex} hashes to ${actual}`);
  }
  const invalid = (why: string): never => {
    throw new CheckpointIntegrityError(`manifest of checkpoint ${hex} is invalid: ${why}`);
  };
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    invalid("not JSON");
  }
  if (!isPlainObject(value)) return invalid("not an object");
  const extra = Object.keys(value).filter((k) => !["version", "kind", "files", "meta"].includes(k));
  if (extra.length > 0) invalid(`unknown fields ${extra.join(", ")}`);
  if (value.version !== 1) invalid(`version ${JSON.stringify(value.version)} is not 1`);
  if (typeof value.kind !== "string" || value.kind === "") invalid("kind is not a non-empty string");
  if (!isPlainObject(value.meta)) invalid("meta is not an object");
  if (!isPlainObject(value.files)) return invalid("files is not an object");
  for (const [path, entry] of Object.entries(value.files)) {
    validateRelativePath(path, `manifest file ${path}`);
    if (
      !isPlainObject(entry) || Object.keys(entry).length !== 2 ||
      typeof entry.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(entry.sha256) ||
      !Number.isSafeInteger(entry.size) || (entry.size as number) < 0
    ) {
      invalid(`file ${path}: expected {sha256: <64 hex>, size: <non-negative integer>}`);
    }
  }
  return value as unknown as CheckpointManifest;
}
