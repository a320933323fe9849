// The access matrix (issue 16, docs/security.md "Tenancy"): every RPC of the six vaccine
// services, called by tenant A, tenant B and an admin, on resources owned by A, by B, and
// by nobody (built-ins); each cell's expected code comes from the table below. The table's
// rows are checked against the service descriptors, so a new RPC without a row fails here.
//
// Expected codes: "own" applies to the owner and the admin, "builtin" to everybody on a
// built-in, and another tenant always gets NOT_FOUND. Create and Import cells send a spec
// the server refuses after its ownership checks (LoRA rank over the model width, an empty
// folder): INVALID_ARGUMENT there proves the inputs were readable, without training.
import { randomUUID } from "node:crypto";
import { create, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointType, ExportFormat, ImportCheckpointRequestSchema } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { checkpointBytes, claim } from "../../services/common/ownership.ts";
import { selectBackend } from "../../services/runtime/backend.ts";
import { checkpointHex } from "../../services/runtime/store/store.ts";
import { methodKey } from "../../services/platform/access.ts";
import { SUITE_CONTRACTS } from "../../services/suite/access.ts";
import { alignSpec, datasetBytes, startTenantSuite, uploadAs, type Caller, type Clients, type TenantSuite } from "../helpers/tenants.ts";
import { putTinyModeration } from "../helpers/tiny-moderation.ts";
import { putModel } from "../helpers/tiny-store.ts";
import { tinyTokenizer, tinyWorldModel } from "../helpers/tiny-world.ts";

type Owner = "a" | "b" | "builtin";
type Ref = { uri: string; digest: string };
interface Resources {
  dataset: string;
  /** What a Create cell trains on: the owner's dataset, or a built-in one. */
  trainData: { source: { case: "uri"; value: string } | { case: "builtin"; value: { name: string; size: number } } };
  model: Ref;
  moderation: Ref;
  alignJob: string;
  fineTuneJob: string;
}
type Expect = "OK" | Code;
interface Row {
  /** One call; `fresh` makes a resource for this cell alone (what a delete consumes). */
  call(c: Clients, r: Resources, fresh: () => Promise<Resources>): Promise<unknown>;
  own: Expect;
  builtin: Expect;
  /** What another tenant gets (default NOT_FOUND): List and Upload do not name a resource. */
  other?: Expect;
  /** For List calls: the names shown, which must hold the resource exactly when the caller may see it. */
  shown?(result: unknown, r: Resources): boolean;
}

const drain = async <T>(s: AsyncIterable<T>) => {
  const out: T[] = [];
  for await (const x of s) out.push(x);
  return out;
};
const NONE = `${"0".repeat(64)}`;
const TOO_WIDE = { rank: 32, alpha: 8, dropout: 0 };
const training = { maxSteps: 1, batchSize: 2, maxSequenceLength: 64 };
const uri = (d: string) => ({ source: { case: "uri" as const, value: d } });
let cell = 0;

