import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { HostTensors } from "../../services/runtime/host-tensor.ts";
import {
  SafetensorsError,
  bf16BitsToNumber,
  encodeFloats,
  f16BitsToNumber,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  parseSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  readTensor,
  writeSafetensors,
  writeSafetensorsFile,
} from "../../services/runtime/checkpoint/safetensors.ts";

/** A safetensors file from a header (object or raw text) and data bytes. */
function file(header: unknown, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): Buffer {
  const json = Buffer.from(typeof header === "string" ? header : JSON.stringify(header), "utf8");
  const out = Buffer.alloc(8 + json.byteLength + data.byteLength);
  out.writeBigUInt64LE(headerLength ?? BigInt(json.byteLength), 0);
  json.copy(out, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

function expectInvalid(bytes: Uint8Array, message: RegExp): void {
  let caught: unknown;
  try {
    parseSafetensors(bytes);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(SafetensorsError);
  expect((caught as SafetensorsError).reason).toBe("SAFETENSORS_INVALID");
  expect((caught as Error).message).toMatch(message);
}

const f32 = (dtype: string, shape: number[], offsets: number[]) => ({ dtype, shape, data_offsets: offsets });

describe("safetensors round trip", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it("writes and reads tensors, metadata and special values exactly", async () => {
    const tensors: HostTensors = new Map([
      ["b.weight", { shape: [2, 3], data: new Float32Array([1, -2, 3.5, NaN, Infinity, -0]) }],
      ["a.bias", { shape: [3], data: new Float32Array([1e-45, -1e38, 0.1]) }],
      ["empty", { shape: [0, 4], data: new Float32Array(0) }],
      ["scalar", { shape: [], data: new Float32Array([42]) }],
    ]);
    const bytes = writeSafetensors(tensors, { format: "pt", note: "héllo" });
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect(headerLength % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8"));
    expect(Object.keys(header)).toEqual(["__metadata__", "a.bias", "b.weight", "empty", "scalar"]);
    expect(header["a.bias"]).toEqual({ dtype: "F32", shape: [3], data_offsets: [0, 12] });

    const dir = await mkdtemp(join(tmpdir(), "st-"));
    dirs.push(dir);
    await writeFile(join(dir, "m.safetensors"), bytes);
    const read = await readSafetensors(join(dir, "m.safetensors"));
    expect(read.metadata).toEqual({ format: "pt", note: "héllo" });
    expect([...read.tensors.keys()].sort()).toEqual(["a.bias", "b.weight", "empty", "scalar"]);
    for (const [name, tensor] of tensors) {
      const got = read.tensors.get(name)!;
      expect(got.shape).toEqual(tensor.shape);
      expect(Array.from(got.data)).toEqual(Array.from(tensor.data));
    }
    expect(Object.is(read.tensors.get("b.weight")!.data[5], -0)).toBe(true);
  });

  it("is deterministic regardless of insertion order", () => {
    const a: HostTensors = new Map([
      ["x", { shape: [1], data: new Float32Array([1]) }],
      ["y", { shape: [1], data: new Float32Array([2]) }],
    ]);
    const b: HostTensors = new Map([...a].reverse());
    expect(writeSafetensors(a).equals(writeSafetensors(b))).toBe(true);
  });

  it("reads from a buffer at an unaligned offset", () => {
    const bytes = writeSafetensors(new Map([["w", { shape: [2], data: new Float32Array([1.5, 2.5]) }]]));
    const shifted = new Uint8Array(bytes.byteLength + 1);
    shifted.set(bytes, 1);
    const read = parseSafetensors(shifted.subarray(1));
    expect(Array.from(read.tensors.get("w")!.data)).toEqual([1.5, 2.5]);
  });

  it("refuses to write inconsistent tensors", () => {
    expect(() => writeSafetensors(new Map([["w", { shape: [3], data: new Float32Array(2) }]]))).toThrow(SafetensorsError);
    expect(() => writeSafetensors(new Map([["w", { shape: [-1], data: new Float32Array(0) }]]))).toThrow(/non-negative/);
    expect(() => writeSafetensors(new Map([["__metadata__", { shape: [0], data: new Float32Array(0) }]]))).toThrow(/reserved/);
  });
});

describe("streamed files and headers", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });
  const tensors: HostTensors = new Map([
    ["b", { shape: [2, 2], data: new Float32Array([1, -2, 1 / 3, 65519]) }],
    ["a", { shape: [3], data: new Float32Array([0.1, 1e-8, -70000]) }],
  ]);

  it("writes tensor by tensor the same bytes as writeSafetensors, and reads a header and one tensor alone", async () => {
    const dir = await mkdtemp(join(tmpdir(), "st-"));
    dirs.push(dir);
    const path = join(dir, "m.safetensors");
    const plans = [...tensors].map(([name, t]) => ({ name, shape: t.shape }));
    await writeSafetensorsFile(path, plans, async (name) => tensors.get(name)!.data, { metadata: { format: "pt" } });
    expect((await readFile(path)).equals(writeSafetensors(tensors, { format: "pt" }))).toBe(true);
    const header = await readSafetensorsHeader(path);
    expect(header.metadata).toEqual({ format: "pt" });
    expect(header.entries.map((e) => [e.name, e.dtype, e.shape, e.begin, e.end])).toEqual([["a", "F32", [3], 0, 12], ["b", "F32", [2, 2], 12, 28]]);
    expect(Array.from((await readTensor(path, header, header.entries[1])).data)).toEqual(Array.from(tensors.get("b")!.data));
  });

  it("writes F16 and BF16 rounded to nearest even, and reads them back", async () => {
    const dir = await mkdtemp(join(tmpdir(), "st-"));
    dirs.push(dir);
    for (const dtype of ["F16", "BF16"] as const) {
      const path = join(dir, `${dtype}.safetensors`);
      await writeSafetensorsFile(path, [{ name: "b", shape: [2, 2] }], async () => tensors.get("b")!.data, { dtype });
      const { tensors: read } = await readSafetensors(path);
      const bits = new Uint32Array(tensors.get("b")!.data.buffer);
      const encode = dtype === "F16" ? f32BitsToF16Bits : f32BitsToBf16Bits;
      const decode = dtype === "F16" ? f16BitsToNumber : bf16BitsToNumber;
      expect(Array.from(read.get("b")!.data)).toEqual(Array.from(bits, (b) => decode(encode(b))));
    }
  });

  it("refuses a header that does not fit the file, without reading the data", async () => {
    const dir = await mkdtemp(join(tmpdir(), "st-"));
    dirs.push(dir);
    const path = join(dir, "short.safetensors");
    await writeFile(path, writeSafetensors(tensors).subarray(0, -4));
    await expect(readSafetensorsHeader(path)).rejects.toThrow(/tensor "b": data_offsets \[12, 28\] run past the 24-byte data region/);
  });
});

