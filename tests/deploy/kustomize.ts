/**
 * A small `kustomize build`, the fallback for machines without kubectl (tests/deploy/render.ts
 * uses `kubectl kustomize` when it is on PATH, and a test checks that both print the same
 * objects). It renders the subset of kustomize that deploy/k8s uses and throws on anything
 * else:
 * - resources (files and folders), components, namespace, images (newName, newTag);
 * - patches: strategic merge patches from a file, matched by kind and name, or by a target
 *   (kind, anchored name regex, label selector: =, ==, !=, in, notin, exists, !exists) whose
 *   kind equals the patch's; maps merge, lists named below merge by their key (`$patch: delete`
 *   removes an item) with the patch's items first, as kustomize orders them; other lists and
 *   scalars are replaced, null deletes.
 */
import { readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { parseAllDocuments } from "yaml";

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

type Json = Record<string, unknown>;
interface Target {
  kind?: string;
  name?: string;
  labelSelector?: string;
}
interface Kustomization {
  apiVersion: string;
  kind: "Kustomization" | "Component";
  namespace?: string;
  resources?: string[];
  components?: string[];
  patches?: { path: string; target?: Target }[];
  images?: { name: string; newName?: string; newTag?: string }[];
}

const FIELDS = new Set(["apiVersion", "kind", "namespace", "resources", "components", "patches", "images"]);
const CLUSTER_SCOPED = new Set(["Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"]);
// Merge keys of the Kubernetes strategic merge patch for the lists the manifests patch.
const MERGE_KEYS: Record<string, string[]> = {
  containers: ["name"],
  initContainers: ["name"],
  env: ["name"],
  volumes: ["name"],
  volumeMounts: ["mountPath"],
  ports: ["containerPort", "port"],
};

/** Renders a kustomization folder. */
export function kustomize(dir: string): K8sObject[] {
  return build(dir, "Kustomization", []);
}

function parseYaml(text: string, source: string): K8sObject[] {
  return parseAllDocuments(text).flatMap((doc) => {
    if (doc.errors.length > 0) throw new Error(`${source}: ${doc.errors[0].message}`);
    const value = doc.toJS() as K8sObject | null;
    return value === null ? [] : [value];
  });
}

function build(dir: string, kind: Kustomization["kind"], inherited: K8sObject[]): K8sObject[] {
  const path = resolve(dir, "kustomization.yaml");
  const k = parseYaml(readFileSync(path, "utf8"), path)[0] as unknown as Kustomization;
  const unknown = Object.keys(k).filter((f) => !FIELDS.has(f));
  if (unknown.length > 0) throw new Error(`${path}: fields this renderer does not implement: ${unknown.join(", ")}`);
  if (k.kind !== kind) throw new Error(`${path}: expected kind ${kind}, found ${k.kind}`);
  let objects = [...inherited, ...(k.resources ?? []).flatMap((r) => load(resolve(dir, r)))];
  for (const c of k.components ?? []) objects = build(resolve(dir, c), "Component", objects);
  for (const patch of k.patches ?? []) objects = applyPatch(objects, resolve(dir, patch.path), patch.target);
  for (const image of k.images ?? []) setImage(objects, image);
  if (k.namespace) for (const o of objects) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace;
  return objects;
}

function load(path: string): K8sObject[] {
  return statSync(path).isDirectory() ? build(path, "Kustomization", []) : parseYaml(readFileSync(path, "utf8"), path);
}

function applyPatch(objects: K8sObject[], path: string, target: Target | undefined): K8sObject[] {
  const patches = parseYaml(readFileSync(path, "utf8"), path);
  if (patches.length !== 1) throw new Error(`${path}: one patch per file`);
  const [patch] = patches;
  const hits = objects.filter((o) => (target ? matches(o, target) : o.kind === patch.kind && o.metadata.name === patch.metadata.name));
  if (hits.length === 0) throw new Error(`${path}: the patch matches no resource`);
  if (hits.some((o) => o.kind !== patch.kind)) throw new Error(`${path}: a ${patch.kind} patch must target ${patch.kind}s only`);
  return objects.map((o) => (hits.includes(o) ? (merge(o, { ...patch, metadata: { ...patch.metadata, name: o.metadata.name } }) as K8sObject) : o));
}

function matches(o: K8sObject, target: Target): boolean {
  const unknown = Object.keys(target).filter((f) => !["kind", "name", "labelSelector"].includes(f));
  if (unknown.length > 0) throw new Error(`patch target fields this renderer does not implement: ${unknown.join(", ")}`);
  if (target.kind && o.kind !== target.kind) return false;
  if (target.name && !new RegExp(`^(?:${target.name})$`).test(o.metadata.name)) return false;
  return selects(target.labelSelector ?? "", o.metadata.labels ?? {});
}

/** A Kubernetes label selector: terms joined by commas (not those inside a set's parentheses). */
function selects(selector: string, labels: Record<string, string>): boolean {
  const terms = selector.match(/(?:[^,(]|\([^)]*\))+/g) ?? [];
  return terms.every((term) => {
    const set = /^\s*([^!=\s]+)\s+(in|notin)\s*\(([^)]*)\)\s*$/.exec(term);
    if (set) {
      const values = set[3].split(",").map((v) => v.trim());
      const value = labels[set[1]];
      return set[2] === "in" ? value !== undefined && values.includes(value) : value === undefined || !values.includes(value);
    }
    const exists = /^\s*(!?)([^!=\s]+)\s*$/.exec(term);
    if (exists) return (exists[2] in labels) === (exists[1] === "");
    const m = /^\s*([^!=\s]+)\s*(==|=|!=)\s*([^\s]*)\s*$/.exec(term);
    if (!m) throw new Error(`label selector term this renderer does not implement: "${term}"`);
    const value = labels[m[1]];
    return m[2] === "!=" ? value !== m[3] : value === m[3];
  });
}

