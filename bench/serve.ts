/** What the benches share: the suite started as a child process, and latency quantiles. */
import { spawn } from "node:child_process";

/** Starts `node <args>` with `env` over this process's, and resolves once it logs its port. */
export async function serve(args: readonly string[], env: Record<string, string>): Promise<{ port: number; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [...args], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  const exited = new Promise((r) => child.once("exit", r));
  const port = await new Promise<number>((resolve, reject) => {
    let err = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      err += chunk.toString();
      const line = err.split("\n").find((l) => l.includes('"msg":"serving"'));
      if (line) resolve(JSON.parse(line).port);
    });
    child.once("exit", (code) => reject(new Error(`exited ${code} before serving:\n${err}`)));
  });
  return { port, stop: async () => void (child.kill("SIGTERM"), await exited) };
}

/** The q-quantile of xs (nearest rank). */
export const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];
