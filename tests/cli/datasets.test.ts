// vaccine datasets: upload, list, get, download and delete in process against a real server,
// as text and as proto JSON, with row errors rendered and a byte progress bar on a terminal.
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../services/cli/cli.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { EXAMPLES } from "../helpers/tiny-world.ts";
import { Capture, cli } from "./harness.ts";

let suite: TestSuite;
let env: Record<string, string>;
let dir: string;

beforeAll(async () => {
  suite = await startSuite();
  env = { VACCINE_ADDRESS: suite.server.url };
  dir = mkdtempSync(join(tmpdir(), "vaccine-cli-datasets-"));
});
afterAll(async () => {
  await suite.close();
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, content: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}
const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

describe("vaccine datasets", () => {
  it("uploads, lists, shows, downloads byte for byte and deletes", async () => {
    const bytes = Buffer.from(EXAMPLES.map((e) => JSON.stringify(e)).join("\n") + "\n");
    const path = file("align.jsonl", bytes);
    const up = await cli(["datasets", "upload", path, "--json"], env);
    expect(up.code, up.stderr).toBe(0);
    const { dataset } = JSON.parse(up.stdout);
    const uri = `store://datasets/${sha256(bytes)}`;
    expect(dataset).toMatchObject({ uri, displayName: "align.jsonl", format: "DATASET_FORMAT_ALPACA", encoding: "DATASET_ENCODING_JSONL", rowCount: String(EXAMPLES.length) });

    const sst2 = file("sst2.json", JSON.stringify([{ sentence: "fine", label: 1 }]));
    const text = await cli(["datasets", "upload", sst2, "--format", "sst2", "--name", "tiny sst2"], env);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^uri {7}store:\/\/datasets\/[0-9a-f]{64}\n/);
    expect(text.stdout).toMatch(/^name {6}tiny sst2$/m);
    expect(text.stdout).toMatch(/^format {4}sst2$/m);
    expect(text.stdout).toMatch(/^encoding {2}json-array$/m);

    const list = await cli(["datasets", "list"], env);
    expect(list.stdout.split("\n")[0]).toMatch(/^URI +NAME +FORMAT +ROWS +BYTES +CREATED$/);
    expect(list.stdout.split("\n")[1]).toContain("tiny sst2");
    const page = JSON.parse((await cli(["datasets", "list", "--page-size", "1", "--json"], env)).stdout);
    expect(page.datasets).toHaveLength(1);
    const next = await cli(["datasets", "list", "--page-size", "1", "--page-token", page.nextPageToken], env);
    expect(next.stdout).toContain(uri);

    expect(JSON.parse((await cli(["datasets", "get", uri, "--json"], env)).stdout).dataset).toEqual(dataset);
    const out = join(dir, "copy.jsonl");
    const down = await cli(["datasets", "download", uri, "--out", out], env);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toBe(`wrote ${out} (${bytes.length} bytes, sha256:${sha256(bytes)})\n`);
    expect(readFileSync(out).equals(bytes)).toBe(true);

    expect((await cli(["datasets", "delete", uri], env)).stdout).toBe(`deleted ${uri}\n`);
    const gone = await cli(["datasets", "get", uri], env);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^error: NOT_FOUND: /);
    expect(gone.stderr).toContain("reason: DATASET_NOT_FOUND");
    const failed = await cli(["datasets", "download", uri, "--out", join(dir, "none.jsonl")], env);
    expect(failed.code).toBe(1);
    expect(() => readFileSync(join(dir, "none.jsonl"))).toThrow(/ENOENT/);
  });

  it("renders the bad rows of a refused upload by line", async () => {
    const path = file("bad.jsonl", `${JSON.stringify({ sentence: "ok", label: 0 })}\n{"sentence": "bad", "label": "1"}\n{"sentence": "x", "sentence": "y", "label": 0}\n`);
    const run = await cli(["datasets", "upload", path], env);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^error: INVALID_ARGUMENT: bad\.jsonl:2: field "label" must be an integer from 0 to 1, got "1" \(and 1 more bad rows\)/);
    expect(run.stderr).toContain("reason: DATASET_INVALID");
    expect(run.stderr).toContain("invalid_rows: 2");
    expect(run.stderr).toMatch(/field violations:\n {4}line 2: field "label" must be an integer from 0 to 1, got "1"\n {4}line 3: invalid JSON: duplicate key "sentence"/);
  });

  it("refuses a missing file, uri or --out as usage errors", async () => {
    const cases: [string[], RegExp][] = [
      [["datasets", "upload"], /a dataset file is required/],
      [["datasets", "upload", join(dir, "missing.jsonl")], /missing\.jsonl is not a readable file/],
      [["datasets", "upload", dir, "--format", "csv"], /--format: expected one of alpaca, beavertails/],
      [["datasets", "get"], /a dataset uri is required/],
      [["datasets", "download", "store://datasets/x"], /--out is required/],
    ];
    for (const [args, message] of cases) {
      const run = await cli(args, env);
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr).toMatch(message);
    }
  });

  it("draws a byte progress bar on a terminal, and none when piped", async () => {
    const row = JSON.stringify({ instruction: "Name a red fruit.", output: "An apple is red." });
    const path = file("big.jsonl", `${row}\n`.repeat(Math.ceil((3 * 2 ** 20) / row.length)));
    const stdout = new Capture(true, 100);
    const stderr = new Capture();
    expect(await runCli(["datasets", "upload", path], { stdout, stderr, env })).toBe(0);
    expect(stdout.text).toMatch(/upload MiB \[=+\] 3\/3 100%  [\d.]+ MiB\/s  ETA 0s/);
    expect(stdout.text).toMatch(/\nuri {7}store:\/\/datasets\/[0-9a-f]{64}\n/);
    const piped = await cli(["datasets", "upload", path], env);
    expect(piped.stdout).not.toContain("MiB");
  });
});