/** The float32 bits of x. */
function bitsOf(x: number): number {
  return new Uint32Array(new Float32Array([x]).buffer)[0];
}

/**
 * Whether h is x rounded to nearest even in the format `decode` reads, judged only by
 * decoding: no value of the format between h and x, and a tie goes to the even code.
 */
function isNearestEven(x: number, h: number, decode: (bits: number) => number): boolean {
  const y = decode(h);
  if (Number.isNaN(x)) return Number.isNaN(y);
  if (Object.is(x, 0) || Object.is(x, -0)) return Object.is(y, x);
  const up = decode(x > 0 ? h + 1 : h - 1); // next magnitude in x's direction... or past it
  const down = decode(x > 0 ? h - 1 : h + 1);
  const d = Math.abs(x - y);
  for (const other of [up, down]) {
    if (!Number.isFinite(other) || Number.isNaN(other)) continue;
    const e = Math.abs(x - other);
    if (e < d) return false;
    if (e === d && (h & 1) === 1) return false;
  }
  return true;
}

describe("float32 to half precision encoding", () => {
  it("round-trips every F16 and BF16 value exactly", () => {
    for (let h = 0; h < 0x10000; h++) {
      const f16 = f16BitsToNumber(h);
      if (!Number.isNaN(f16)) expect(f32BitsToF16Bits(bitsOf(f16))).toBe(h);
      else expect(Number.isNaN(f16BitsToNumber(f32BitsToF16Bits(bitsOf(f16))))).toBe(true);
      const bf = bf16BitsToNumber(h);
      if (!Number.isNaN(bf)) expect(f32BitsToBf16Bits(bitsOf(bf))).toBe(h);
    }
  });

  it("rounds to nearest, ties to even, and overflows F16 to infinity", () => {
    expect(f32BitsToF16Bits(bitsOf(1 + 2 ** -11))).toBe(0x3c00); // tie: 1.0 is even
    expect(f32BitsToF16Bits(bitsOf(1 + 3 * 2 ** -11))).toBe(0x3c02); // tie: up to the even code
    expect(f32BitsToF16Bits(bitsOf(65519))).toBe(0x7bff);
    expect(f32BitsToF16Bits(bitsOf(65520))).toBe(0x7c00);
    expect(f32BitsToF16Bits(bitsOf(-1e10))).toBe(0xfc00);
    expect(f32BitsToF16Bits(bitsOf(2 ** -25))).toBe(0x0000); // tie with zero: zero is even
    expect(f32BitsToF16Bits(bitsOf(3 * 2 ** -25))).toBe(0x0002);
    expect(f32BitsToBf16Bits(bitsOf(1 + 2 ** -8))).toBe(0x3f80);
    expect(f32BitsToBf16Bits(bitsOf(1 + 3 * 2 ** -8))).toBe(0x3f82);
    expect(Number.isNaN(bf16BitsToNumber(f32BitsToBf16Bits(0x7f800001)))).toBe(true);
    expect(Number.isNaN(f16BitsToNumber(f32BitsToF16Bits(0x7f800001)))).toBe(true);
  });

  it("picks the nearest value for random float32 inputs of every magnitude", () => {
    let seed = 12345;
    const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
    for (let i = 0; i < 20000; i++) {
      const bits = next();
      const x = new Float32Array(new Uint32Array([bits]).buffer)[0];
      if (Math.abs(x) < 65504) expect(isNearestEven(x, f32BitsToF16Bits(bits), f16BitsToNumber), `F16 of ${x}`).toBe(true);
      if (Number.isFinite(x) && Math.abs(x) < 3e38) expect(isNearestEven(x, f32BitsToBf16Bits(bits), bf16BitsToNumber), `BF16 of ${x}`).toBe(true);
    }
  });

  it("encodes a float32 array in place of F32 and as 16-bit codes otherwise", () => {
    const data = new Float32Array([1, 0.1]);
    expect(encodeFloats(data, "F32").byteLength).toBe(8);
    expect(Array.from(new Uint16Array(encodeFloats(data, "BF16").buffer))).toEqual([0x3f80, 0x3dcd]);
  });
});

