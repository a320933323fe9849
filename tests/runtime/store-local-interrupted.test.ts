import * as fs from "node:fs/promises";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { LocalCheckpointStore } from "../../services/runtime/store/local-store.ts";

// fs/promises with rename replaceable per test: the commit step of a put.
vi.mock("node:fs/promises", async (importOriginal) => {
  const actual = await importOriginal<typeof import("node:fs/promises")>();
  return { ...actual, rename: vi.fn(actual.rename) };
});

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe("LocalCheckpointStore under an injected fs failure", () => {
  it("leaves no checkpoint and no partial folder when the commit fails", async () => {
    const base = await mkdtemp(join(tmpdir(), "store-int-"));
    dirs.push(base);
    const src = join(base, "src");
    await fs.mkdir(src);
    await writeFile(join(src, "config.json"), "{}");
    await writeFile(join(src, "model.safetensors"), Buffer.alloc(64, 7));
    const store = new LocalCheckpointStore(join(base, "root"));

    vi.mocked(fs.rename).mockRejectedValueOnce(Object.assign(new Error("EIO: simulated failure"), { code: "EIO" }));
    await expect(store.put(src, { kind: "model" })).rejects.toThrow(/simulated failure/);
    expect(await readdir(join(store.root, "checkpoints"))).toEqual([]);
    expect(await readdir(join(store.root, ".staging"))).toEqual([]);
    expect(await store.list()).toEqual([]);

    // The failure left no state behind: the same put now succeeds.
    const ref = await store.put(src, { kind: "model" });
    expect(await store.list()).toEqual([ref]);
    expect((await store.get(ref)).manifest.files["model.safetensors"].size).toBe(64);
  });

  it("keeps the old object and no staging when a streamed put's commit fails", async () => {
    const base = await mkdtemp(join(tmpdir(), "store-int-"));
    dirs.push(base);
    const store = new LocalCheckpointStore(join(base, "root"));
    const uri = "store://datasets/x.jsonl";
    await store.putObject(uri, Buffer.from("old"));
    await writeFile(join(base, "new.part"), "new");
    vi.mocked(fs.rename).mockRejectedValueOnce(Object.assign(new Error("EIO: simulated failure"), { code: "EIO" }));
    await expect(store.putObjectFile(uri, join(base, "new.part"))).rejects.toThrow(/simulated failure/);
    expect((await store.readObject(uri)).toString()).toBe("old");
    expect(await readdir(join(store.root, ".staging"))).toEqual([]);
  });
});
