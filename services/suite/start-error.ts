/**
 * What stops a start on a setting that names a file or folder which cannot be used: one line
 * naming the variable and its value, and exit 2 (run.ts), never a stack trace.
 */
import { accessSync, constants, existsSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";

export class StartError extends Error {
  override name = "StartError";
}

const WHY: Record<string, string> = {
  ENOENT: "does not exist",
  EACCES: "is not readable or writable by this process",
  EPERM: "is not permitted",
  ENOTDIR: "has a file where a folder should be",
  EISDIR: "is a folder, not a file",
  EROFS: "is on a read-only file system",
  EEXIST: "is a file, not a folder",
};

const because = (err: unknown) => {
  const e = err as NodeJS.ErrnoException;
  return (e.code && WHY[e.code]) ?? e.message;
};

/** Runs `load` (reading the file `variable` names); its failure becomes a StartError naming both. */
export async function fromSetting<T>(variable: string, value: string, load: () => T | Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    throw new StartError(`${variable}=${value}: ${because(err)}`);
  }
}

/** The folder `variable` names exists (made if missing) and this process can write to it. */
export function checkFolder(variable: string, dir: string): void {
  try {
    // One level at a time: Node's recursive mkdir loops for ever under /proc.
    const missing: string[] = [];
    for (let at = resolve(dir); !existsSync(at) && dirname(at) !== at; at = dirname(at)) missing.unshift(at);
    for (const folder of missing) mkdirSync(folder);
    accessSync(dir, constants.W_OK);
  } catch (err) {
    throw new StartError(`${variable}=${dir}: ${because(err)}`);
  }
}
