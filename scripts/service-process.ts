// A service entrypoint as its own process, for tests and benches.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface ServiceProcess {
  child: ChildProcess;
  port: number;
  /** Everything the process wrote to stderr (its JSON log). */
  log: () => string;
  exited: Promise<{ code: number | null; signal: string | null; at: number }>;
  /** SIGTERM unless it has exited, then its exit. */
  stop: () => Promise<void>;
}

/**
 * Starts an entrypoint as its own Node process on port 0 and waits for its "serving" line:
 * compiled JavaScript (dist/) as deployed, or TypeScript sources through tsx. Its store, job
 * records and cache go to a temporary folder removed when it exits, unless `env` names them:
 * the defaults (.data/ in the project) are the developer's, not the suite's.
 */
export function startProcess(entry: string, env: Record<string, string> = {}): Promise<ServiceProcess> {
  const scratch = mkdtempSync(join(tmpdir(), "vaccine-process-"));
  const folders = { VACCINE_STORE_ROOT: join(scratch, "store"), VACCINE_JOBS_DIR: join(scratch, "jobs"), VACCINE_CACHE_DIR: join(scratch, "cache") };
  const child = spawn(process.execPath, entry.endsWith(".ts") ? ["--import", "tsx", entry] : [entry], {
    env: { ...process.env, VACCINE_PORT: "0", VACCINE_HOST: "127.0.0.1", ...folders, ...env },
    // Its log is on stderr; stdout unread must not fill a pipe and stall it.
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  const exited = new Promise<{ code: number | null; signal: string | null; at: number }>((resolve) =>
    child.once("exit", (code, signal) => {
      rmSync(scratch, { recursive: true, force: true });
      resolve({ code, signal, at: Date.now() });
    }),
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "serving" line within 30 s:\n${stderr}`)), 30_000);
    child.stderr!.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      const line = stderr.split("\n").find((l) => l.includes('"msg":"serving"'));
      if (line) {
        clearTimeout(timer);
        const stop = async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
          await exited;
        };
        resolve({ child, port: JSON.parse(line).port, log: () => stderr, exited, stop });
      }
    });
    void exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before serving:\n${stderr}`));
    });
  });
}
