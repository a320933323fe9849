/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written
 * by hand because npm has no Node implementation: an 8-byte little-endian u64 header
 * length, a JSON header, then the raw little-endian tensor bytes.
 */
import { readFile } from "node:fs/promises";
import { endianness } from "node:os";
import type { HostTensor, HostTensors } from "../host-tensor.ts";
import { isPlainObject } from "../json.ts";

/** A checkpoint file or folder that does not follow its format. `reason` is a stable code. */
export class CheckpointFormatError extends Error {
  readonly reason: string = "CHECKPOINT_FORMAT_INVALID";
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A malformed safetensors file. */
export class SafetensorsError extends CheckpointFormatError {
  override readonly reason: string = "SAFETENSORS_INVALID";
}

export interface SafetensorsContent {
  tensors: HostTensors;
  /** The header's "__metadata__" string map ({} when absent). */
  metadata: Record<string, string>;
}

/** Headers larger than this are refused before parsing (the reference caps at 100 MB too). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

const METADATA_KEY = "__metadata__";
const READABLE_DTYPES = { F32: 4, F16: 2, BF16: 2 } as const;
type ReadableDtype = keyof typeof READABLE_DTYPES;
/**
 * Valid safetensors dtypes this reader refuses: HostTensor is float32 only, and casting
 * integers (token ids, position ids) or F64 to float32 would silently lose values.
 */
const REFUSED_DTYPES = new Set([
  "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F64", "F8_E4M3", "F8_E5M2",
  "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
]);

// Typed arrays use the host byte order; the format is little-endian.
if (endianness() !== "LE") {
  throw new Error("safetensors.ts assumes a little-endian host");
}

/** Reads a safetensors file from a path or from its bytes. */
export async function readSafetensors(source: Uint8Array | string): Promise<SafetensorsContent> {
  const bytes = typeof source === "string" ? await readFile(source) : source;
  return parseSafetensors(bytes);
}

/** Parses safetensors bytes; every malformed input is a SafetensorsError. */
export function parseSafetensors(bytes: Uint8Array): SafetensorsContent {
  if (bytes.byteLength < 8) {
    throw new SafetensorsError(`file is ${bytes.byteLength} bytes, shorter than the 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const headerEnd = 8 + Number(headerLength);
  if (headerEnd > bytes.byteLength) {
    throw new SafetensorsError(
      `header length ${headerLength} runs past the end of the ${bytes.byteLength}-byte file`,
    );
  }
  const header = parseHeader(bytes.subarray(8, headerEnd));
  const data = bytes.subarray(headerEnd);

  const metadata = parseMetadata(header[METADATA_KEY]);
  const entries = Object.entries(header)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, info]) => parseEntry(name, info, data.byteLength));

  // The tensors must tile the data region: no holes, no overlaps, nothing left over.
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const entry of byOffset) {
    if (entry.begin !== expected) {
      throw new SafetensorsError(
        entry.begin < expected
          ? `tensor "${entry.name}" data_offsets [${entry.begin}, ${entry.end}] overlap the previous tensor (ending at ${expected})`
          : `tensor "${entry.name}" starts at ${entry.begin}, leaving a hole after byte ${expected}`,
      );
    }
    expected = entry.end;
  }
  if (expected !== data.byteLength) {
    throw new SafetensorsError(
      `tensors cover ${expected} bytes of a ${data.byteLength}-byte data region`,
    );
  }

  const tensors: HostTensors = new Map();
  for (const entry of entries) {
    tensors.set(entry.name, {
      shape: entry.shape,
      data: decode(entry.dtype, data.subarray(entry.begin, entry.end)),
    });
  }
  return { tensors, metadata };
}

/**
 * Serialises tensors as F32 safetensors. Tensors are sorted by name and the header is
 * space-padded to an 8-byte boundary (as the reference writer does), so equal inputs
 * give byte-identical files.
 */
export function writeSafetensors(tensors: HostTensors, metadata: Record<string, string> = {}): Buffer {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    header[METADATA_KEY] = parseMetadata(metadata);
  }
  let offset = 0;
  for (const name of names) {
    const tensor = tensors.get(name) as HostTensor;
    checkTensorForWrite(name, tensor);
    const size = tensor.data.byteLength;
    header[name] = { dtype: "F32", shape: tensor.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const padded = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const out = Buffer.alloc(8 + padded + offset, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, 8);
  let cursor = 8 + padded;
  for (const name of names) {
    const data = (tensors.get(name) as HostTensor).data;
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), cursor);
    cursor += data.byteLength;
  }
  return out;
}

/** The float32 value of IEEE half-precision bits (exact: every F16 value is an F32 value). */
export function f16BitsToNumber(bits: number): number {
  return halfTable()[bits & 0xffff];
}

/** The float32 value of bfloat16 bits: bfloat16 is the upper half of a float32. */
export function bf16BitsToNumber(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

interface Entry {
  name: string;
  dtype: ReadableDtype;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeader(bytes: Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SafetensorsError("header is not valid UTF-8");
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(`header is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(header)) {
    throw new SafetensorsError("header is not a JSON object");
  }
  return header;
}

function parseMetadata(value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (!isPlainObject(value)) {
    throw new SafetensorsError(`"${METADATA_KEY}" is not an object of strings`);
  }
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== "string") {
      throw new SafetensorsError(`"${METADATA_KEY}" entry "${key}" is not a string`);
    }
  }
  return { ...(value as Record<string, string>) };
}