describe("half precision decoding", () => {
  it("decodes F16 known values, subnormals, inf and nan", () => {
    expect(f16BitsToNumber(0x3c00)).toBe(1);
    expect(f16BitsToNumber(0xc000)).toBe(-2);
    expect(f16BitsToNumber(0x3555)).toBe(0.333251953125);
    expect(f16BitsToNumber(0x7bff)).toBe(65504);
    expect(f16BitsToNumber(0x0400)).toBe(2 ** -14); // smallest normal
    expect(f16BitsToNumber(0x0001)).toBe(2 ** -24); // smallest subnormal
    expect(f16BitsToNumber(0x03ff)).toBe(1023 * 2 ** -24); // largest subnormal
    expect(Object.is(f16BitsToNumber(0x8000), -0)).toBe(true);
    expect(f16BitsToNumber(0x7c00)).toBe(Infinity);
    expect(f16BitsToNumber(0xfc00)).toBe(-Infinity);
    expect(f16BitsToNumber(0x7e00)).toBeNaN();
  });

  it("decodes BF16 known values, subnormals, inf and nan", () => {
    expect(bf16BitsToNumber(0x3f80)).toBe(1);
    expect(bf16BitsToNumber(0xc040)).toBe(-3);
    expect(bf16BitsToNumber(0x3eab)).toBe(0.333984375);
    expect(bf16BitsToNumber(0x0001)).toBe(2 ** -133); // smallest subnormal
    expect(bf16BitsToNumber(0x7f80)).toBe(Infinity);
    expect(bf16BitsToNumber(0xff80)).toBe(-Infinity);
    expect(bf16BitsToNumber(0x7fc0)).toBeNaN();
  });

  it("reads F16 and BF16 tensors into float32", () => {
    const data = new Uint8Array(new Uint16Array([0x3c00, 0x0001, 0xfc00, 0x3f80, 0x0001, 0x7fc0]).buffer);
    const bytes = file({ h: f32("F16", [3], [0, 6]), b: f32("BF16", [3], [6, 12]) }, data);
    const { tensors } = parseSafetensors(bytes);
    expect(Array.from(tensors.get("h")!.data)).toEqual([1, 2 ** -24, -Infinity]);
    const b = Array.from(tensors.get("b")!.data);
    expect(b.slice(0, 2)).toEqual([1, 2 ** -133]);
    expect(b[2]).toBeNaN();
  });
});

