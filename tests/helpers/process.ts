import { spawn, type ChildProcess } from "node:child_process";

export interface ServiceProcess {
  child: ChildProcess;
  port: number;
  /** Everything the process wrote to stderr (its JSON log). */
  log: () => string;
  exited: Promise<{ code: number | null; signal: string | null; at: number }>;
}

/**
 * Starts an entrypoint as its own Node process on port 0 and waits for its "serving" line:
 * compiled JavaScript (dist/) as deployed, or TypeScript sources through tsx.
 */
export function startProcess(entry: string, env: Record<string, string> = {}): Promise<ServiceProcess> {
  const child = spawn(process.execPath, entry.endsWith(".ts") ? ["--import", "tsx", entry] : [entry], {
    env: { ...process.env, VACCINE_PORT: "0", VACCINE_HOST: "127.0.0.1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  const exited = new Promise<{ code: number | null; signal: string | null; at: number }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "serving" line within 30 s:\n${stderr}`)), 30_000);
    child.stderr!.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      const line = stderr.split("\n").find((l) => l.includes('"msg":"serving"'));
      if (line) {
        clearTimeout(timer);
        resolve({ child, port: JSON.parse(line).port, log: () => stderr, exited });
      }
    });
    void exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before serving:\n${stderr}`));
    });
  });
}
