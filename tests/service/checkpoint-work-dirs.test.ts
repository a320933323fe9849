// The temp folders of imports and exports: a sweep at start removes those of processes that
// are gone (a crash mid-import) and this process's strays, never a folder in use.
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { WorkDirs } from "../../services/checkpoints/work-dirs.ts";

const roots: string[] = [];
afterAll(async () => {
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

it("sweeps the folders of dead processes and strays, keeps held ones and foreign names", async () => {
  const root = await mkdtemp(join(tmpdir(), "vaccine-work-"));
  roots.push(root);
  const gone = spawnSync(process.execPath, ["-e", ""]).pid;
  const dead = join(root, `import-${gone}-0f0f0f0f-0000-4000-8000-000000000000`);
  const stray = join(root, `export-${process.pid}-1f1f1f1f-0000-4000-8000-000000000000`);
  const foreign = join(root, "not-ours");
  for (const dir of [dead, stray, foreign]) await mkdir(join(dir, "sub"), { recursive: true });
  const work = new WorkDirs(root);
  const held = await work.create("import");
  await work.sweep();
  expect((await readdir(root)).sort()).toEqual([held.slice(root.length + 1), "not-ours"].sort());
  await work.remove(held);
  expect(await readdir(root)).toEqual(["not-ours"]);
});
