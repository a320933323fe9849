/**
 * One embedded executor per jobs folder: two processes sharing VACCINE_JOBS_DIR without a
 * queue would each load the other's jobs and run them twice. The executor holds
 * `executor.lock`, created with O_EXCL and holding its pid, host and start time, and
 * touches it every few seconds. A lock is stale when its process is gone (same host), or
 * when nobody touched it for STALE_MS (another host, or a reused pid): then it is taken over.
 */
import { closeSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, utimesSync, writeSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { processAlive } from "../runtime/stale-temp.ts";

export const LOCK_FILE = "executor.lock";
export const HEARTBEAT_MS = 5_000;
export const STALE_MS = 30_000;

export interface LockHolder {
  pid: number;
  host: string;
  since: string;
}

export interface JobsDirLock {
  readonly path: string;
  release(): void;
}

export type LockAttempt = { lock: JobsDirLock } | { heldBy: LockHolder };

// Paths this process holds: a second executor in the same process is refused too.
const held = new Set<string>();

/** Takes the jobs folder's lock, or says who holds it. */
export function lockJobsDir(dir: string): LockAttempt {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    const me: LockHolder = { pid: process.pid, host: os.hostname(), since: new Date().toISOString() };
    if (create(path, me)) return { lock: hold(path, me) };
    const holder = readHolder(path);
    if (!breakable(path, holder)) return { heldBy: holder ?? UNKNOWN };
    // Stale (or unreadable and old): break it under a second exclusive file, so two
    // processes breaking at once do not delete each other's fresh lock.
    const breaker = `${path}.break`;
    if (!create(breaker, me)) {
      if (ageMs(breaker) > STALE_MS) unlinkQuietly(breaker);
      continue;
    }
    try {
      if (breakable(path, readHolder(path))) unlinkQuietly(path);
    } finally {
      unlinkQuietly(breaker);
    }
  }
  return { heldBy: readHolder(path) ?? UNKNOWN };
}

const UNKNOWN: LockHolder = { pid: 0, host: "unknown", since: "" };

/** A lock without a readable holder is one being written right now, unless it is old. */
function breakable(path: string, holder: LockHolder | undefined): boolean {
  return holder ? isStale(path, holder) : ageMs(path) > 2_000;
}

function create(path: string, holder: LockHolder): boolean {
  let fd: number;
  try {
    fd = openSync(path, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
  try {
    writeSync(fd, JSON.stringify(holder));
  } finally {
    closeSync(fd);
  }
  return true;
}

function hold(path: string, me: LockHolder): JobsDirLock {
  held.add(path);
  const heartbeat = setInterval(() => {
    const now = new Date();
    try {
      utimesSync(path, now, now);
    } catch {
      // Removed under us: the next process start will say so; nothing to do here.
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();
  let released = false;
  return {
    path,
    release: () => {
      if (released) return;
      released = true;
      clearInterval(heartbeat);
      held.delete(path);
      const current = readHolder(path);
      if (current?.pid === me.pid && current.since === me.since) unlinkQuietly(path);
    },
  };
}

function readHolder(path: string): LockHolder | undefined {
  try {
    const h = JSON.parse(readFileSync(path, "utf8")) as LockHolder;
    return typeof h.pid === "number" && typeof h.host === "string" ? h : undefined;
  } catch {
    return undefined;
  }
}

function isStale(path: string, holder: LockHolder): boolean {
  if (ageMs(path) > STALE_MS) return true;
  if (holder.host !== os.hostname()) return false;
  // Our own pid without our own lock: an earlier process of this container left it.
  if (holder.pid === process.pid) return !held.has(path);
  return !processAlive(holder.pid);
}

function ageMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Already gone.
  }
}
