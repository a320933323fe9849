// Running the CLI in tests: in process with captured streams, or as `node bin/vaccine.mjs`.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { runCli } from "../../services/cli/cli.ts";
import type { Output } from "../../services/cli/output.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { putExamples } from "../helpers/tiny-store.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const BIN = "bin/vaccine.mjs";

/** A stream that keeps what was written; isTTY and columns make it pass for a terminal. */
export class Capture implements Output {
  text = "";
  constructor(
    readonly isTTY = false,
    readonly columns?: number,
  ) {}
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
}

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The command function in this process, with non-TTY captured streams. */
export async function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runCli(args, { stdout, stderr, env });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

function start(args: string[], env: Record<string, string>): ChildProcess {
  // stdout is a pipe, so the CLI must choose plain output by itself.
  return spawn(process.execPath, [BIN, ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
}

/** `node bin/vaccine.mjs ...args` to its exit. */
export function vaccine(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const child = start(args, env);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.once("close", (code) => resolve({ code, stdout, stderr })));
}

/** `vaccine serve ...args`, resolved once its "serving" log line names the port. */
export function serve(args: string[], env: Record<string, string>): Promise<{ child: ChildProcess; port: number; exited: Promise<number | null> }> {
  const child = start(["serve", ...args], env);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "serving" line within 30 s:\n${log}`)), 30_000);
    child.stderr!.on("data", (chunk: Buffer) => {
      log += chunk.toString();
      const line = log.split("\n").find((l) => l.includes('"msg":"serving"'));
      if (line) {
        clearTimeout(timer);
        resolve({ child, port: JSON.parse(line).port, exited });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code} before serving:\n${log}`));
    });
  });
}

/** A suite on port 0 with the tiny world's examples stored at `data`, the env that points the CLI at it, and its base model as a CLI ref. */
export async function trainingSuite(data: string): Promise<{ suite: TestSuite; env: Record<string, string>; base: string }> {
  await selectBackend("wasm", () => {});
  const suite = await startSuite();
  await putExamples(suite.deps.store, data);
  return { suite, env: { VACCINE_ADDRESS: suite.server.url }, base: `${suite.base.uri}@${suite.base.digest}` };
}

/** The flags of a two-step job on the tiny model over `data`. */
export const trainFlags = (data: string) => ["--data", data, "--max-steps", "2", "--batch-size", "3", "--lr", "0.03", "--max-seq-len", "64", "--rank", "4", "--dropout", "0"];

/** --json output: one proto JSON object a line. */
export const jsonLines = (text: string) => text.trim().split("\n").map((l) => JSON.parse(l));
