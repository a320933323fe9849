// proto3 enums are open: a binary client can send any number. Every unary request is checked
// for enum values their enums do not define (nested, in oneofs and lists), and refused with
// INVALID_ARGUMENT naming each field, before its handler takes the number for a default or
// stores it. (Uploads and imports check their metadata's enums themselves: datasets.test.ts.)
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AlignService, CreateAlignJobRequestSchema } from "../../gen/vaccine/v1/align_pb.ts";
import { DatasetFormat, DatasetSplit } from "../../gen/vaccine/v1/common_pb.ts";
import { EmbedRequestSchema, Pooling } from "../../gen/vaccine/v1/embed_pb.ts";
import { unknownEnumValues } from "../../services/platform/enum-values.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startSuite, type TestSuite } from "../helpers/server.ts";

const ALIEN = 99;

describe("unknownEnumValues", () => {
  it("names each field, through messages and oneofs, and passes every defined value", () => {
    const req = create(CreateAlignJobRequestSchema, {
      spec: { dataset: { source: { case: "builtin", value: { name: "alignment", split: ALIEN as DatasetSplit } }, format: ALIEN as DatasetFormat } },
    });
    expect(unknownEnumValues(CreateAlignJobRequestSchema, req)).toEqual([
      { field: "spec.dataset.builtin.split", description: "99 is not a value of vaccine.v1.DatasetSplit" },
      { field: "spec.dataset.format", description: "99 is not a value of vaccine.v1.DatasetFormat" },
    ]);
    for (const split of [DatasetSplit.UNSPECIFIED, DatasetSplit.TRAIN, DatasetSplit.TEST]) {
      const ok = create(CreateAlignJobRequestSchema, { spec: { dataset: { source: { case: "builtin", value: { name: "alignment", split } } } } });
      expect(unknownEnumValues(CreateAlignJobRequestSchema, ok)).toEqual([]);
    }
    expect(unknownEnumValues(EmbedRequestSchema, create(EmbedRequestSchema, { texts: ["a"], pooling: ALIEN as Pooling }))).toEqual([
      { field: "pooling", description: "99 is not a value of vaccine.v1.Pooling" },
    ]);
  });
});

describe("over the wire", () => {
  let suite: TestSuite;
  beforeAll(async () => {
    suite = await startSuite();
  });
  afterAll(() => suite?.close());

  it("refuses a job whose spec holds an undefined enum value, storing nothing", async () => {
    const align = createClient(AlignService, createGrpcTransport({ baseUrl: suite.server.url }));
    const before = (await align.listAlignJobs({})).jobs.length;
    const e = await rpcFailure(() =>
      align.createAlignJob({
        spec: {
          baseCheckpoint: suite.base,
          dataset: { source: { case: "builtin", value: { name: "alignment", split: ALIEN as DatasetSplit } } },
          method: { case: "sft", value: {} },
        },
      }),
    );
    expect(e).toMatchObject({ code: Code.InvalidArgument, info: { reason: "FIELD_INVALID" } });
    expect(e.badRequest?.fieldViolations.map((v) => v.field)).toEqual(["spec.dataset.builtin.split"]);
    expect((await align.listAlignJobs({})).jobs.length).toBe(before);
  });
});
