/**
 * Tenancy of stored resources (docs/security.md, "Tenancy"). Datasets and checkpoints are
 * content-addressed: two tenants storing the same bytes get the same URI, so a resource has
 * a set of owners, kept as marker objects in the store beside it:
 *
 *   store://owners/<kind>/<hex>/<tenant>.json     Ownership  who may read it: 1 GET per check,
 *                                                             its owners: 1 LIST of a small folder
 *   store://tenants/<tenant>/<kind>/<hex>.json    Ownership  what a tenant owns: 1 LIST; its usage:
 *                                                             that LIST + 1 GET per resource owned
 *   store://tenants/<tenant>/reservations/<id>.json  Reservation  bytes admitted for a write in
 *                                                             progress (quotas.ts), counted in its usage
 *
 * A claim writes the tenant's marker first and the resource's second, a release removes them
 * in the other order: a crash in between leaves a tenant charged for what it cannot read,
 * never reading what it is not charged for. Tenancy is on exactly when the call has a
 * principal (VACCINE_AUTH other than none); without one every resource is visible, as before.
 */
import { randomUUID } from "node:crypto";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import { Code } from "@connectrpc/connect";
import { CheckpointRefSchema, type CheckpointRef as CheckpointRefMessage, type DatasetRef } from "../../gen/vaccine/v1/common_pb.ts";
import { TENANT_PATTERN } from "../platform/grants-file.ts";
import { rpcError } from "../platform/errors.ts";
import type { Principal } from "../platform/principal.ts";
import type { DatasetSource } from "../runtime/pipeline/datasets.ts";
import type { BuiltinRefs } from "../runtime/pipeline/builtins.ts";
import {
  CheckpointNotFoundError,
  checkpointHex,
  StoreObjectNotFoundError,
  type CheckpointRef,
  type CheckpointStore,
} from "../runtime/store/store.ts";
import { datasetHex } from "../runtime/pipeline/datasets.ts";
import { checkpointRefOf, datasetSource, refsIn } from "./refs.ts";
import { toRpcError } from "./runtime-errors.ts";

export type OwnedKind = "datasets" | "checkpoints";

/** The caller's view of stored resources and jobs when tenancy is on. */
export interface Scope {
  tenant: string;
  /** Sees and acts on every tenant's resources (the suite's `admin` role, suite/access.ts). */
  admin: boolean;
}

/**
 * The scope of a call: undefined without authentication (no principal, or the anonymous one
 * of VACCINE_AUTH=none): one implicit tenant, everything visible, nothing claimed or counted.
 */
export function scopeOf(principal: Principal | undefined): Scope | undefined {
  if (!principal || principal.via === "none") return undefined;
  // Authenticators check the pattern already; tenants become store paths, so check again here.
  if (!TENANT_PATTERN.test(principal.tenant)) {
    throw rpcError(Code.PermissionDenied, "TENANT_INVALID", `tenant names must match ${TENANT_PATTERN}`);
  }
  return { tenant: principal.tenant, admin: principal.roles.includes("admin") };
}

/** The tenant whose jobs and resources a call is limited to; undefined: all of them. */
export function visibleTenant(scope: Scope | undefined): string | undefined {
  return scope && !scope.admin ? scope.tenant : undefined;
}

const ownerUri = (kind: OwnedKind, hex: string, tenant: string) => `store://owners/${kind}/${hex}/${tenant}.json`;
const ownersFolder = (kind: OwnedKind, hex: string) => `store://owners/${kind}/${hex}`;
const tenantUri = (tenant: string, kind: OwnedKind, hex: string) => `store://tenants/${tenant}/${kind}/${hex}.json`;
const tenantFolder = (tenant: string, kind?: OwnedKind | "reservations") => `store://tenants/${tenant}${kind ? `/${kind}` : ""}`;

/**
 * One tenant's ownership of one resource: the bytes it is charged, and for a dataset the name
 * and time of its own upload (the shared record keeps the first uploader's, which another
 * tenant must not see).
 */
export interface Ownership {
  bytes: number;
  displayName?: string;
  /** ISO 8601. */
  createTime?: string;
}

/** The tenant's ownership of the resource, or undefined when it owns none. */
export async function ownershipOf(store: CheckpointStore, tenant: string, kind: OwnedKind, hex: string): Promise<Ownership | undefined> {
  try {
    return JSON.parse((await store.readObject(ownerUri(kind, hex, tenant), { maxBytes: 4096 })).toString("utf8")) as Ownership;
  } catch (err) {
    if (err instanceof StoreObjectNotFoundError) return undefined;
    throw err;
  }
}

