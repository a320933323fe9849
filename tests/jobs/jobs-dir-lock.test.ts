// The embedded executor's lock on its jobs folder: exclusive, released at shutdown, and taken
// over when its holder is gone.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import os, { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { LOCK_FILE, lockJobsDir, STALE_MS } from "../../services/jobs/jobs-dir-lock.ts";

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "vaccine-lock-"));
  dirs.push(d);
  return d;
};
const writeHolder = (dir: string, holder: object) => writeFileSync(join(dir, LOCK_FILE), JSON.stringify(holder));

describe("lockJobsDir", () => {
  it("is exclusive, names its holder, and is free again once released", () => {
    const dir = tempDir();
    const first = lockJobsDir(dir);
    if (!("lock" in first)) throw new Error("the first lock must succeed");
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8"))).toMatchObject({ pid: process.pid, host: os.hostname() });
    // A second executor, even in the same process, is refused.
    expect(lockJobsDir(dir)).toEqual({ heldBy: expect.objectContaining({ pid: process.pid, host: os.hostname() }) });
    first.lock.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    const again = lockJobsDir(dir);
    expect("lock" in again).toBe(true);
    if ("lock" in again) again.lock.release();
  });

  it("takes over a lock whose process is gone", () => {
    const dir = tempDir();
    const gone = spawnSync(process.execPath, ["-e", ""]).pid!;
    writeHolder(dir, { pid: gone, host: os.hostname(), since: "2020-01-01T00:00:00Z" });
    const attempt = lockJobsDir(dir);
    expect("lock" in attempt).toBe(true);
    if ("lock" in attempt) attempt.lock.release();
  });

  it("takes over a lock whose process was killed but not yet reaped (a zombie), as after kill -9 and a restart at once", async () => {
    // sh starts a short child, then becomes a long sleep that never reaps it: the child stays a zombie.
    const parent = spawn("sh", ["-c", "sleep 0.1 & echo $!; exec sleep 30"], { stdio: ["ignore", "pipe", "ignore"] });
    try {
      const zombie = Number(await new Promise<string>((resolve) => parent.stdout.once("data", (d) => resolve(String(d)))));
      await vi.waitFor(() => expect(readFileSync(`/proc/${zombie}/stat`, "utf8")).toMatch(/\) Z /), { timeout: 5_000 });
      expect(() => process.kill(zombie, 0)).not.toThrow();
      const dir = tempDir();
      writeHolder(dir, { pid: zombie, host: os.hostname(), since: "2020-01-01T00:00:00Z" });
      const attempt = lockJobsDir(dir);
      expect("lock" in attempt).toBe(true);
      if ("lock" in attempt) attempt.lock.release();
    } finally {
      parent.kill();
    }
  });

  it("respects a fresh lock of another host and takes over one nobody touched for STALE_MS", () => {
    const dir = tempDir();
    writeHolder(dir, { pid: 1, host: "another-pod", since: "2020-01-01T00:00:00Z" });
    expect(lockJobsDir(dir)).toEqual({ heldBy: { pid: 1, host: "another-pod", since: "2020-01-01T00:00:00Z" } });
    const old = new Date(Date.now() - STALE_MS - 1000);
    utimesSync(join(dir, LOCK_FILE), old, old);
    const attempt = lockJobsDir(dir);
    expect("lock" in attempt).toBe(true);
    if ("lock" in attempt) attempt.lock.release();
  });

  it("respects a lock of a live process on this host", () => {
    const dir = tempDir();
    // The parent of this test process is alive for as long as the test runs.
    writeHolder(dir, { pid: process.ppid, host: os.hostname(), since: "2020-01-01T00:00:00Z" });
    expect(lockJobsDir(dir)).toEqual({ heldBy: expect.objectContaining({ pid: process.ppid }) });
  });
});
