// committedAt on both stores: the time of the first commit, kept when the same content is put again.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";
import { S3CheckpointStore } from "../../services/runtime/store/s3-store.ts";
import { CheckpointNotFoundError, checkpointRef, type CheckpointStore } from "../../services/runtime/store/store.ts";

interface S3rverServer {
  run(): Promise<{ port: number }>;
  close(callback: (err?: Error) => void): void;
}
const S3rver = createRequire(import.meta.url)("s3rver") as new (options: object) => S3rverServer;

const dirs: string[] = [];
const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "vaccine-committed-"));
  dirs.push(dir);
  return dir;
}

async function checkCommittedAt(store: CheckpointStore): Promise<void> {
  const src = await tempDir();
  await writeFile(join(src, "config.json"), "{}");
  const before = Date.now();
  const ref = await store.put(src, { kind: "model" });
  const first = await store.committedAt(ref);
  // Whole seconds on S3: allow the truncation.
  expect(first.getTime()).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
  expect(first.getTime()).toBeLessThanOrEqual(Date.now());
  await new Promise((resolve) => setTimeout(resolve, 1100));
  expect(await store.put(src, { kind: "model" })).toEqual(ref);
  expect((await store.committedAt(ref)).getTime()).toBe(first.getTime());
  await expect(store.committedAt(checkpointRef("0".repeat(64)))).rejects.toThrow(CheckpointNotFoundError);
}

describe("committedAt", () => {
  it("local store: the manifest's commit time, unchanged by a second put", async () => {
    await checkCommittedAt(new LocalCheckpointStore(await tempDir()));
  });

  it("S3 store: the manifest object's time, unchanged by a second put", async () => {
    const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: await tempDir(), configureBuckets: [{ name: "ckpt" }] });
    const { port } = await server.run();
    cleanups.push(() => new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve()))));
    const store = new S3CheckpointStore({
      bucket: "ckpt",
      endpoint: `http://127.0.0.1:${port}`,
      region: "us-east-1",
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
      forcePathStyle: true,
      cacheDir: join(await tempDir(), "cache"),
    });
    cleanups.push(() => store.close());
    await checkCommittedAt(store);
  });
});
