// vaccine checkpoints: import, list, get and export in process against a real server, as text
// and as proto JSON, refs pasted back in the uri@digest form the commands print, a byte
// progress bar on a terminal, and usage and RPC errors; the fixtures imported through the
// command embed (vaccine embed) as expected.json says, and broken copies of them are refused.
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../services/cli/cli.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { parseSafetensors } from "../../services/runtime/checkpoint/safetensors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { compareScaled } from "../helpers/tolerance.ts";
import { Capture, cli } from "./harness.ts";

const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));
const expected = JSON.parse(readFileSync(join(FIXTURES, "expected.json"), "utf8"));
let suite: TestSuite;
let env: Record<string, string>;
let dir: string;

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  suite = await startSuite();
  env = { VACCINE_ADDRESS: suite.server.url };
  dir = mkdtempSync(join(tmpdir(), "vaccine-cli-checkpoints-"));
});
afterAll(async () => {
  await suite.close();
  rmSync(dir, { recursive: true, force: true });
});

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");
const refLine = (stdout: string) => /^ref {7}(store:\/\/checkpoints\/[0-9a-f]{64}@sha256:[0-9a-f]{64})$/m.exec(stdout)?.[1];

describe("vaccine checkpoints", () => {
  let base: string;

  it("imports a model and an adapter over it by the ref it printed, then lists and shows them", async () => {
    const model = await cli(["checkpoints", "import", join(FIXTURES, "llama-f32-gqa")], env);
    expect(model.code, model.stderr).toBe(0);
    base = refLine(model.stdout)!;
    expect(base).toBeDefined();
    expect(model.stdout).toMatch(/^type {6}model$/m);
    expect(model.stdout).toMatch(/^name {6}llama-f32-gqa$/m);
    expect(model.stdout).toMatch(/^model {5}LlamaForCausalLM, 2 layers, hidden 64, mlp 160, 4 heads \(2 kv\), vocab 512, 128 positions, 151872 parameters, F32$/m);
    expect(model.stdout).toMatch(/^files {5}config\.json +630 +ff157396c14615d9a4199563592de71cbebfa43062447af0c1d8cd8df063ed05$/m);

    const adapter = await cli(["checkpoints", "import", join(FIXTURES, "adapter-f32-gqa"), "--adapter-of", base, "--name", "my adapter", "--json"], env);
    expect(adapter.code, adapter.stderr).toBe(0);
    const { checkpoint } = JSON.parse(adapter.stdout);
    expect(checkpoint).toMatchObject({ type: "CHECKPOINT_TYPE_ADAPTER", displayName: "my adapter", adapter: { rank: 4, alpha: 8, parameterCount: "8960" } });
    expect(checkpoint.lineage.map((r: { uri: string; digest: string }) => `${r.uri}@${r.digest}`)).toEqual([base, `${checkpoint.ref.uri}@${checkpoint.ref.digest}`]);

    const list = await cli(["checkpoints", "list", "--type", "adapter"], env);
    expect(list.stdout.split("\n")[0]).toMatch(/^TYPE +NAME +BYTES +CREATED +REF$/);
    expect(list.stdout.split("\n")[1]).toMatch(/^adapter +my adapter +39928 +\S+ +store:\/\/checkpoints\//);
    const page = JSON.parse((await cli(["checkpoints", "list", "--page-size", "1", "--json"], env)).stdout);
    expect(page.checkpoints).toHaveLength(1);
    expect(page.nextPageToken).not.toBe("");
    // The printed next page keeps the filter and the page size: run as printed, it goes on alike.
    const first = await cli(["checkpoints", "list", "--type", "model", "--page-size", "1"], env);
    const more = first.stdout.match(/^more: vaccine (.*)$/m);
    expect(more?.[1]).toMatch(/^checkpoints list --type model --page-size 1 --page-token \S+$/);
    const second = await cli(more![1].split(" "), env);
    expect(second.stdout.split("\n").filter((l) => /^\w/.test(l) && !l.startsWith("TYPE") && !l.startsWith("more:"))).toEqual([expect.stringMatching(/^model +/)]);

    const got = JSON.parse((await cli(["checkpoints", "get", `${checkpoint.ref.uri}@${checkpoint.ref.digest}`, "--json"], env)).stdout);
    expect(got.checkpoint).toEqual(checkpoint);
    const text = await cli(["checkpoints", "get", base], env);
    expect(refLine(text.stdout)).toBe(base);
    expect(text.stdout).toMatch(/^lineage {3}store:\/\/checkpoints\//m);
  });

  it("exports merged in bf16, the adapter as PEFT, and the stored files, into new folders", async () => {
    const merged = join(dir, "merged");
    const run = await cli(["checkpoints", "export", base, "--format", "merged", "--dtype", "bf16", "--out", merged], env);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^PATH +BYTES +SHA256$/m);
    expect(run.stdout).toMatch(new RegExp(`wrote ${merged} \\(5 files, \\d+ bytes\\)`));
    expect(readdirSync(merged).sort()).toEqual(["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    expect(JSON.parse(readFileSync(join(merged, "config.json"), "utf8")).torch_dtype).toBe("bfloat16");
    expect(parseSafetensors(readFileSync(join(merged, "model.safetensors"))).tensors.size).toBe(21);

    const adapterRef = JSON.parse((await cli(["checkpoints", "list", "--type", "adapter", "--json"], env)).stdout).checkpoints[0].ref;
    const peft = join(dir, "peft");
    mkdirSync(peft); // an empty folder is fine too
    const json = await cli(["checkpoints", "export", `${adapterRef.uri}@${adapterRef.digest}`, "--format", "peft", "--out", peft, "--json"], env);
    expect(json.code, json.stderr).toBe(0);
    const lines = json.stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((l) => l.path)).toEqual(["adapter_config.json", "adapter_model.safetensors"]);
    for (const line of lines) {
      const fixture = readFileSync(join(FIXTURES, "adapter-f32-gqa", line.path));
      expect(line.sha256).toBe(sha256(fixture));
      expect(readFileSync(join(peft, line.path)).equals(fixture)).toBe(true);
    }

    const stored = join(dir, "stored");
    expect((await cli(["checkpoints", "export", base, "--format", "stored", "--out", stored], env)).code).toBe(0);
    expect(readdirSync(stored).sort()).toEqual(readdirSync(join(FIXTURES, "llama-f32-gqa")).sort());
    expect(readdirSync(dir).some((name) => name.endsWith(".part"))).toBe(false);
  });

  it("renders a refused import with its reason and the file at fault, and keeps no partial export", async () => {
    const run = await cli(["checkpoints", "import", join(FIXTURES, "adapter-f32-gqa")], env);
    expect(run.code).toBe(1);
    // A PEFT folder sent as a model: the error says what it is and how to import it.
    expect(run.stderr).toMatch(/^error: INVALID_ARGUMENT: missing config\.json: the folder holds a PEFT adapter \(adapter_config\.json\); import it as an adapter over its base\n/);
    expect(run.stderr).toContain("reason: CHECKPOINT_FORMAT_INVALID");
    expect(run.stderr).toContain("file: config.json");
    expect(run.stderr).toMatch(/field violations:\n {4}config\.json: missing config\.json: the folder holds a PEFT adapter/);

    const out = join(dir, "never");
    const peftOfModel = await cli(["checkpoints", "export", base, "--format", "peft", "--out", out], env);
    expect(peftOfModel.code).toBe(1);
    expect(peftOfModel.stderr).toMatch(/^error: FAILED_PRECONDITION: /);
    expect(readdirSync(dir).filter((name) => name.startsWith("never"))).toEqual([]);
  });

  it("deletes a checkpoint: a base in use is refused with its reason, its adapter then itself go", async () => {
    const model = refLine((await cli(["checkpoints", "import", join(FIXTURES, "llama-f32-gqa"), "--name", "short-lived"], env)).stdout)!;
    const adapter = refLine((await cli(["checkpoints", "import", join(FIXTURES, "adapter-f32-gqa"), "--adapter-of", model, "--name", "short-lived adapter"], env)).stdout)!;
    const refused = await cli(["checkpoints", "delete", model], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: FAILED_PRECONDITION: 1 stored checkpoint\(s\) build on store:\/\/checkpoints\/\w+ \(adapters or training states over it\), store:\/\/checkpoints\/\w+ first: delete those first\n {2}reason: CHECKPOINT_IN_USE/);
    expect(await cli(["checkpoints", "delete", adapter], env)).toMatchObject({ code: 0, stdout: `deleted ${adapter}\n` });
    expect(await cli(["checkpoints", "delete", model, "--json"], env)).toMatchObject({ code: 0, stdout: "{}\n" });
    expect((await cli(["checkpoints", "get", model], env)).stderr).toMatch(/^error: NOT_FOUND: /);
  });

  it("refuses a missing folder, checkpoint, format or --out as usage errors", async () => {
    const full = join(dir, "full");
    mkdirSync(full);
    writeFileSync(join(full, "x"), "x");
    const cases: [string[], RegExp][] = [
      [["checkpoints", "import"], /a checkpoint folder is required/],
      [["checkpoints", "import", join(dir, "missing")], /missing is not a readable folder/],
      [["checkpoints", "import", dir, "--adapter-of", "nope"], /--adapter-of: expected "uri@digest"/],
      [["checkpoints", "get"], /a checkpoint \(uri@digest\) is required/],
      [["checkpoints", "get", "store://checkpoints/x"], /checkpoint: expected "uri@digest"/],
      [["checkpoints", "list", "--type", "lora"], /--type: expected one of model, adapter, training-state, moderation/],
      [["checkpoints", "export", "a@b", "--out", join(dir, "o")], /--format is required/],
      [["checkpoints", "export", "a@b", "--format", "merged"], /--out is required/],
      [["checkpoints", "export", "a@b", "--format", "onnx", "--out", join(dir, "o")], /--format: expected one of merged, peft, stored/],
      [["checkpoints", "export", "a@b", "--format", "merged", "--dtype", "f64", "--out", join(dir, "o")], /--dtype: expected one of f32, f16, bf16/],
      [["checkpoints", "export", "a@b", "--format", "merged", "--out", full], /exists and is not empty/],
    ];
    for (const [args, message] of cases) {
      const run = await cli(args, env);
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr, args.join(" ")).toMatch(message);
    }
  });

  it("draws a byte progress bar on a terminal while importing and exporting, and none when piped", async () => {
    const stdout = new Capture(true, 100);
    expect(await runCli(["checkpoints", "import", join(FIXTURES, "llama-bf16-sharded-tied")], { stdout, stderr: new Capture(), env })).toBe(0);
    expect(stdout.text).toMatch(/import KiB \[=+\] [\d.]+\/[\d.]+ 100%/);
    expect(refLine(stdout.text)).toBeDefined();
    const exportOut = new Capture(true, 120);
    expect(await runCli(["checkpoints", "export", base, "--format", "merged", "--out", join(dir, "tty")], { stdout: exportOut, stderr: new Capture(), env })).toBe(0);
    expect(exportOut.text).toMatch(/model\.safetensors KiB \[=+\]/);
    const piped = await cli(["checkpoints", "import", join(FIXTURES, "llama-bf16-sharded-tied")], env);
    expect(piped.stdout).not.toContain("KiB");
  });
});

describe("the fixtures through the command line", () => {
  const TEXTS: { name: string; text: string }[] = expected.sequences.filter((s: { text: string | null }) => s.text !== null);

  async function importRef(args: string[]): Promise<string> {
    const run = await cli(["checkpoints", "import", ...args], env);
    expect(run.code, run.stderr).toBe(0);
    return refLine(run.stdout)!;
  }

  /** `vaccine embed --final --pooling last --json` on the fixture texts against one case of expected.json (rtol 1e-4 of each array's scale). */
  async function expectEmbedMatches(ref: string, caseName: string): Promise<void> {
    const run = await cli(["embed", "--checkpoint", ref, "--final", "--pooling", "last", "--json", ...TEXTS.map((t) => t.text)], env);
    expect(run.code, run.stderr).toBe(0);
    const { embeddings } = JSON.parse(run.stdout);
    expect(embeddings).toHaveLength(TEXTS.length);
    TEXTS.forEach((seq, i) => {
      const want = expected.cases[caseName].results[seq.name];
      // Proto JSON leaves out zero values: layer 0 comes without its number.
      const layers: { layer?: number; vectors: { values: number[] } }[] = embeddings[i].layers;
      expect(layers.map((l) => l.layer ?? 0)).toEqual([...want.attn_out_last.keys(), -1]);
      for (const { layer = 0, vectors } of layers) {
        const reference = layer === -1 ? want.final_norm_hidden.at(-1) : want.attn_out_last[layer];
        const c = compareScaled(vectors.values, reference, 1e-4);
        expect(c.failures, `${caseName}/${seq.name} layer ${layer}: ${c.scaledMaxDiff}`).toBe(0);
      }
    });
  }

  it("imports both model folders and the adapter over its base by the printed ref; vaccine embed matches expected.json", async () => {
    const f32 = await importRef([join(FIXTURES, "llama-f32-gqa")]);
    const bf16 = await importRef([join(FIXTURES, "llama-bf16-sharded-tied")]);
    const adapter = await importRef([join(FIXTURES, "adapter-f32-gqa"), "--adapter-of", f32]);
    await expectEmbedMatches(f32, "base_f32");
    await expectEmbedMatches(bf16, "base_bf16_sharded_tied");
    await expectEmbedMatches(adapter, "adapter_unmerged_f32");

    // Exported merged and imported again: the merged case.
    const merged = join(dir, "fixture-merged");
    expect((await cli(["checkpoints", "export", adapter, "--format", "merged", "--out", merged], env)).code).toBe(0);
    await expectEmbedMatches(await importRef([merged]), "adapter_merged_f32");
  });

  it("refuses a tensor of another shape, a shard missing from the index, and a config that disagrees with the tensors", async () => {
    const copy = (fixture: string, name: string) => {
      const target = join(dir, name);
      cpSync(join(FIXTURES, fixture), target, { recursive: true });
      return target;
    };
    const reshaped = copy("llama-f32-gqa", "reshaped");
    const weights = readFileSync(join(reshaped, "model.safetensors"));
    const headerLength = Number(weights.readBigUInt64LE(0));
    const header = weights.subarray(8, 8 + headerLength).toString("utf8");
    // Same element count, so only the header changes and the file stays well-formed.
    const changed = header.replace('"model.layers.1.mlp.up_proj.weight":{"dtype":"F32","shape":[160,64]', '"model.layers.1.mlp.up_proj.weight":{"dtype":"F32","shape":[64,160]');
    expect(changed).not.toBe(header);
    writeFileSync(join(reshaped, "model.safetensors"), Buffer.concat([weights.subarray(0, 8), Buffer.from(changed), weights.subarray(8 + headerLength)]));

    const unsharded = copy("llama-bf16-sharded-tied", "unsharded");
    unlinkSync(join(unsharded, "model-00001-of-00002.safetensors"));

    const disagreeing = copy("llama-f32-gqa", "disagreeing");
    const config = JSON.parse(readFileSync(join(disagreeing, "config.json"), "utf8"));
    writeFileSync(join(disagreeing, "config.json"), JSON.stringify({ ...config, num_key_value_heads: 4 }));

    const before = (await cli(["checkpoints", "list", "--page-size", "1000", "--json"], env)).stdout;
    for (const [folder, file, message] of [
      [reshaped, "model.safetensors", 'tensor "model.layers.1.mlp.up_proj.weight" has shape [64, 160], config.json implies [160, 64]'],
      [unsharded, "model-00001-of-00002.safetensors", "missing model-00001-of-00002.safetensors (named in model.safetensors.index.json)"],
      [disagreeing, "model.safetensors", "config.json implies [64, 64]"],
    ]) {
      const run = await cli(["checkpoints", "import", folder], env);
      expect(run.code, folder).toBe(1);
      expect(run.stderr).toMatch(/^error: INVALID_ARGUMENT: /);
      expect(run.stderr).toContain("reason: CHECKPOINT_FORMAT_INVALID");
      expect(run.stderr).toContain(`file: ${file}`);
      expect(run.stderr).toContain(message);
      expect(run.stderr).not.toContain(dir);
    }
    expect((await cli(["checkpoints", "list", "--page-size", "1000", "--json"], env)).stdout).toBe(before);
  });
});