const TABLE: Record<string, Row> = {
  "vaccine.v1.AlignService/CreateAlignJob": {
    call: (c, r) => c.align.createAlignJob({ spec: { ...alignSpec(r.model, r.dataset), dataset: r.trainData, lora: TOO_WIDE } }),
    own: Code.InvalidArgument,
    builtin: Code.InvalidArgument,
  },
  "vaccine.v1.AlignService/GetAlignJob": { call: (c, r) => c.align.getAlignJob({ jobId: r.alignJob }), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.AlignService/ListAlignJobs": {
    call: (c) => c.align.listAlignJobs({ pageSize: 1000 }),
    own: "OK",
    other: "OK",
    builtin: "OK",
    shown: (res, r) => (res as { jobs: { id: string }[] }).jobs.some((j) => j.id === r.alignJob),
  },
  "vaccine.v1.AlignService/CancelAlignJob": { call: (c, r) => c.align.cancelAlignJob({ jobId: r.alignJob }), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.AlignService/WatchAlignJob": { call: (c, r) => drain(c.align.watchAlignJob({ jobId: r.alignJob })), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.FineTuneService/CreateFineTuneJob": {
    call: (c, r) => c.fineTune.createFineTuneJob({ spec: { alignedCheckpoint: r.model, dataset: r.trainData, lora: TOO_WIDE, training } }),
    own: Code.InvalidArgument,
    builtin: Code.InvalidArgument,
  },
  "vaccine.v1.FineTuneService/GetFineTuneJob": { call: (c, r) => c.fineTune.getFineTuneJob({ jobId: r.fineTuneJob }), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.FineTuneService/ListFineTuneJobs": {
    call: (c) => c.fineTune.listFineTuneJobs({ pageSize: 1000 }),
    own: "OK",
    other: "OK",
    builtin: "OK",
    shown: (res, r) => (res as { jobs: { id: string }[] }).jobs.some((j) => j.id === r.fineTuneJob),
  },
  "vaccine.v1.FineTuneService/CancelFineTuneJob": { call: (c, r) => c.fineTune.cancelFineTuneJob({ jobId: r.fineTuneJob }), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.FineTuneService/WatchFineTuneJob": { call: (c, r) => drain(c.fineTune.watchFineTuneJob({ jobId: r.fineTuneJob })), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.EmbedService/Embed": { call: (c, r) => c.embed.embed({ checkpoint: r.model, texts: ["hi"] }), own: "OK", builtin: "OK" },
  "vaccine.v1.EmbedService/ComputeDrift": {
    call: (c, r) => c.embed.computeDrift({ reference: r.model, candidate: r.model, probeSize: 2 }),
    own: "OK",
    builtin: "OK",
  },
  "vaccine.v1.ScoreService/Generate": { call: (c, r) => c.score.generate({ checkpoint: r.model, prompts: [{ instruction: "hi" }], maxNewTokens: 1 }), own: "OK", builtin: "OK" },
  "vaccine.v1.ScoreService/Moderate": { call: (c, r) => c.score.moderate({ moderationModel: r.moderation, pairs: [{ prompt: "hi", answer: "hello" }] }), own: "OK", builtin: "OK" },
  "vaccine.v1.ScoreService/ScoreHarmfulness": {
    call: (c, r) => drain(c.score.scoreHarmfulness({ checkpoint: r.model, moderationModel: r.moderation, limit: 1, maxNewTokens: 1, sampleCount: 0 })),
    own: "OK",
    builtin: "OK",
  },
  "vaccine.v1.ScoreService/ScoreTask": {
    call: (c, r) => drain(c.score.scoreTask({ checkpoint: r.model, dataset: { source: { case: "builtin", value: { name: "sst2" } } }, limit: 1, maxNewTokens: 1, sampleCount: 0 })),
    own: "OK",
    builtin: "OK",
  },
  "vaccine.v1.DatasetService/UploadDataset": { call: (c) => uploadAs(c, datasetBytes(`cell${cell++}`)), own: "OK", builtin: "OK", other: "OK" },
  // Built-in datasets are generated, never stored: no dataset URI names one (NOT_FOUND as any missing one).
  "vaccine.v1.DatasetService/GetDataset": { call: (c, r) => c.datasets.getDataset({ uri: r.dataset }), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.DatasetService/ListDatasets": {
    call: (c) => c.datasets.listDatasets({ pageSize: 1000 }),
    own: "OK",
    other: "OK",
    builtin: "OK",
    shown: (res, r) => (res as { datasets: { uri: string }[] }).datasets.some((d) => d.uri === r.dataset),
  },
  "vaccine.v1.DatasetService/DownloadDataset": { call: (c, r) => drain(c.datasets.downloadDataset({ uri: r.dataset })), own: "OK", builtin: Code.NotFound },
  "vaccine.v1.DatasetService/DeleteDataset": {
    call: async (c, _r, fresh) => c.datasets.deleteDataset({ uri: (await fresh()).dataset }),
    own: "OK",
    builtin: Code.NotFound,
  },
  // An adapter's base must be readable; the empty folder after it is refused (INVALID_ARGUMENT).
  "vaccine.v1.CheckpointService/ImportCheckpoint": {
    call: (c, r) =>
      c.checkpoints.importCheckpoint(
        (async function* () {
          yield create(ImportCheckpointRequestSchema, { content: { case: "metadata", value: { type: CheckpointType.ADAPTER, base: r.model } } });
        })(),
      ),
    own: Code.InvalidArgument,
    builtin: Code.InvalidArgument,
  },
  "vaccine.v1.CheckpointService/GetCheckpoint": { call: (c, r) => c.checkpoints.getCheckpoint({ checkpoint: r.model }), own: "OK", builtin: "OK" },
  "vaccine.v1.CheckpointService/ListCheckpoints": {
    call: (c) => c.checkpoints.listCheckpoints({ pageSize: 1000 }),
    own: "OK",
    other: "OK",
    builtin: "OK",
    shown: (res, r) => (res as { checkpoints: { ref?: Ref }[] }).checkpoints.some((x) => x.ref?.uri === r.model.uri),
  },
  "vaccine.v1.CheckpointService/ExportCheckpoint": {
    call: (c, r) => drain(c.checkpoints.exportCheckpoint({ checkpoint: r.model, format: ExportFormat.AS_STORED })),
    own: "OK",
    builtin: "OK",
  },
  // The shipped checkpoints stay, for everybody.
  "vaccine.v1.CheckpointService/DeleteCheckpoint": {
    call: async (c, _r, fresh) => c.checkpoints.deleteCheckpoint({ checkpoint: (await fresh()).model }),
    own: "OK",
    builtin: Code.FailedPrecondition,
  },
};

let s: TenantSuite;
const resources = {} as Record<Owner, Resources>;
let fresh: Record<Owner, () => Promise<Resources>>;

/** A tenant's resources: a dataset, a model and a moderation model of its own (distinct digests), and a cancelled job of each kind. */
async function prepare(owner: "a" | "b", seed: number): Promise<Resources> {
  const c = s.as[owner];
  const tenant = owner === "a" ? "team-a" : "team-b";
  const { store } = s.deps;
  const dataset = (await uploadAs(c, datasetBytes("", 4 + seed))).uri;
  const model = tinyWorldModel(tinyTokenizer(), seed);
  const modelRef = await putModel(store, model);
  model.dispose();
  const moderation = await putTinyModeration(store, undefined, ["violence", "theft", `label${seed}`]);
  for (const ref of [modelRef, moderation]) await claim(store, tenant, "checkpoints", checkpointHex(ref), { bytes: await checkpointBytes(store, ref) });
  const alignJob = (await c.align.createAlignJob({ spec: alignSpec(modelRef, dataset, 1) })).job!.id;
  const fineTuneJob = (await c.fineTune.createFineTuneJob({ spec: { alignedCheckpoint: modelRef, dataset: uri(dataset), lora: { rank: 4, alpha: 8 }, training } })).job!.id;
  await c.align.cancelAlignJob({ jobId: alignJob });
  await c.fineTune.cancelFineTuneJob({ jobId: fineTuneJob });
  return { dataset, trainData: uri(dataset), model: modelRef, moderation, alignJob, fineTuneJob };
}

/** A model of the tenant's own, nothing built on it. */
async function freshModel(tenant: string): Promise<Ref> {
  const model = tinyWorldModel(tinyTokenizer(), 100 + cell++);
  const ref = await putModel(s.deps.store, model);
  model.dispose();
  await claim(s.deps.store, tenant, "checkpoints", checkpointHex(ref), { bytes: await checkpointBytes(s.deps.store, ref) });
  return ref;
}

beforeAll(async () => {
  await selectBackend("wasm", () => {});
  s = await startTenantSuite();
  resources.a = await prepare("a", 1);
  resources.b = await prepare("b", 2);
  resources.builtin = {
    dataset: `store://datasets/${NONE}`,
    trainData: { source: { case: "builtin", value: { name: "alignment", size: 4 } } },
    model: s.base,
    moderation: s.deps.builtins.moderation!,
    alignJob: `align-${randomUUID()}`,
    fineTuneJob: `finetune-${randomUUID()}`,
  };
  // Jobs settle (a running one stops after its step), so Watch cells end at once.
  for (const owner of ["a", "b"] as const) {
    await drain(s.as[owner].align.watchAlignJob({ jobId: resources[owner].alignJob }));
    await drain(s.as[owner].fineTune.watchFineTuneJob({ jobId: resources[owner].fineTuneJob }));
  }
  fresh = {
    a: async () => ({ ...resources.a, dataset: (await uploadAs(s.as.a, datasetBytes(`fresh${cell++}`))).uri, model: await freshModel("team-a") }),
    b: async () => ({ ...resources.b, dataset: (await uploadAs(s.as.b, datasetBytes(`fresh${cell++}`))).uri, model: await freshModel("team-b") }),
    builtin: async () => resources.builtin,
  };
}, 300_000);
afterAll(() => s?.close());

describe("access matrix: 2 tenants and an admin x every RPC x resources of A, of B and built-ins", () => {
  it("has a row for every RPC of the six services, and no other", () => {
    const rpcs = SUITE_CONTRACTS.flatMap((svc: DescService) => svc.methods.map((m) => methodKey(svc, m))).sort();
    expect(rpcs).toHaveLength(SUITE_CONTRACTS.reduce((n, svc) => n + svc.methods.length, 0));
    expect(Object.keys(TABLE).sort()).toEqual(rpcs);
  });

  it("every cell answers its expected code; List shows a resource exactly to those who may read it", async () => {
    const got: string[] = [];
    const want: string[] = [];
    for (const [rpc, row] of Object.entries(TABLE)) {
      for (const owner of ["a", "b", "builtin"] as const) {
        // Another tenant first, then the owner and the admin: a cell never sees what an earlier one did to a shared resource.
        const callers: Caller[] = owner === "builtin" ? ["a", "b", "admin"] : [owner === "a" ? "b" : "a", owner, "admin"];
        for (const caller of callers) {
          const mayRead = owner === "builtin" || caller === owner || caller === "admin";
          const expected: Expect = owner === "builtin" ? row.builtin : mayRead ? row.own : (row.other ?? Code.NotFound);
          let outcome: Expect;
          let result: unknown;
          try {
            result = await row.call(s.as[caller], resources[owner], fresh[owner]);
            outcome = "OK";
          } catch (err) {
            const e = ConnectError.from(err);
            outcome = e.code;
            if (e.code === Code.Internal || e.code === Code.Unknown) throw e;
          }
          const name = (x: Expect) => (x === "OK" ? "OK" : Code[x]);
          let cellText = `${rpc} by ${caller} on ${owner}'s: ${name(outcome)}`;
          if (row.shown && outcome === "OK" && owner !== "builtin") cellText += row.shown(result, resources[owner]) ? " (shown)" : " (hidden)";
          got.push(cellText);
          let wanted = `${rpc} by ${caller} on ${owner}'s: ${name(expected)}`;
          if (row.shown && expected === "OK" && owner !== "builtin") wanted += mayRead ? " (shown)" : " (hidden)";
          want.push(wanted);
        }
      }
    }
    // One comparison: a failure lists every cell that differs.
    expect(got).toEqual(want);
  }, 300_000);
});