describe("malformed safetensors", () => {
  const four = new Uint8Array(4);

  it("refuses a file shorter than 8 bytes", () => {
    expectInvalid(new Uint8Array(5), /shorter than the 8-byte/);
  });
  it("refuses a header length past the end of the file", () => {
    expectInvalid(file({}, new Uint8Array(0), 1000n), /past the end/);
  });
  it("refuses a huge header length without allocating it", () => {
    expectInvalid(file({}, new Uint8Array(0), 2n ** 63n), /exceeds/);
  });
  it("refuses a header that is not JSON", () => {
    expectInvalid(file("{not json"), /not valid JSON/);
  });
  it("refuses a header that is not UTF-8", () => {
    const bytes = file("{}");
    bytes[8] = 0xff;
    expectInvalid(bytes, /UTF-8/);
  });
  it("refuses a header that is not an object", () => {
    expectInvalid(file("[1,2]"), /must start with "\{"/);
    expectInvalid(file("null"), /must start with "\{"/);
  });
  it("refuses bad metadata", () => {
    expectInvalid(file({ __metadata__: { n: 1 } }), /"n" is not a string/);
    expectInvalid(file({ __metadata__: [] }), /not an object of strings/);
  });
  it("refuses a tensor entry that is not an object", () => {
    expectInvalid(file({ w: 3 }), /tensor "w": header entry is not an object/);
  });
  it("names an unknown dtype", () => {
    expectInvalid(file({ w: f32("Q4", [1], [0, 4]) }, four), /tensor "w": unknown dtype "Q4"/);
  });
  it("refuses integer dtypes with a clear message", () => {
    expectInvalid(file({ ids: f32("I64", [1], [0, 8]) }, new Uint8Array(8)), /tensor "ids": dtype I64 is not supported/);
    expectInvalid(file({ m: f32("U8", [4], [0, 4]) }, four), /dtype U8 is not supported/);
    expectInvalid(file({ m: f32("I32", [1], [0, 4]) }, four), /dtype I32 is not supported/);
  });
  it("refuses a bad shape", () => {
    expectInvalid(file({ w: f32("F32", [-1], [0, 4]) }, four), /tensor "w": shape \[-1\]/);
    expectInvalid(file({ w: f32("F32", [1.5], [0, 4]) }, four), /non-negative integers/);
    expectInvalid(file({ w: { dtype: "F32", shape: "1", data_offsets: [0, 4] } }, four), /shape "1"/);
  });
  it("refuses malformed data_offsets", () => {
    expectInvalid(file({ w: f32("F32", [1], [0]) }, four), /not a pair/);
    expectInvalid(file({ w: f32("F32", [0], [4, 0]) }, four), /not ordered/);
    expectInvalid(file({ w: f32("F32", [2], [0, 8]) }, four), /run past the 4-byte data region/);
  });
  it("refuses overlapping tensors", () => {
    const data = new Uint8Array(8);
    expectInvalid(file({ a: f32("F32", [2], [0, 8]), b: f32("F32", [1], [4, 8]) }, data), /tensor "b".*overlap/);
  });
  it("refuses holes and trailing bytes", () => {
    const data = new Uint8Array(12);
    expectInvalid(file({ a: f32("F32", [1], [0, 4]), b: f32("F32", [1], [8, 12]) }, data), /tensor "b" starts at 8, leaving a hole after byte 4/);
    expectInvalid(file({ a: f32("F32", [1], [0, 4]) }, data), /cover 4 bytes of a 12-byte data region/);
  });
  it("refuses headers that are not exactly JSON: leading bytes, trailing garbage, duplicate names", () => {
    expectInvalid(file(' {"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'), /must start with "\{", found " \{/);
    expectInvalid(file('\n{}'), /must start with "\{"/);
    expectInvalid(file("{}\n"), /nothing but space padding/);
    expect(parseSafetensors(file("{}  ")).tensors.size).toBe(0);
    const twice = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
    expectInvalid(file(twice, new Uint8Array(8)), /tensor "w" appears more than once in the header/);
    expectInvalid(file('{"__metadata__":{"a":"x","a":"y"}}'), /"__metadata__" repeats the key "a"/);
  });
  it("refuses shapes and offsets not written as plain integers", () => {
    expectInvalid(file('{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', new Uint8Array(8)), /header number 2.0 is not written as a plain integer/);
    expectInvalid(file('{"w":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}', four), /header number 1e0/);
    expectInvalid(file('{"w":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}', four), /header number -0 /);
  });
  it("names the tensor and the dtype of an I32 tensor in an otherwise valid file", () => {
    const header = { w: f32("F32", [1], [0, 4]), position_ids: f32("I32", [1], [4, 8]) };
    expectInvalid(file(header, new Uint8Array(8)), /tensor "position_ids": dtype I32 is not supported/);
  });
  it("refuses a byte count that does not match the shape", () => {
    expectInvalid(file({ w: f32("F32", [3], [0, 8]) }, new Uint8Array(8)), /tensor "w": shape \[3\] of F32 needs 12 bytes, data_offsets give 8/);
    expectInvalid(file({ w: f32("F16", [2, 2], [0, 4]) }, four), /needs 8 bytes/);
    expectInvalid(file({ w: f32("F32", [2 ** 40, 2 ** 40], [0, 4]) }, four), /needs/);
  });
});
