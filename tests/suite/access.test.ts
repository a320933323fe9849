// The role each of the suite's RPCs needs: listed here in full, so a new RPC or a rename
// that changes a role shows up as a diff.
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { scopeOf } from "../../services/common/ownership.ts";
import { checkPolicyCovers } from "../../services/platform/access.ts";
import { accessPolicy } from "../../services/suite/access.ts";
import { SERVICES } from "../../services/suite/services.ts";
import { errorDetails } from "../helpers/errors.ts";
import { testDeps } from "../helpers/server.ts";

describe("the suite's access policy", () => {
  it("gives trainer to what creates, cancels, uploads, imports or deletes, and reader to the rest", () => {
    expect(accessPolicy().methods).toEqual({
      "vaccine.v1.AlignService/CreateAlignJob": "trainer",
      "vaccine.v1.AlignService/GetAlignJob": "reader",
      "vaccine.v1.AlignService/ListAlignJobs": "reader",
      "vaccine.v1.AlignService/CancelAlignJob": "trainer",
      "vaccine.v1.AlignService/WatchAlignJob": "reader",
      "vaccine.v1.FineTuneService/CreateFineTuneJob": "trainer",
      "vaccine.v1.FineTuneService/GetFineTuneJob": "reader",
      "vaccine.v1.FineTuneService/ListFineTuneJobs": "reader",
      "vaccine.v1.FineTuneService/CancelFineTuneJob": "trainer",
      "vaccine.v1.FineTuneService/WatchFineTuneJob": "reader",
      "vaccine.v1.EmbedService/Embed": "reader",
      "vaccine.v1.EmbedService/ComputeDrift": "reader",
      "vaccine.v1.ScoreService/Generate": "reader",
      "vaccine.v1.ScoreService/Moderate": "reader",
      "vaccine.v1.ScoreService/ScoreHarmfulness": "reader",
      "vaccine.v1.ScoreService/ScoreTask": "reader",
      "vaccine.v1.DatasetService/UploadDataset": "trainer",
      "vaccine.v1.DatasetService/GetDataset": "reader",
      "vaccine.v1.DatasetService/ListDatasets": "reader",
      "vaccine.v1.DatasetService/DownloadDataset": "reader",
      "vaccine.v1.DatasetService/DeleteDataset": "trainer",
      "vaccine.v1.CheckpointService/ImportCheckpoint": "trainer",
      "vaccine.v1.CheckpointService/GetCheckpoint": "reader",
      "vaccine.v1.CheckpointService/ListCheckpoints": "reader",
      "vaccine.v1.CheckpointService/ExportCheckpoint": "reader",
      "vaccine.v1.CheckpointService/DeleteCheckpoint": "trainer",
    });
    expect(accessPolicy().roles).toEqual(["reader", "trainer", "admin"]);
  });

  it("covers every service the suite can serve", async () => {
    const { deps, root } = await testDeps();
    try {
      expect(() => checkPolicyCovers(accessPolicy(), Object.values(SERVICES).map((make) => make(deps).desc))).not.toThrow();
    } finally {
      await deps.executor?.shutdown();
      (await import("node:fs")).rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("tenants as store paths", () => {
  it("refuses a principal whose tenant is no store path segment, whatever let it through", () => {
    for (const tenant of ["../team-b", "a/b", "", "x".repeat(200)]) {
      let caught: unknown;
      try {
        scopeOf({ tenant, principal: "p", roles: ["reader"], via: "token" });
      } catch (err) {
        caught = err;
      }
      expect(errorDetails(caught), JSON.stringify(tenant)).toMatchObject({ code: Code.PermissionDenied, info: { reason: "TENANT_INVALID" } });
    }
    expect(scopeOf({ tenant: "team-a", principal: "p", roles: ["admin"], via: "token" })).toEqual({ tenant: "team-a", admin: true });
  });
});
