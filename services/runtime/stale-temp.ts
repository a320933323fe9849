/**
 * Temp files and folders named after the process that made them (a pid in the name): those
 * of a process that is gone (a crash) are swept when a service starts, while the ones a
 * process still holds are never taken.
 */
import { readFileSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";

/**
 * Removes the entries of `dir` whose name matches `pattern` (its first group is the pid)
 * and whose process is gone, or is this one but no longer holds them (`held`: full paths).
 */
export async function sweepStale(dir: string, pattern: RegExp, held: ReadonlySet<string>): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const pid = Number(pattern.exec(name)?.[1]);
    const path = join(dir, name);
    if (!Number.isInteger(pid) || held.has(path)) continue;
    if (pid === process.pid || !processAlive(pid)) await rm(path, { recursive: true, force: true });
  }
}

/**
 * Whether a process of this host with this pid runs. A zombie does not: a process killed
 * (kill -9) stays one until its parent reaps it, and a restart right after must not take it
 * for the holder of what it held.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  return !zombie(pid);
}

/** Linux's state letter in /proc/<pid>/stat, after the parenthesised name; elsewhere never a zombie. */
function zombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return false;
  }
}
