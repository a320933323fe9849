// A download's or export's ".part" output when the command is interrupted: removed before exit.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const dir = mkdtempSync(join(tmpdir(), "vaccine-part-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A process that holds `part` as a download would, until a signal comes. */
function holding(part: string) {
  const script = `import { removedOnInterrupt } from "./services/cli/partial-output.ts";
removedOnInterrupt(${JSON.stringify(part)});
console.log("ready");
setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  const ready = new Promise<void>((resolve) => child.stdout.once("data", () => resolve()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, ready, exited };
}

describe("removedOnInterrupt", () => {
  it.each([
    ["SIGINT", 130, "file"],
    ["SIGTERM", 143, "folder"],
  ] as const)("on %s removes the partial %s and exits %i", async (signal, code, kind) => {
    const part = join(dir, `out-${kind}.part`);
    if (kind === "file") writeFileSync(part, "half");
    else {
      mkdirSync(join(part, "sub"), { recursive: true });
      writeFileSync(join(part, "sub", "model.safetensors"), "half");
    }
    const p = holding(part);
    await p.ready;
    p.child.kill(signal);
    expect(await p.exited).toBe(code);
    expect(existsSync(part)).toBe(false);
  });
});
