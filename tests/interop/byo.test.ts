// Bring your own model and data, from Python (issue 14's acceptance): tests/interop/byo.py,
// a grpcio client with stubs generated from proto/ and vendor/ only, uploads datasets,
// imports a Hugging Face Llama folder this test writes (GQA, untied head, BF16 in two shards
// with an index), aligns it with Vaccine on the uploaded data, fine-tunes the result, exports
// it MERGED in F32, imports the export again, and compares Embed on both.
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";
import { writeLlamaFolder } from "../helpers/llama-folder.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";
import { findTools, generateStubs, PYTHON_ENV, run } from "./python-tools.ts";

const tools = findTools();
const work = mkdtempSync(join(tmpdir(), "vaccine-byo-"));
const stubs = join(work, "stubs");
const model = join(work, "my-llama");
let suite: TestSuite | undefined;

beforeAll(async () => {
  if (tools.missing) return; // the test below fails with the message
  await selectBackend("wasm", () => {});
  mkdirSync(stubs);
  await generateStubs(tools, stubs, [
    "vaccine/v1/common.proto", "vaccine/v1/training.proto", "vaccine/v1/jobs.proto", "vaccine/v1/align.proto",
    "vaccine/v1/finetune.proto", "vaccine/v1/embed.proto", "vaccine/v1/datasets.proto", "vaccine/v1/checkpoints.proto",
    "google/rpc/status.proto", "google/rpc/error_details.proto",
  ]);
  await writeLlamaFolder(model, { dtype: "BF16", shards: 2, seed: 14 });
  suite = await startSuite();
});
afterAll(async () => {
  await suite?.close();
  rmSync(work, { recursive: true, force: true });
});

describe("bring your own model and data, from Python", () => {
  it("uploads, imports, aligns, fine-tunes, exports merged, re-imports, and the export embeds as the fine-tuned model", async () => {
    if (tools.missing) throw new Error(tools.missing);
    expect(readdirSync(model).sort()).toEqual([
      "config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    ]);
    const output = join(work, "python");
    mkdirSync(output);
    const { stdout } = await run(tools.python!, ["tests/interop/byo.py", stubs, `127.0.0.1:${suite!.server.port}`, model, output], {
      env: PYTHON_ENV,
      timeout: 90_000,
    });
    const r = JSON.parse(stdout);

    // Datasets: stored by content, rows counted and typed, uploading twice changes nothing.
    expect(r.alignment_data).toMatchObject({ digest_is_sha256: true, uri_names_digest: true, rows: 36, format: "DATASET_FORMAT_REFUSAL", encoding: "DATASET_ENCODING_JSONL", idempotent: true });
    expect(r.fine_tune_data).toMatchObject({ digest_is_sha256: true, rows: 24, format: "DATASET_FORMAT_ALPACA", idempotent: true });

    // The folder as written: GQA, untied head, BF16 shards; parameters counted from the config.
    const parameters = 512 * 64 * 2 + 2 * (2 * 64 + 64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3) + 64;
    expect(r.base).toMatchObject({ type: "CHECKPOINT_TYPE_BASE_MODEL", name: "my llama", dtype: "BF16", layers: 2, heads: 4, kv_heads: 2, tied: false, parameters, lineage: 1, job: "" });
    expect(r.base.files).toEqual(readdirSync(model).sort());

    // Both jobs ran their steps and succeeded; each result adds one checkpoint to the lineage.
    for (const [job, lineage] of [[r.align, 2], [r.fine_tune, 3]] as const) {
      expect(job).toMatchObject({ state: "JOB_STATE_SUCCEEDED", error: "", steps: 4, lineage });
      // Trained on real tokens: a step whose batch had none would show loss 0 and no gradient.
      expect(job.losses.every((l: number) => Number.isFinite(l) && l > 0)).toBe(true);
      expect(job.grad_norms.every((g: number) => g > 0)).toBe(true);
      expect(job.states).toEqual(["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]);
    }
    expect(r.tuned).toMatchObject({ type: "CHECKPOINT_TYPE_ADAPTER", lineage: 3, lineage_from_base: true, job_is_fine_tune: true });

    // The merged export: one plain F32 Llama folder, every file checked against its sha256.
    expect(r.export.map((f: { path: string }) => f.path)).toEqual(["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    expect(r.export.every((f: { size_ok: boolean; sha256_ok: boolean }) => f.size_ok && f.sha256_ok)).toBe(true);
    expect(r.export_config).toEqual({ torch_dtype: "float32", tie_word_embeddings: false });
    expect(r.reimported).toMatchObject({ type: "CHECKPOINT_TYPE_BASE_MODEL", dtype: "F32", layers: 2, kv_heads: 2, tied: false, parameters, lineage: 1 });

    // Every layer's attention output and the final hidden state, every token of every text.
    expect(r.embed.texts).toBe(3);
    expect(r.embed.layers).toEqual([0, 1, -1]);
    expect(r.embed.exported_vs_tuned).toBeLessThanOrEqual(1e-4);
    expect(r.embed.base_vs_tuned).toBeGreaterThan(1e-2);
    console.log(`byo.py: ${JSON.stringify(r.seconds)}; exported vs tuned ${r.embed.exported_vs_tuned.toExponential(2)} of scale, base vs tuned ${r.embed.base_vs_tuned.toExponential(2)}`);
  }, 120_000);
});
