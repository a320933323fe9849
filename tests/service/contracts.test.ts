// Contract tests through connect's in-memory transport: the handlers without a network.
import { create } from "@bufbuild/protobuf";
import { rmSync } from "node:fs";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { AlignSpecSchema } from "../../gen/vaccine/v1/training_pb.ts";
import { SERVICES } from "../../services/suite/services.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { testDeps } from "../helpers/server.ts";

let align: Client<typeof AlignService>;
let fineTune: Client<typeof FineTuneService>;
let embed: Client<typeof EmbedService>;
let score: Client<typeof ScoreService>;
let cleanup: () => void;
beforeAll(async () => {
  const { deps, root } = await testDeps();
  const transport = createRouterTransport((router) => {
    for (const make of Object.values(SERVICES)) make(deps).register(router);
  });
  align = createClient(AlignService, transport);
  fineTune = createClient(FineTuneService, transport);
  embed = createClient(EmbedService, transport);
  score = createClient(ScoreService, transport);
  cleanup = () => rmSync(root, { recursive: true, force: true });
});
afterAll(() => cleanup());

const ref = { uri: "store://checkpoints/x", digest: "sha256:" + "a".repeat(64) };
const validSpec = () =>
  create(AlignSpecSchema, {
    baseCheckpoint: ref,
    dataset: { source: { case: "builtin", value: { name: "alignment" } } },
    method: { case: "vaccine", value: { rho: 2 } },
  });

describe("request validation", () => {
  it("rejects a negative page_size with ErrorInfo and BadRequest naming the field", async () => {
    const e = await rpcFailure(() => align.listAlignJobs({ pageSize: -1 }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.info?.reason).toBe("FIELD_INVALID");
    expect(e.info?.domain).toBe("vaccine.v1");
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["page_size"]);
  });

  it("rejects non-finite numbers and names every bad field at once", async () => {
    const spec = validSpec();
    spec.method = { case: "vaccine", value: { $typeName: "vaccine.v1.VaccineMethod", rho: Number.NaN } };
    spec.training = { $typeName: "vaccine.v1.TrainingConfig", learningRate: Infinity, batchSize: 0 } as never;
    const e = await rpcFailure(() => align.createAlignJob({ spec }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual([
      "spec.vaccine.rho",
      "spec.training.learning_rate",
      "spec.training.batch_size",
    ]);
    expect(e.message).toContain("finite");
  });

  it("checks the method, rho, LoRA targets and digests", async () => {
    const spec = validSpec();
    spec.method = { case: "vaccine", value: { $typeName: "vaccine.v1.VaccineMethod", rho: -0.5 } };
    spec.lora = { $typeName: "vaccine.v1.LoraConfig", rank: 0, targetModules: ["qkv"] } as never;
    spec.baseCheckpoint = { ...ref, $typeName: "vaccine.v1.CheckpointRef", digest: "md5:1" };
    const e = await rpcFailure(() => align.createAlignJob({ spec }));
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual([
      "spec.base_checkpoint.digest",
      "spec.vaccine.rho",
      "spec.lora.rank",
      "spec.lora.target_modules[0]",
    ]);
    const missing = await rpcFailure(() => align.createAlignJob({}));
    expect(missing.badRequest?.fieldViolations[0].field).toBe("spec");
  });

  it("validates fine-tuning mixtures and scoring settings", async () => {
    const ft = await rpcFailure(() =>
      fineTune.createFineTuneJob({
        spec: {
          alignedCheckpoint: ref,
          dataset: { source: { case: "builtin", value: { name: "sst2-mix", harmfulRatio: 1.5 } } },
        },
      }),
    );
    expect(ft.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["spec.dataset.builtin.harmful_ratio"]);
    const gen = await rpcFailure(() =>
      score.generate({ checkpoint: ref, prompts: [{ instruction: "hi" }], decoding: { case: "sampled", value: { topP: 0 } } }),
    );
    expect(gen.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["sampled.top_p"]);
    const emb = await rpcFailure(() => embed.embed({ checkpoint: ref, texts: [] }));
    expect(emb.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["texts"]);
  });
});

describe("every RPC is built", () => {
  it("no method of the four services answers UNIMPLEMENTED", async () => {
    const calls: [string, () => Promise<unknown>][] = [];
    for (const [svc, client] of [[AlignService, align], [FineTuneService, fineTune], [EmbedService, embed], [ScoreService, score]] as const) {
      for (const m of svc.methods) {
        const fn = (client as unknown as Record<string, (req: object) => unknown>)[m.localName];
        calls.push([
          `${svc.typeName}/${m.name}`,
          async () => {
            const res = fn({});
            if (Symbol.asyncIterator in Object(res)) for await (const _ of res as AsyncIterable<unknown>) void _;
            else await res;
          },
        ]);
      }
    }
    expect(calls).toHaveLength(5 + 5 + 2 + 4);
    for (const [name, call] of calls) {
      // An empty request is invalid for all but List, which answers an empty page.
      const outcome = await call().then(
        () => "ok",
        (err) => Code[ConnectError.from(err).code],
      );
      expect([name, outcome]).toEqual([name, name.endsWith("Jobs") ? "ok" : "InvalidArgument"]);
    }
  });
});
