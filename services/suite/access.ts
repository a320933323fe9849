/**
 * The suite's roles and the role each RPC needs, handed to the platform's access control.
 * reader: Get/List/Watch, Embed, Score, downloads and exports; trainer: reader plus
 * creating and cancelling jobs, uploads, imports and deletes; admin: trainer plus (with
 * tenancy) every tenant's resources. Derived from the method names, so a new RPC gets a
 * role by how it is named; tests/suite/access.test.ts lists every method's role.
 */
import type { DescService } from "@bufbuild/protobuf";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { methodKey, type AccessPolicy } from "../platform/access.ts";

export const ACCESS_ROLES = ["reader", "trainer", "admin"] as const;
export type AccessRole = (typeof ACCESS_ROLES)[number];

/** Methods that change what is stored or running. */
const MUTATING = /^(Create|Cancel|Upload|Import|Delete)[A-Z]/;

/** Whether a method changes what is stored or running: each of its calls goes into the audit log. */
export function isMutating(methodName: string): boolean {
  return MUTATING.test(methodName);
}

export function roleOf(methodName: string): AccessRole {
  return isMutating(methodName) ? "trainer" : "reader";
}

/** Every contract the suite can serve; a process serving a subset is covered too. */
export const SUITE_CONTRACTS: DescService[] = [AlignService, FineTuneService, EmbedService, ScoreService, DatasetService, CheckpointService];

export function accessPolicy(services: DescService[] = SUITE_CONTRACTS): AccessPolicy {
  const methods: Record<string, AccessRole> = {};
  for (const s of services) for (const m of s.methods) methods[methodKey(s, m)] = roleOf(m.name);
  return { roles: ACCESS_ROLES, methods };
}
