import { spawnSync } from "node:child_process";
import * as fs from "node:fs/promises";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
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

describe("LocalCheckpointStore after a crash", () => {
  it("sweeps the staging folders of this host's processes that are gone, not a live one's nor another host's", async () => {
    const root = await mkdtemp(join(tmpdir(), "vaccine-staging-"));
    dirs.push(root);
    const store = new LocalCheckpointStore(root);
    // A stored object, which the sweep must leave alone.
    await store.putObject("store://datasets/x", Buffer.from("x"));
    const gone = spawnSync(process.execPath, ["-e", ""]).pid!;
    const host = hostname().replace(/[^A-Za-z0-9.-]/g, "_");
    const staging = join(root, ".staging");
    const names = { crashed: `a.${gone}@${host}`, live: `b.${process.ppid}@${host}`, foreign: `c.${gone}@not-${host}` };
    for (const name of Object.values(names)) await mkdir(join(staging, name, "files"), { recursive: true });
    await new LocalCheckpointStore(root).sweepStaging();
    expect((await readdir(staging)).sort()).toEqual([names.live, names.foreign].sort());
    expect(await store.readObject("store://datasets/x")).toEqual(Buffer.from("x"));
  });
});

