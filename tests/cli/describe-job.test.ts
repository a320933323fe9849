// `vaccine jobs get` for people: the tenant, the alignment method and the fine-tuning guard
// with the settings the spec sets, by their proto names.
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { JobKind, JobSchema, JobState } from "../../gen/vaccine/v1/jobs_pb.ts";
import { describeJob } from "../../services/cli/output.ts";

const line = (text: string, key: string) => text.split("\n").find((l) => l.startsWith(`${key} `))?.slice(16);

describe("describeJob", () => {
  it("names the method with its set scalars, not its dataset refs", () => {
    const job = create(JobSchema, {
      id: "align-1",
      kind: JobKind.ALIGN,
      state: JobState.QUEUED,
      tenant: "team-a",
      spec: { case: "align", value: { method: { case: "tVaccine", value: { rho: 3, layers: 1, probeDataset: { source: { case: "uri", value: "store://datasets/x" } } } } } },
    });
    const text = describeJob(job);
    expect(line(text, "tenant")).toBe("team-a");
    expect(line(text, "method")).toBe("t_vaccine (rho 3, layers 1)");
    expect(line(text, "guard")).toBeUndefined();
    const vaccine = create(JobSchema, { id: "align-2", kind: JobKind.ALIGN, spec: { case: "align", value: { method: { case: "vaccine", value: { rhoRelative: 0.14 } } } } });
    expect(line(describeJob(vaccine), "method")).toBe("vaccine (rho_relative 0.14)");
    expect(line(describeJob(vaccine), "tenant")).toBeUndefined();
  });

  it("names a fine-tuning job's guard", () => {
    const job = create(JobSchema, {
      id: "finetune-1",
      kind: JobKind.FINE_TUNE,
      spec: { case: "fineTune", value: { guard: { case: "lisa", value: { alignmentSteps: 10, userSteps: 90 } } } },
    });
    expect(line(describeJob(job), "guard")).toBe("lisa (alignment_steps 10, user_steps 90)");
    expect(line(describeJob(job), "method")).toBeUndefined();
    const plain = create(JobSchema, { id: "finetune-2", kind: JobKind.FINE_TUNE, spec: { case: "fineTune", value: {} } });
    expect(line(describeJob(plain), "guard")).toBeUndefined();
  });
});
