/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written
 * by hand because npm has no Node implementation: an 8-byte little-endian u64 header
 * length, a JSON header, then the raw little-endian tensor bytes. Headers are held to
 * the reference reader's rules: the JSON starts at the first byte and is padded with
 * spaces only, names are unique, shapes and offsets are plain integers, and the tensors
 * tile the data region exactly.
 */
import { open, readFile } from "node:fs/promises";
import { endianness } from "node:os";
import type { HostTensor, HostTensors } from "../host-tensor.ts";
import { isPlainObject } from "../json.ts";
import { DuplicateKeyError, JsonSyntaxError, parseStrictJson } from "../strict-json.ts";
import { CheckpointFormatError } from "../format-error.ts";

/** A malformed safetensors file. */
export class SafetensorsError extends CheckpointFormatError {
  override readonly reason: string = "SAFETENSORS_INVALID";
}

export interface SafetensorsContent {
  tensors: HostTensors;
  /** The header's "__metadata__" string map ({} when absent). */
  metadata: Record<string, string>;
}

/** Element types read and written: the float types weights come in. */
export type FloatDtype = "F32" | "F16" | "BF16";

/** One tensor of a header: where its bytes are, relative to the data region. */
export interface TensorEntry {
  name: string;
  dtype: FloatDtype;
  shape: number[];
  begin: number;
  end: number;
}

/** A file's header, read without its tensor data. */
export interface SafetensorsHeader {
  /** In header order. */
  entries: TensorEntry[];
  metadata: Record<string, string>;
  /** File offset of the data region (8 + header length). */
  dataStart: number;
}

/** Headers larger than this are refused before parsing (the reference caps at 100 MB too). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

const METADATA_KEY = "__metadata__";
const DTYPE_BYTES: Record<FloatDtype, number> = { F32: 4, F16: 2, BF16: 2 };
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

/** Reads and checks a file's header against the file's size; no tensor data is read. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const handle = await open(path, "r");
  try {
    const size = (await handle.stat()).size;
    const prefix = Buffer.alloc(8);
    if (size >= 8) await handle.read(prefix, 0, 8, 0);
    const headerLength = checkHeaderLength(size, prefix);
    const headerBytes = Buffer.alloc(headerLength);
    await handle.read(headerBytes, 0, headerLength, 8);
    const { entries, metadata } = parseHeader(headerBytes, size - 8 - headerLength);
    return { entries, metadata, dataStart: 8 + headerLength };
  } finally {
    await handle.close();
  }
}

/** One tensor of a file as float32, read alone (the file's header read first). */
export async function readTensor(path: string, header: SafetensorsHeader, entry: TensorEntry): Promise<HostTensor> {
  const handle = await open(path, "r");
  try {
    const bytes = Buffer.alloc(entry.end - entry.begin);
    const { bytesRead } = await handle.read(bytes, 0, bytes.byteLength, header.dataStart + entry.begin);
    if (bytesRead !== bytes.byteLength) throw new SafetensorsError(`tensor "${entry.name}": the file ended early`);
    return { shape: [...entry.shape], data: decode(entry.dtype, bytes) };
  } finally {
    await handle.close();
  }
}

/** Parses safetensors bytes; every malformed input is a SafetensorsError. */
export function parseSafetensors(bytes: Uint8Array): SafetensorsContent {
  const view = new DataView(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 8));
  const headerLength = checkHeaderLength(bytes.byteLength, view);
  const headerEnd = 8 + headerLength;
  const { entries, metadata } = parseHeader(bytes.subarray(8, headerEnd), bytes.byteLength - headerEnd);
  const data = bytes.subarray(headerEnd);
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
  for (const name of names) checkTensorForWrite(name, tensors.get(name) as HostTensor);
  const header = headerBytes(names.map((name) => ({ name, shape: (tensors.get(name) as HostTensor).shape })), "F32", metadata);
  const size = names.reduce((n, name) => n + (tensors.get(name) as HostTensor).data.byteLength, 0);
  const out = Buffer.alloc(header.byteLength + size);
  header.copy(out);
  let cursor = header.byteLength;
  for (const name of names) {
    const data = (tensors.get(name) as HostTensor).data;
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), cursor);
    cursor += data.byteLength;
  }
  return out;
}

