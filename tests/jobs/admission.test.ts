// The job memory estimate grows with every size that drives it, and admission refuses a job
// over the limit with the numbers and advice that fits.
import { readFileSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { admitJob, defaultJobMemoryLimitMb, WASM_HEAP_MAX_MB } from "../../services/jobs/admission.ts";
import { estimateJobMemory, type JobShape } from "../../services/jobs/job-memory.ts";
import { isBackendAbort } from "../../services/jobs/backend-abort.ts";
import { parseLlamaConfig } from "../../services/runtime/model/config.ts";
import { LINEAR_MODULES } from "../../services/runtime/model/llama.ts";

const BUILTIN = { vocab_size: 1541, hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4, max_position_embeddings: 256 };
const shape = (over: Partial<JobShape> = {}, model: Record<string, number> = {}): JobShape => ({
  model: parseLlamaConfig({ ...BUILTIN, ...model }),
  batchSize: 5,
  sequenceLength: 200,
  loraRank: 8,
  targetModules: LINEAR_MODULES,
  method: "sft",
  ...over,
});
const mb = (s: JobShape) => estimateJobMemory(s).totalBytes / 2 ** 20;

describe("estimateJobMemory", () => {
  it("grows strictly with batch, sequence length, rank, vocabulary, width and depth", () => {
    const grows = (values: number[], make: (v: number) => JobShape) => {
      const estimates = values.map((v) => mb(make(v)));
      for (let i = 1; i < estimates.length; i++) expect(estimates[i]).toBeGreaterThan(estimates[i - 1]);
    };
    grows([1, 2, 5, 16, 64, 4096], (b) => shape({ batchSize: b }));
    grows([2, 16, 200, 1024, 65536], (t) => shape({ sequenceLength: t }));
    grows([1, 8, 64, 256], (r) => shape({ loraRank: r }));
    grows([64, 1541, 32000], (v) => shape({}, { vocab_size: v }));
    grows([64, 256, 1024], (d) => shape({}, { hidden_size: d, intermediate_size: 4 * d }));
    grows([1, 2, 8, 32], (l) => shape({}, { num_hidden_layers: l }));
    grows([1, 3, 7], (n) => shape({ targetModules: LINEAR_MODULES.slice(0, n) }));
  });

  it("counts Vaccine's perturbations on top of SFT", () => {
    expect(mb(shape({ method: "vaccine" }))).toBeGreaterThan(mb(shape({ method: "sft" })));
  });

  it("counts a runtime, a model copy and its rows' activations per data-parallel thread, and the job thread's data once", () => {
    const one = estimateJobMemory(shape({ batchSize: 8, datasetChars: 1e6 }));
    const two = estimateJobMemory(shape({ batchSize: 8, datasetChars: 1e6, threads: 2 }));
    const half = estimateJobMemory(shape({ batchSize: 4 }));
    expect(two.weightBytes).toBe(3 * one.weightBytes);
    expect(two.activationBytes).toBe(2 * half.activationBytes);
    expect(two.totalBytes).toBe(one.totalBytes - one.activationBytes + 2 * half.totalBytes);
    expect(two.totalBytes).toBeGreaterThan(one.totalBytes);
    expect(estimateJobMemory(shape({ threads: 1 }))).toEqual(estimateJobMemory(shape()));
    // RepNoise: a thread's MMD kernel matrices span its rows by the whole batch's, half of one thread's each.
    const mmdOf = (o: Partial<JobShape>) => estimateJobMemory(shape({ batchSize: 8, method: "repnoise", ...o })).activationBytes - estimateJobMemory(shape({ batchSize: 8, method: "sft", ...o })).activationBytes;
    expect(mmdOf({ threads: 2 })).toBe(mmdOf({}));
    expect(mmdOf({})).toBeGreaterThan(0);
  });

  it("counts RepNoise's kernel matrices by the harmful data's longest row, squared, up to max_sequence_length", () => {
    const mmdOf = (o: Partial<JobShape>) => estimateJobMemory(shape({ batchSize: 8, method: "repnoise", ...o })).activationBytes - estimateJobMemory(shape({ batchSize: 8, method: "sft", ...o })).activationBytes;
    expect(mmdOf({ harmfulLongest: 50 })).toBeGreaterThan(0);
    expect(mmdOf({ harmfulLongest: 100 })).toBe(4 * mmdOf({ harmfulLongest: 50 }));
    // Rows are truncated to max_sequence_length (200 here), as training collates them.
    expect(mmdOf({ harmfulLongest: 400 })).toBe(mmdOf({}));
    expect(mmdOf({ harmfulLongest: 200 })).toBe(mmdOf({}));
    expect(mmdOf({ harmfulLongest: 50, threads: 2 })).toBe(mmdOf({ harmfulLongest: 50 }));
  });

  it("is not below the measured peak of any recorded job, with the fused kernels and with the stock ones (bench/results/job-memory*.json)", () => {
    for (const [file, fusedKernels] of [["bench/results/job-memory.json", true], ["bench/results/job-memory-stock.json", false]] as const) {
      const recorded = JSON.parse(readFileSync(file, "utf8")) as {
        kernels: string;
        results: { name: string; model: Record<string, number>; batch: number; seq: number; rank: number; method: JobShape["method"]; failure?: string; measuredMb: number }[];
      };
      expect(recorded.kernels, file).toBe(fusedKernels ? "fused" : "stock");
      const measured = recorded.results.filter((r) => !r.failure);
      expect(measured.length).toBeGreaterThanOrEqual(10);
      for (const r of measured) {
        const estimate = mb(shape({ batchSize: r.batch, sequenceLength: r.seq, loraRank: r.rank, method: r.method, fusedKernels }, { ...r.model, max_position_embeddings: 4096 }));
        expect(estimate, `${file}: ${r.name}`).toBeGreaterThanOrEqual(r.measuredMb);
        // And not wildly above: admission must not refuse what fits.
        expect(estimate / r.measuredMb, `${file}: ${r.name}`).toBeLessThan(1.5);
      }
    }
  });

  it("counts fewer activations and weight copies with the fused kernels, the same runtime and adapter", () => {
    const stock = estimateJobMemory(shape({ batchSize: 32, sequenceLength: 512 }, { hidden_size: 1024, intermediate_size: 2816 }));
    const fused = estimateJobMemory(shape({ batchSize: 32, sequenceLength: 512, fusedKernels: true }, { hidden_size: 1024, intermediate_size: 2816 }));
    expect(fused.activationBytes).toBeLessThan(stock.activationBytes / 2);
    expect(fused.totalBytes - fused.activationBytes).toBeLessThan(stock.totalBytes - stock.activationBytes);
    expect([fused.runtimeBytes, fused.weightBytes, fused.adapterBytes]).toEqual([stock.runtimeBytes, stock.weightBytes, stock.adapterBytes]);
  });
});

describe("admitJob", () => {
  it("accepts a job within the limit and returns its estimate", () => {
    expect(admitJob(shape(), 4096).totalBytes).toBeLessThanOrEqual(4096 * 2 ** 20);
  });

  it("refuses a job over the limit with RESOURCE_EXHAUSTED, the estimate, the limit and sizes that fit", () => {
    const big = shape({ batchSize: 64, sequenceLength: 512 });
    let err: ConnectError | undefined;
    try {
      admitJob(big, 2048);
    } catch (e) {
      err = e as ConnectError;
    }
    expect(err?.code).toBe(Code.ResourceExhausted);
    const info = err!.findDetails(ErrorInfoSchema)[0];
    expect(info.reason).toBe("JOB_MEMORY_LIMIT_EXCEEDED");
    expect(info.metadata.limit_mb).toBe("2048");
    expect(Number(info.metadata.estimate_mb)).toBe(Math.ceil(mb(big)));
    const batch = Number(info.metadata.max_batch_size);
    const length = Number(info.metadata.max_sequence_length);
    expect(err!.rawMessage).toContain(`lower spec.training.batch_size to ${batch} or spec.training.max_sequence_length to ${length}`);
    // The advice is the largest size that fits.
    expect(mb({ ...big, batchSize: batch })).toBeLessThanOrEqual(2048);
    expect(mb({ ...big, batchSize: batch + 1 })).toBeGreaterThan(2048);
    expect(mb({ ...big, sequenceLength: length })).toBeLessThanOrEqual(2048);
    expect(mb({ ...big, sequenceLength: length + 1 })).toBeGreaterThan(2048);
  });

  it("says when only both together fit, and when the model alone does not", () => {
    expect(() => admitJob(shape({ batchSize: 4096, sequenceLength: 8192 }), 1024)).toThrow(/lower both: spec\.training\.batch_size to 1 and spec\.training\.max_sequence_length to \d+/);
    expect(() => admitJob(shape({}, { hidden_size: 8192, intermediate_size: 28672, num_hidden_layers: 80 }), 1024)).toThrow(/the model alone does not fit/);
  });
});

describe("the default limit", () => {
  it("is half the memory, shared by the jobs at once, capped by the wasm heap", () => {
    const GiB = 2 ** 30;
    expect(defaultJobMemoryLimitMb(1, "cpu", 16 * GiB)).toBe(8192);
    expect(defaultJobMemoryLimitMb(2, "cpu", 16 * GiB)).toBe(4096);
    expect(defaultJobMemoryLimitMb(1, "wasm", 64 * GiB)).toBe(WASM_HEAP_MAX_MB);
    expect(defaultJobMemoryLimitMb(1, "wasm", 4 * GiB)).toBe(2048);
  });
});

describe("isBackendAbort", () => {
  it("recognises wasm aborts and allocation failures, not ordinary errors", () => {
    for (const m of ["RuntimeError: memory access out of bounds", "Aborted(). Build with -sASSERTIONS for more info.", "Invalid typed array length: 4800000000", "Array buffer allocation failed"]) {
      expect(isBackendAbort(new Error(m)), m).toBe(true);
    }
    expect(isBackendAbort(Object.assign(new Error("worker ran out of memory"), { code: "ERR_WORKER_OUT_OF_MEMORY" }))).toBe(true);
    expect(isBackendAbort(new Error("training diverged: the loss at step 3 is NaN"))).toBe(false);
  });
});
