/**
 * Temp files and folders named after the process that made them (a pid in the name): those
 * of a process that is gone (a crash) are swept when a service starts, while the ones a
 * process still holds are never taken.
 */
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

/** Whether a process of this host with this pid exists. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
