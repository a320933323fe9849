/**
 * Reloads on file change, for credentials rotated in place (cert-manager renewals, a
 * Kubernetes Secret update, an edited tokens file) without a restart.
 *
 * The parent folders are watched, not the files: a Secret volume swaps a `..data` symlink
 * and editors replace files by rename, and a watch on the old inode would miss both. A
 * slow stat poll backs the watch up on filesystems without change events. Changes are
 * debounced (a certificate and its key are written one after the other) and a reload only
 * runs when the content changed.
 */
import { createHash } from "node:crypto";
import { readFileSync, watch, type FSWatcher } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import type { Logger } from "./log.ts";

export interface FileWatch {
  close(): void;
}

export interface WatchOptions {
  /** Wait after the last change event before reloading. */
  debounceMs?: number;
  /** Poll interval of the backup check (0: none). */
  pollMs?: number;
  logger?: Logger;
  /** For logs: what is being reloaded, e.g. "TLS certificate". */
  what: string;
}

/**
 * Calls `reload` with the files' contents whenever any of them changes. `reload` may throw
 * (a half-written rotation): the error is logged, the old state stays, and the next change
 * retries.
 */
export function watchFiles(paths: string[], reload: (contents: Buffer[]) => void, options: WatchOptions): FileWatch {
  // The initial load is the caller's: a bad file at start must fail the start, not log.
  const files = paths.map((p) => resolve(p));
  const names = new Set(files.map((f) => basename(f)));
  const debounceMs = options.debounceMs ?? 200;
  let last = digest(files);
  // A content that failed to load is not retried (nor logged again) until it changes.
  let failed = "";
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const check = () => {
    timer = undefined;
    if (closed) return;
    let contents: Buffer[];
    try {
      contents = files.map((f) => readFileSync(f));
    } catch (err) {
      options.logger?.warn({ what: options.what, error: (err as Error).message }, "could not read changed credentials; keeping the current ones");
      return;
    }
    const d = digestOf(contents);
    if (d === last || d === failed) return;
    try {
      reload(contents);
      last = d;
      options.logger?.info({ what: options.what }, "reloaded");
    } catch (err) {
      failed = d;
      options.logger?.warn({ what: options.what, error: (err as Error).message }, "could not load changed credentials; keeping the current ones");
    }
  };
  const schedule = () => {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(check, debounceMs);
    timer.unref();
  };

  const watchers: FSWatcher[] = [];
  for (const dir of new Set(files.map((f) => dirname(f)))) {
    try {
      // Any name: a Secret volume changes `..data`, not the file names themselves.
      const w = watch(dir, { persistent: false }, (_event, name) => {
        if (name === null || names.has(String(name)) || String(name).startsWith("..")) schedule();
      });
      w.on("error", () => {}); // the poll still runs
      watchers.push(w);
    } catch {
      // The poll covers folders that cannot be watched.
    }
  }
  const poll = (options.pollMs ?? 30_000) > 0 ? setInterval(schedule, options.pollMs ?? 30_000) : undefined;
  poll?.unref();

  return {
    close() {
      closed = true;
      clearTimeout(timer);
      clearInterval(poll);
      for (const w of watchers) w.close();
    },
  };
}

function digestOf(contents: Buffer[]): string {
  const h = createHash("sha256");
  for (const c of contents) h.update(createHash("sha256").update(c).digest());
  return h.digest("hex");
}

function digest(files: string[]): string {
  try {
    return digestOf(files.map((f) => readFileSync(f)));
  } catch {
    return "";
  }
}