/** A tensor to be written: its name and shape; its values are asked for when its turn comes. */
export interface TensorPlan {
  name: string;
  shape: number[];
}

/**
 * Writes a safetensors file one tensor at a time, in name order like writeSafetensors:
 * values(name) is called for each in turn and converted to dtype (round to nearest even),
 * so only one tensor is ever held, however large the file.
 */
export async function writeSafetensorsFile(
  path: string,
  plans: TensorPlan[],
  values: (name: string) => Promise<Float32Array>,
  options: { dtype?: FloatDtype; metadata?: Record<string, string> } = {},
): Promise<void> {
  const dtype = options.dtype ?? "F32";
  const sorted = [...plans].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const handle = await open(path, "wx");
  try {
    await handle.write(headerBytes(sorted, dtype, options.metadata ?? {}));
    for (const { name, shape } of sorted) {
      const data = await values(name);
      checkTensorForWrite(name, { shape, data });
      await handle.write(encodeFloats(data, dtype));
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** float32 values as the little-endian bytes of dtype, rounded to nearest even. */
export function encodeFloats(data: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  const encode = dtype === "F16" ? f32BitsToF16Bits : f32BitsToBf16Bits;
  for (let i = 0; i < out.length; i++) out[i] = encode(bits[i]);
  return new Uint8Array(out.buffer);
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

/** bfloat16 bits of float32 bits, round to nearest even; NaN stays a (quiet) NaN. */
export function f32BitsToBf16Bits(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return ((f >>> 16) | 0x40) & 0xffff;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * IEEE half bits of float32 bits, round to nearest even: overflow gives infinity,
 * underflow a subnormal or signed zero, NaN stays a NaN.
 */
export function f32BitsToF16Bits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const exp = f & 0x7f800000;
  const mantissa = f & 0x007fffff;
  if (exp >= 0x47800000) {
    // |x| >= 2^16, infinity or NaN.
    if (exp === 0x7f800000 && mantissa !== 0) return sign | 0x7c00 | (mantissa >>> 13) | 0x200;
    return sign | 0x7c00;
  }
  if (exp <= 0x38000000) {
    // Below the smallest normal half (2^-14): a subnormal, or zero under 2^-25.
    if (exp < 0x33000000) return sign;
    const e = exp >>> 23;
    const shift = 126 - e; // 14..24: bits to drop from the 24-bit significand
    const significand = 0x00800000 | mantissa;
    const kept = significand >>> shift;
    const dropped = significand & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    const up = dropped > half || (dropped === half && (kept & 1) === 1);
    return sign | (kept + (up ? 1 : 0));
  }
  // Normal: rebias the exponent, keep 10 mantissa bits; a carry may bump the exponent (to infinity at most).
  const base = ((exp - 0x38000000) >>> 13) | (mantissa >>> 13);
  const dropped = mantissa & 0x1fff;
  const up = dropped > 0x1000 || (dropped === 0x1000 && (base & 1) === 1);
  return sign | (base + (up ? 1 : 0));
}

/** The header length from the first 8 bytes, checked against the file size before anything is allocated. */
function checkHeaderLength(fileSize: number, prefix: DataView | Buffer): number {
  if (fileSize < 8) {
    throw new SafetensorsError(`file is ${fileSize} bytes, shorter than the 8-byte header length`);
  }
  const headerLength = prefix instanceof DataView ? prefix.getBigUint64(0, true) : prefix.readBigUInt64LE(0);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  if (8 + Number(headerLength) > fileSize) {
    throw new SafetensorsError(`header length ${headerLength} runs past the end of the ${fileSize}-byte file`);
  }
  return Number(headerLength);
}

/** The entries and metadata of a header, checked against the data region's length. */
function parseHeader(bytes: Uint8Array, dataLength: number): { entries: TensorEntry[]; metadata: Record<string, string> } {
  const { header, numbers } = parseHeaderJson(bytes);
  const metadata = parseMetadata(header[METADATA_KEY]);
  const entries = Object.entries(header)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, info]) => parseEntry(name, info, dataLength));
  // Shapes and offsets are unsigned integers in the reference: 2.0, 1e1 or -0 are not.
  const inexact = numbers.find((n) => !/^(0|[1-9][0-9]*)$/.test(n));
  if (inexact !== undefined) {
    throw new SafetensorsError(`header number ${inexact} is not written as a plain integer (shapes and data_offsets must be)`);
  }

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
  if (expected !== dataLength) {
    throw new SafetensorsError(`tensors cover ${expected} bytes of a ${dataLength}-byte data region`);
  }
  return { entries, metadata };
}

function parseHeaderJson(bytes: Uint8Array): { header: Record<string, unknown>; numbers: string[] } {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new SafetensorsError("header is not valid UTF-8");
  }
  // The reference reader wants "{" first and allows only space padding after the object.
  if (!text.startsWith("{")) {
    throw new SafetensorsError(`header must start with "{", found ${JSON.stringify(text.slice(0, 8))}`);
  }
  const numbers: string[] = [];
  let header: unknown;
  try {
    header = parseStrictJson(text, { onNumber: (n) => numbers.push(n) });
  } catch (err) {
    if (err instanceof DuplicateKeyError) {
      throw new SafetensorsError(err.path === "" ? `tensor "${err.key}" appears more than once in the header` : `"${err.path}" repeats the key "${err.key}"`);
    }
    if (err instanceof JsonSyntaxError) throw new SafetensorsError(`header is not valid JSON: ${err.message}`);
    throw err;
  }
  if (!text.replace(/ +$/, "").endsWith("}")) {
    throw new SafetensorsError("header must end with \"}\" followed by nothing but space padding");
  }
  // Valid JSON text that starts with "{" is an object.
  return { header: header as Record<string, unknown>, numbers };
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

function parseEntry(name: string, info: unknown, dataLength: number): TensorEntry {
  if (!isPlainObject(info)) {
    throw new SafetensorsError(`tensor "${name}": header entry is not an object`);
  }
  const { dtype, shape, data_offsets: offsets } = info;
  if (typeof dtype !== "string") {
    throw new SafetensorsError(`tensor "${name}": dtype is missing or not a string`);
  }
  if (!(dtype in DTYPE_BYTES)) {
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
  const elementSize = DTYPE_BYTES[dtype as FloatDtype];
  const elements = (shape as number[]).reduce((n, d) => n * d, 1);
  // Compare before any typed array is made, so a lying shape can never reach a RangeError.
  if (elements * elementSize !== end - begin) {
    throw new SafetensorsError(
      `tensor "${name}": shape [${shape.join(", ")}] of ${dtype} needs ${elements * elementSize} bytes, data_offsets give ${end - begin}`,
    );
  }
  return { name, dtype: dtype as FloatDtype, shape: [...(shape as number[])], begin, end };
}

/** The header bytes (length prefix, JSON, space padding to 8 bytes) of tensors laid out in the given order. */
function headerBytes(plans: TensorPlan[], dtype: FloatDtype, metadata: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = parseMetadata(metadata);
  let offset = 0;
  for (const { name, shape } of plans) {
    if (name === "" || name === METADATA_KEY) throw new SafetensorsError(`tensor name "${name}" is reserved or empty`);
    const size = shape.reduce((n, d) => n * d, 1) * DTYPE_BYTES[dtype];
    header[name] = { dtype, shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const padded = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const out = Buffer.alloc(8 + padded, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, 8);
  return out;
}

function decode(dtype: FloatDtype, bytes: Uint8Array): Float32Array {
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