function parseEntry(name: string, info: unknown, dataLength: number): Entry {
  if (!isPlainObject(info)) {
    throw new SafetensorsError(`tensor "${name}": header entry is not an object`);
  }
  const { dtype, shape, data_offsets: offsets } = info;
  if (typeof dtype !== "string") {
    throw new SafetensorsError(`tensor "${name}": dtype is missing or not a string`);
  }
  if (!(dtype in READABLE_DTYPES)) {
    throw new SafetensorsError(
      REFUSED_DTYPES.has(dtype)
        ? `tensor "${name}": dtype ${dtype} is not supported (only F32, F16 and BF16 are read)`
        : `tensor "${name}": unknown dtype "${dtype}"`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    throw new SafetensorsError(`tensor "${name}": shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger)
  ) {
    throw new SafetensorsError(`tensor "${name}": data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    throw new SafetensorsError(`tensor "${name}": data_offsets [${begin}, ${end}] are not ordered`);
  }
  if (end > dataLength) {
    throw new SafetensorsError(`tensor "${name}": data_offsets [${begin}, ${end}] run past the ${dataLength}-byte data region`);
  }
  const elementSize = READABLE_DTYPES[dtype as ReadableDtype];
  const elements = (shape as number[]).reduce((n, d) => n * d, 1);
  // Compare before any typed array is made, so a lying shape can never reach a RangeError.
  if (elements * elementSize !== end - begin) {
    throw new SafetensorsError(
      `tensor "${name}": shape [${shape.join(", ")}] of ${dtype} needs ${elements * elementSize} bytes, data_offsets give ${end - begin}`,
    );
  }
  return { name, dtype: dtype as ReadableDtype, shape: [...(shape as number[])], begin, end };
}

function decode(dtype: ReadableDtype, bytes: Uint8Array): Float32Array {
  // Copy first: the source may sit at any byte offset, and typed arrays need alignment.
  const copy = new Uint8Array(bytes);
  if (dtype === "F32") return new Float32Array(copy.buffer);
  const halves = new Uint16Array(copy.buffer);
  const out = new Float32Array(halves.length);
  if (dtype === "F16") {
    const table = halfTable();
    for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]];
  } else {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16;
  }
  return out;
}

let halfLookup: Float32Array | undefined;

/** All 65536 F16 values, built once: a table lookup is the fastest exact conversion. */
function halfTable(): Float32Array {
  if (halfLookup) return halfLookup;
  halfLookup = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    let value: number;
    if (exponent === 0) value = mantissa * 2 ** -24; // zero and subnormals
    else if (exponent === 0x1f) value = mantissa === 0 ? Infinity : NaN;
    else value = (1 + mantissa / 1024) * 2 ** (exponent - 15);
    halfLookup[bits] = sign * value;
  }
  return halfLookup;
}

const scratchU32 = new Uint32Array(1);
const scratchF32 = new Float32Array(scratchU32.buffer);

function checkTensorForWrite(name: string, tensor: HostTensor): void {
  if (name === "" || name === METADATA_KEY) {
    throw new SafetensorsError(`tensor name "${name}" is reserved or empty`);
  }
  if (!Array.isArray(tensor.shape) || !tensor.shape.every(isNonNegativeInteger)) {
    throw new SafetensorsError(`tensor "${name}": shape ${JSON.stringify(tensor.shape)} is not an array of non-negative integers`);
  }
  const elements = tensor.shape.reduce((n, d) => n * d, 1);
  if (!(tensor.data instanceof Float32Array) || tensor.data.length !== elements) {
    throw new SafetensorsError(
      `tensor "${name}": shape [${tensor.shape.join(", ")}] needs ${elements} float32 values, data has ${tensor.data?.length}`,
    );
  }
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}
