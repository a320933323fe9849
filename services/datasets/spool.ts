/**
 * Temp files for uploads in progress, outside the store so nothing in them is ever visible.
 * Each is named <pid>-<random>.part; a file whose process is gone (a crash) is swept when a
 * service starts. Files this process holds open are known here, so a sweep never takes one.
 */
import { createHash, randomUUID } from "node:crypto";
import { type FileHandle, mkdir, open, rm } from "node:fs/promises";
import { join } from "node:path";
import { sweepStale } from "../runtime/stale-temp.ts";

/** Paths of the spools this process has open. */
const held = new Set<string>();

export class Spool {
  private readonly hash = createHash("sha256");
  size = 0;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  static async create(dir: string): Promise<Spool> {
    await mkdir(dir, { recursive: true });
    const path = join(dir, `${process.pid}-${randomUUID()}.part`);
    held.add(path);
    try {
      return new Spool(path, await open(path, "wx"));
    } catch (err) {
      held.delete(path);
      throw err;
    }
  }

  /** Counts and hashes bytes (every byte of the upload, kept or not). */
  count(chunk: Uint8Array): void {
    this.size += chunk.byteLength;
    this.hash.update(chunk);
  }

  /** Appends bytes to the file; awaited per chunk, so a fast client cannot outrun the disk. */
  async write(chunk: Uint8Array): Promise<void> {
    await this.handle.write(chunk);
  }

  /** Hex sha256 of the counted bytes; call once. */
  digest(): string {
    return this.hash.digest("hex");
  }

  /** Closes and deletes the file; safe to call more than once. */
  async remove(): Promise<void> {
    if (!held.has(this.path)) return;
    held.delete(this.path);
    await this.handle.close().catch(() => undefined);
    await rm(this.path, { force: true });
  }
}

/** Removes the temp files of processes that are gone, and this process's own strays. */
export function sweepSpools(dir: string): Promise<void> {
  return sweepStale(dir, /^(\d+)-[0-9a-f-]+\.part$/, held);
}
