// The import directions of docs/architecture.md, enforced by dependency-cruiser with the
// project's own rules (.dependency-cruiser.cjs): the tree obeys them, and each rule rejects
// a deliberately inverted import in a scratch tree of the same layout.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "..");
const CONFIG = join(ROOT, ".dependency-cruiser.cjs");
const DEPCRUISE = join(ROOT, "node_modules/dependency-cruiser/bin/dependency-cruise.mjs");

interface Violation {
  from: string;
  to: string;
  rule: { name: string };
  cycle?: { name: string }[];
}

function cruise(cwd: string, paths: string[]): Violation[] {
  let out: string;
  try {
    out = execFileSync(process.execPath, [DEPCRUISE, "--config", CONFIG, "--output-type", "json", ...paths], { cwd, encoding: "utf8", maxBuffer: 64 << 20 });
  } catch (err) {
    // Exit code = number of errors; the report is still on stdout.
    out = (err as { stdout: string }).stdout;
  }
  return JSON.parse(out).summary.violations;
}

describe("docs/architecture.md", () => {
  it("describes every folder of services/ and every rule of the import check", () => {
    const doc = readFileSync(join(ROOT, "docs/architecture.md"), "utf8");
    const folders = readdirSync(join(ROOT, "services"), { withFileTypes: true }).filter((d) => d.isDirectory());
    for (const d of folders) expect(doc, d.name).toContain(`\`${d.name}/\``);
    expect(doc).toContain(".dependency-cruiser.cjs");
  });
});

describe("import directions", () => {
  it("hold for the whole tree", () => {
    const violations = cruise(ROOT, ["services", "gen", "bench", "scripts"]);
    expect(violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`)).toEqual([]);
  }, 60_000);

  const scratch = mkdtempSync(join(tmpdir(), "vaccine-arch-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));
  const files: Record<string, string> = {
    "tsconfig.json": JSON.stringify({ compilerOptions: { module: "NodeNext", moduleResolution: "NodeNext", allowImportingTsExtensions: true, noEmit: true } }),
    // Inverted: the runtime reaching up into platform, platform into jobs, jobs into a service.
    "services/runtime/model.ts": 'import { rpc } from "../platform/errors.ts";\nexport const m = rpc;\n',
    "services/platform/errors.ts": 'import { job } from "../jobs/work.ts";\nexport const rpc = job;\n',
    "services/jobs/work.ts": 'import { svc } from "../align/service.ts";\nexport const job = svc;\n',
    // A service importing a sibling; its main.ts starting the process is allowed.
    "services/align/service.ts": 'import { e } from "../embed/service.ts";\nexport const svc = e;\n',
    "services/align/main.ts": 'import { run } from "../suite/run.ts";\nrun();\n',
    "services/embed/service.ts": "export const e = 1;\n",
    "services/suite/run.ts": "export const run = () => {};\n",
    // The experiment importing the CLI.
    "services/experiment/x.ts": 'import { c } from "../cli/client.ts";\nexport const x = c;\n',
    "services/cli/client.ts": "export const c = 1;\n",
    // A value cycle (rejected, reported once) and a cycle whose back edge is type-only (allowed).
    "services/runtime/p.ts": 'import { q } from "./q.ts";\nexport const p = () => q;\n',
    "services/runtime/q.ts": 'import { p } from "./p.ts";\nexport const q = () => p;\n',
    "services/runtime/s.ts": 'import type { T } from "./t.ts";\nexport const s = (t: T) => t;\n',
    "services/runtime/t.ts": 'import { s } from "./s.ts";\nexport type T = number;\nexport const t = s;\n',
  };
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(scratch, path)), { recursive: true });
    writeFileSync(join(scratch, path), text);
  }

  it("reject each deliberately inverted import, and only those", () => {
    const found = cruise(scratch, ["services"]).map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`);
    expect(found.sort()).toEqual(
      [
        "runtime-is-self-contained: services/runtime/model.ts -> services/platform/errors.ts",
        "platform-is-generic: services/platform/errors.ts -> services/jobs/work.ts",
        "jobs-below-services: services/jobs/work.ts -> services/align/service.ts",
        "services-are-siblings: services/align/service.ts -> services/embed/service.ts",
        "nothing-imports-the-cli: services/experiment/x.ts -> services/cli/client.ts",
        "no-circular: services/runtime/p.ts -> services/runtime/q.ts",
      ].sort(),
    );
  }, 60_000);
});