function isMap(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function merge(base: unknown, patch: unknown, field = ""): unknown {
  if (isMap(base) && isMap(patch)) {
    if ("$patch" in patch) throw new Error(`$patch outside a merged list item is not implemented (at ${field})`);
    const out: Json = { ...base };
    for (const [key, value] of Object.entries(patch)) {
      if (value === null) delete out[key];
      else out[key] = merge(base[key], value, key);
    }
    return out;
  }
  if (Array.isArray(base) && Array.isArray(patch) && MERGE_KEYS[field]) return mergeList(base as Json[], patch as Json[], field);
  return patch;
}

/**
 * kustomize's order (kyaml, lists prepended): the patch's items first, in the patch's order and
 * merged into the base's item of the same key, then the base's other items in their order.
 */
function mergeList(base: Json[], patch: Json[], field: string): Json[] {
  const key = MERGE_KEYS[field].find((k) => [...base, ...patch].every((item) => k in item));
  if (!key) throw new Error(`${field}: items without a merge key (${MERGE_KEYS[field].join(" or ")})`);
  const first: Json[] = [];
  const removed = new Set<unknown>();
  for (const { $patch, ...item } of patch) {
    const old = base.find((b) => b[key] === item[key]);
    if ($patch === "delete") {
      if (!old) throw new Error(`${field}: no item ${key}=${String(item[key])} to delete`);
      removed.add(item[key]);
    } else if ($patch !== undefined) {
      throw new Error(`${field}: $patch: ${String($patch)} is not implemented`);
    } else {
      first.push(old ? (merge(old, item, field) as Json) : item);
    }
  }
  const patched = new Set(first.map((item) => item[key]));
  return [...first, ...base.filter((b) => !patched.has(b[key]) && !removed.has(b[key]))];
}

function setImage(objects: K8sObject[], image: { name: string; newName?: string; newTag?: string }): void {
  for (const o of objects) {
    const pod = (o.spec as { template?: { spec?: { containers?: Json[]; initContainers?: Json[] } } } | undefined)?.template?.spec;
    for (const c of [...(pod?.containers ?? []), ...(pod?.initContainers ?? [])]) {
      const ref = String(c.image);
      const colon = ref.lastIndexOf(":");
      // A colon before the last slash is a registry port, not a tag.
      const [name, tag] = colon > ref.lastIndexOf("/") ? [ref.slice(0, colon), ref.slice(colon + 1)] : [ref, undefined];
      if (name !== image.name) continue;
      const newTag = image.newTag ?? tag;
      c.image = newTag ? `${image.newName ?? name}:${newTag}` : (image.newName ?? name);
    }
  }
}