/** Whether the tenant owns the resource. */
export async function owns(store: CheckpointStore, tenant: string, kind: OwnedKind, hex: string): Promise<boolean> {
  return (await ownershipOf(store, tenant, kind, hex)) !== undefined;
}

/** Records that the tenant owns the resource (idempotent: a second claim replaces the first). */
export async function claim(store: CheckpointStore, tenant: string, kind: OwnedKind, hex: string, ownership: Ownership): Promise<void> {
  const marker = Buffer.from(JSON.stringify(ownership));
  await store.putObject(tenantUri(tenant, kind, hex), marker);
  await store.putObject(ownerUri(kind, hex, tenant), marker);
}

/** The tenants that own the resource. */
export async function ownersOf(store: CheckpointStore, kind: OwnedKind, hex: string): Promise<string[]> {
  const folder = ownersFolder(kind, hex);
  return (await store.listObjects(folder)).map((o) => o.uri.slice(folder.length + 1, -".json".length));
}

/** Removes the tenant's ownership; resolves the owners left. */
export async function release(store: CheckpointStore, tenant: string, kind: OwnedKind, hex: string): Promise<string[]> {
  await store.deleteObject(ownerUri(kind, hex, tenant));
  await store.deleteObject(tenantUri(tenant, kind, hex));
  return ownersOf(store, kind, hex);
}

/** Removes every owner's marker (an admin's delete, or a delete without tenancy). */
export async function releaseAll(store: CheckpointStore, kind: OwnedKind, hex: string): Promise<void> {
  for (const tenant of await ownersOf(store, kind, hex)) await release(store, tenant, kind, hex);
}

/** The hex digests of the resources of a kind the tenant owns. */
export async function ownedBy(store: CheckpointStore, tenant: string, kind: OwnedKind): Promise<Set<string>> {
  const folder = tenantFolder(tenant, kind);
  return new Set((await store.listObjects(folder)).map((o) => o.uri.slice(folder.length + 1, -".json".length)));
}

/**
 * Bytes admitted for a write in progress: charged like an owned resource until released, or
 * until `expires` (ISO 8601) when the process that wrote it died first.
 */
interface Reservation {
  bytes: number;
  expires: string;
}

/** One marker in the tenant's folder: what it charges now, and whether it is a lapsed reservation. */
interface Charge {
  uri: string;
  bytes: number;
  lapsed: boolean;
}

async function chargesOf(store: CheckpointStore, tenant: string, now: number): Promise<Charge[]> {
  const markers = await store.listObjects(tenantFolder(tenant));
  const charges = await Promise.all(
    markers.map(async (m): Promise<Charge | undefined> => {
      try {
        const marker = JSON.parse((await store.readObject(m.uri, { maxBytes: 4096 })).toString("utf8")) as Partial<Reservation>;
        const lapsed = marker.expires !== undefined && !(Date.parse(marker.expires) > now);
        return { uri: m.uri, bytes: lapsed ? 0 : Number(marker.bytes) || 0, lapsed };
      } catch (err) {
        // Released between the listing and the read.
        if (err instanceof StoreObjectNotFoundError) return undefined;
        throw err;
      }
    }),
  );
  return charges.filter((c) => c !== undefined);
}

/** What the tenant is charged for (usageOf), and the bytes of the largest resource of `kind` it owns (0 for none). */
export async function usageAndLargest(store: CheckpointStore, tenant: string, kind: OwnedKind): Promise<{ used: number; largest: number }> {
  const charges = await chargesOf(store, tenant, Date.now());
  const folder = `${tenantFolder(tenant, kind)}/`;
  return { used: charges.reduce((sum, c) => sum + c.bytes, 0), largest: Math.max(0, ...charges.filter((c) => c.uri.startsWith(folder)).map((c) => c.bytes)) };
}

/** Bytes the tenant is charged for: the sum over what it owns (datasets and checkpoints) and its live reservations. */
export async function usageOf(store: CheckpointStore, tenant: string, now = Date.now()): Promise<number> {
  return (await chargesOf(store, tenant, now)).reduce((sum, c) => sum + c.bytes, 0);
}

/**
 * Writes a reservation of `bytes` for `ttlMs`, then reads the tenant's usage with it counted;
 * lapsed reservations found on the way are removed. Resolves the usage and the reservation's
 * release (which never throws: a reservation it fails to remove lapses).
 */
