import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createStore } from "../../services/runtime/store/create-store.ts";
import { S3CheckpointStore, type S3StoreOptions } from "../../services/runtime/store/s3-store.ts";
import {
  CheckpointIntegrityError,
  CheckpointNotFoundError,
  InvalidStoreUriError,
  StoreObjectNotFoundError,
  StoreObjectTooLargeError,
  checkpointRef,
} from "../../services/runtime/store/store.ts";

// s3rver ships no type declarations: describe the little this test uses.
interface S3rverServer {
  run(): Promise<{ port: number }>;
  close(callback: (err?: Error) => void): void;
}
const S3rver = createRequire(import.meta.url)("s3rver") as new (options: object) => S3rverServer;

const BUCKET = "ckpt";
const PREFIX = "team-a/";
const dirs: string[] = [];
const stores: S3CheckpointStore[] = [];
let server: S3rverServer;
let raw: S3Client;
let settings: Omit<S3StoreOptions, "cacheDir">;

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "s3-"));
  dirs.push(dir);
  return dir;
}

/** A store with its own empty cache, so get() must download. */
async function freshStore(): Promise<S3CheckpointStore> {
  const store = new S3CheckpointStore({ ...settings, cacheDir: join(await tempDir(), "cache") });
  stores.push(store);
  return store;
}

async function sourceFolder(content = "{}"): Promise<string> {
  const dir = await tempDir();
  await writeFile(join(dir, "config.json"), content);
  await mkdir(join(dir, "sub"));
  await writeFile(join(dir, "sub", "model.safetensors"), Buffer.alloc(3000, 9));
  return dir;
}

beforeAll(async () => {
  server = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory: await tempDir(),
    configureBuckets: [{ name: BUCKET }],
  });
  const { port } = await server.run();
  settings = {
    bucket: BUCKET,
    prefix: PREFIX,
    endpoint: `http://127.0.0.1:${port}`,
    region: "us-east-1",
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    forcePathStyle: true,
  };
  raw = new S3Client({ ...settings, requestChecksumCalculation: "WHEN_REQUIRED" });
});

