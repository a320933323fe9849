/**
 * Temp folders of imports and exports in progress, outside the store so nothing in them is
 * ever visible. Each is named <kind>-<pid>-<random>; the folders of a process that is gone
 * (a crash) are swept when the service starts, and the folders this process holds are
 * known here, so a sweep never takes one in use.
 */
import { randomUUID } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { sweepStale } from "../runtime/stale-temp.ts";

/** Folders in use in this process, whichever WorkDirs made them (several services may share a root). */
const held = new Set<string>();

export class WorkDirs {
  constructor(readonly root: string) {}

  /** A new empty folder; remove it with remove() whatever happens. */
  async create(kind: "import" | "export"): Promise<string> {
    const dir = join(this.root, `${kind}-${process.pid}-${randomUUID()}`);
    held.add(dir);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  async remove(dir: string): Promise<void> {
    await rm(dir, { recursive: true, force: true });
    held.delete(dir);
  }

  /** Removes the folders of processes that are gone, and this process's own strays. */
  sweep(): Promise<void> {
    return sweepStale(this.root, /^(?:import|export)-(\d+)-[0-9a-f-]+$/, held);
  }
}