export async function reserveAndRead(
  store: CheckpointStore,
  tenant: string,
  bytes: number,
  ttlMs: number,
): Promise<{ usage: number; release: () => Promise<void> }> {
  const uri = `${tenantFolder(tenant, "reservations")}/${randomUUID()}.json`;
  const reservation: Reservation = { bytes, expires: new Date(Date.now() + ttlMs).toISOString() };
  await store.putObject(uri, Buffer.from(JSON.stringify(reservation)));
  // Never throws: a reservation left behind lapses.
  const release = () => store.deleteObject(uri).catch(() => {});
  try {
    const charges = await chargesOf(store, tenant, Date.now());
    // Best effort: another replica may be removing the same.
    await Promise.all(charges.filter((c) => c.lapsed).map((c) => store.deleteObject(c.uri).catch(() => {})));
    return { usage: charges.reduce((sum, c) => sum + c.bytes, 0), release };
  } catch (err) {
    await release();
    throw err;
  }
}

/** Bytes of a stored checkpoint (its files), what its owners are charged. */
export async function checkpointBytes(store: CheckpointStore, ref: CheckpointRef): Promise<number> {
  const { files } = await store.readManifest(ref);
  return Object.values(files).reduce((sum, f) => sum + f.size, 0);
}

/** Whether a checkpoint is one of the shipped ones: public and read-only. */
export function isBuiltin(builtins: BuiltinRefs, ref: CheckpointRef): boolean {
  return Object.values(builtins).some((b) => b?.uri === ref.uri);
}

/** Whether the scope may read the checkpoint (built-ins: everybody). Malformed refs are the store's to refuse. */
export async function canReadCheckpoint(deps: { store: CheckpointStore; builtins: BuiltinRefs }, scope: Scope | undefined, ref: CheckpointRef): Promise<boolean> {
  const tenant = visibleTenant(scope);
  if (tenant === undefined || isBuiltin(deps.builtins, ref)) return true;
  let hex: string;
  try {
    hex = checkpointHex(ref);
  } catch {
    return true;
  }
  return owns(deps.store, tenant, "checkpoints", hex);
}

/**
 * Refuses a checkpoint the scope may not read with exactly the error of a missing one, so
 * NOT_FOUND says nothing about other tenants' checkpoints; and one that is no longer stored
 * (deleted, maybe by another replica, while caches here still hold it). Throws the runtime's
 * error: the caller maps it as it maps the store's (toRpcError with its field).
 */
export async function assertCheckpointReadable(deps: { store: CheckpointStore; builtins: BuiltinRefs }, scope: Scope | undefined, ref: CheckpointRef): Promise<void> {
  if (!(await canReadCheckpoint(deps, scope, ref)) || !(await deps.store.exists(ref))) throw new CheckpointNotFoundError(`checkpoint ${ref.uri} does not exist`);
}

/**
 * The same for a dataset source: built-in datasets are generated, public; a stored one must
 * be an uploaded dataset the tenant owns. Any other store object is not a dataset a tenant
 * can name, so it is missing to it.
 */
export async function assertDatasetReadable(store: CheckpointStore, scope: Scope | undefined, source: DatasetSource): Promise<void> {
  const tenant = visibleTenant(scope);
  if (tenant === undefined || !("uri" in source)) return;
  const hex = datasetHex(source.uri);
  if (hex === undefined || !(await owns(store, tenant, "datasets", hex))) throw new StoreObjectNotFoundError(source.uri);
}

/**
 * Every checkpoint and dataset a request message names, at any depth, found by their types
 * (so a field added to a job spec later is checked too), must be readable by the scope; the
 * first that is not fails as a missing one would, naming its field (e.g. "spec.dataset").
 */
export async function assertRefsReadable<Desc extends DescMessage>(
  deps: { store: CheckpointStore; builtins: BuiltinRefs },
  scope: Scope | undefined,
  schema: Desc,
  message: MessageShape<Desc>,
  prefix: string,
): Promise<void> {
  if (visibleTenant(scope) === undefined) return;
  for (const { path, ref } of refsIn(reflect(schema, message), prefix)) {
    try {
      if (ref.$typeName === CheckpointRefSchema.typeName) await assertCheckpointReadable(deps, scope, checkpointRefOf(ref as CheckpointRefMessage));
      else await assertDatasetReadable(deps.store, scope, datasetSource(ref as DatasetRef));
    } catch (err) {
      throw toRpcError(err, { checkpointField: path, datasetField: path });
    }
  }
}