afterAll(async () => {
  // Client sockets first, or the server's close waits on keep-alive connections.
  for (const store of stores) store.close();
  raw?.destroy();
  await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe("S3CheckpointStore against s3rver", () => {
  it("round-trips through the bucket into a fresh cache", async () => {
    const writer = await freshStore();
    const ref = await writer.put(await sourceFolder(), { kind: "model", meta: { parent: null } });
    expect(ref.uri).toMatch(/^store:\/\/checkpoints\/[0-9a-f]{64}$/);

    const reader = await freshStore();
    expect(await reader.exists(ref)).toBe(true);
    const { dir, manifest } = await reader.get(ref);
    expect(manifest.kind).toBe("model");
    expect(Object.keys(manifest.files).sort()).toEqual(["config.json", "sub/model.safetensors"]);
    expect(await readFile(join(dir, "sub", "model.safetensors"))).toEqual(Buffer.alloc(3000, 9));
    expect(await reader.readManifest(ref)).toEqual(manifest);
    expect((await reader.get(ref)).dir).toBe(dir); // served from the verified cache
    expect(await reader.list()).toContainEqual(ref);
  });

  it("deletes a checkpoint: manifest, files and the local cache copy; twice is harmless", async () => {
    const store = await freshStore();
    const ref = await store.put(await sourceFolder('{"v":"deleted"}'), { kind: "model" });
    const { dir } = await store.get(ref); // cached locally
    await store.delete(ref);
    expect(await store.exists(ref)).toBe(false);
    await expect(store.get(ref)).rejects.toThrow(CheckpointNotFoundError);
    const left = await raw.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${PREFIX}checkpoints/${ref.uri.slice(-64)}/` }));
    expect(left.Contents ?? []).toEqual([]);
    await expect(readFile(join(dir, "config.json"))).rejects.toThrow(/ENOENT/);
    await store.delete(ref);
  });

  it("is idempotent", async () => {
    const store = await freshStore();
    const a = await store.put(await sourceFolder('{"v":1}'), { kind: "model" });
    const b = await (await freshStore()).put(await sourceFolder('{"v":1}'), { kind: "model" });
    expect(b).toEqual(a);
    expect((await store.list()).filter((r) => r.uri === a.uri)).toHaveLength(1);
  });

  it("detects an object corrupted in the bucket", async () => {
    const ref = await (await freshStore()).put(await sourceFolder('{"v":2}'), { kind: "model" });
    const key = `${PREFIX}checkpoints/${ref.uri.slice(-64)}/files/config.json`;
    await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: '{"v":3}' }));
    const reader = await freshStore();
    await expect(reader.get(ref)).rejects.toThrow(CheckpointIntegrityError);
    await expect(reader.get(ref)).rejects.toThrow(/config.json is 7 bytes with sha256/);
  });

  it("detects a tampered manifest and a ref with the wrong digest", async () => {
    const ref = await (await freshStore()).put(await sourceFolder('{"v":4}'), { kind: "model" });
    const reader = await freshStore();
    await expect(reader.get({ uri: ref.uri, digest: `sha256:${"1".repeat(64)}` })).rejects.toThrow(InvalidStoreUriError);
    const key = `${PREFIX}checkpoints/${ref.uri.slice(-64)}/manifest.json`;
    await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: "{}" }));
    await expect(reader.get(ref)).rejects.toThrow(/hashes to/);
  });

  it("re-downloads a corrupted cache entry", async () => {
    const store = await freshStore();
    const ref = await store.put(await sourceFolder('{"v":5}'), { kind: "model" });
    const { dir } = await store.get(ref);
    await writeFile(join(dir, "config.json"), "tampered");
    const again = await store.get(ref);
    expect(await readFile(join(again.dir, "config.json"), "utf8")).toBe('{"v":5}');
  });

  it("reports missing checkpoints and hides uncommitted ones", async () => {
    const store = await freshStore();
    const missing = checkpointRef("e".repeat(64));
    await expect(store.get(missing)).rejects.toThrow(CheckpointNotFoundError);
    expect(await store.exists(missing)).toBe(false);
    // An interrupted put: files uploaded, manifest (the commit marker) never written.
    const partial = checkpointRef("d".repeat(64));
    await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${PREFIX}checkpoints/${"d".repeat(64)}/files/config.json`, Body: "{}" }));
    expect(await store.exists(partial)).toBe(false);
    expect(await store.list()).not.toContainEqual(partial);
    await expect(store.get(partial)).rejects.toThrow(CheckpointNotFoundError);
  });

  it("puts a file streamed, reads it as a stream, lists and deletes objects", async () => {
    const store = await freshStore();
    const src = join(await tempDir(), "upload.part");
    const bytes = Buffer.alloc(300_000, 7);
    await writeFile(src, bytes);
    const uri = "store://uploads/a/big.jsonl";
    expect(await store.putObjectFile(uri, src)).toEqual({ uri, size: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") });
    // Buffer.equals: a deep toEqual over 300k elements is slow.
    expect(Buffer.concat(await (await store.readObjectStream(uri)).toArray()).equals(bytes)).toBe(true);
    await store.putObject("store://uploads/b.json", Buffer.from("{}"));
    await store.putObject("store://uploadsx/c.json", Buffer.from("{}"));
    // A key no store URI can name (another tool's) is not listed.
    await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${PREFIX}uploads/.hidden`, Body: "x" }));
    const listed = await store.listObjects("store://uploads");
    expect(listed.map((o) => [o.uri, o.size])).toEqual([["store://uploads/a/big.jsonl", 300_000], ["store://uploads/b.json", 2]]);
    expect(listed[0].modified.getTime()).toBeGreaterThan(Date.now() - 60_000);
    await store.deleteObject(uri);
    await store.deleteObject(uri); // idempotent
    await expect(store.readObjectStream(uri)).rejects.toThrow(StoreObjectNotFoundError);
    expect((await store.listObjects("store://uploads")).map((o) => o.uri)).toEqual(["store://uploads/b.json"]);
    await expect(store.listObjects("store://checkpoints")).rejects.toThrow(/checkpoint/);
  });

  it("stores and reads dataset objects with a size limit", async () => {
    const store = createStore({ kind: "s3", ...settings, cacheDir: join(await tempDir(), "cache") }) as S3CheckpointStore;
    stores.push(store);
    const uri = "store://datasets/train.jsonl";
    expect((await store.putObject(uri, Buffer.from('{"x":1}\n'))).size).toBe(8);
    expect((await store.readObject(uri)).toString()).toBe('{"x":1}\n');
    await expect(store.readObject(uri, { maxBytes: 4 })).rejects.toThrow(StoreObjectTooLargeError);
    await expect(store.readObject("store://datasets/none.jsonl")).rejects.toThrow(StoreObjectNotFoundError);
  });
});
