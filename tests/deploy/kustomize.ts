/**
 * A small `kustomize build`, the fallback for machines without kubectl (tests/deploy/render.ts
 * uses `kubectl kustomize` when it is on PATH, and a test checks that both print the same
 * objects). It renders the subset of kustomize that deploy/k8s uses and throws on anything
 * else:
 * - resources (files and folders), components, namespace (which also renames a Namespace
 *   object, as kustomize does), images (newName, newTag);
 * - replacements from a file, run last: a source field (kind, optional name) copied into the
 *   targets' fields (kind and name selected; `*` over a list's items), whole or as one part of
 *   the target split at a delimiter (options delimiter, index);
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
  replacements?: { path: string }[];
}

interface Replacement {
  source: { kind: string; name?: string; fieldPath: string };
  targets: { select: { kind: string; name?: string }; fieldPaths: string[]; options?: { delimiter?: string; index?: number } }[];
}

const FIELDS = ["apiVersion", "kind", "namespace", "resources", "components", "patches", "images", "replacements"];
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
  only(k, FIELDS, path);
  if (k.kind !== kind) throw new Error(`${path}: expected kind ${kind}, found ${k.kind}`);
  let objects = [...inherited, ...(k.resources ?? []).flatMap((r) => load(resolve(dir, r)))];
  for (const c of k.components ?? []) objects = build(resolve(dir, c), "Component", objects);
  for (const patch of k.patches ?? []) objects = applyPatch(objects, resolve(dir, patch.path), patch.target);
  for (const image of k.images ?? []) setImage(objects, image);
  if (k.namespace) {
    for (const o of objects) {
      if (o.kind === "Namespace") o.metadata.name = k.namespace;
      else if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace;
    }
  }
  for (const r of k.replacements ?? []) {
    const file = resolve(dir, r.path);
    for (const replacement of parseYaml(readFileSync(file, "utf8"), file)[0] as unknown as Replacement[]) replace(objects, replacement);
  }
  return objects;
}

function replace(objects: K8sObject[], { source, targets, ...rest }: Replacement): void {
  only(rest, [], "replacement");
  only(source, ["kind", "name", "fieldPath"], "replacement source");
  for (const t of targets) {
    only(t, ["select", "fieldPaths", "options"], "replacement target");
    only(t.select, ["kind", "name"], "replacement select");
    only(t.options ?? {}, ["delimiter", "index"], "replacement options");
  }
  const selected = (o: K8sObject, s: { kind: string; name?: string }) => o.kind === s.kind && (s.name === undefined || o.metadata.name === s.name);
  const sources = objects.filter((o) => selected(o, source));
  if (sources.length !== 1) throw new Error(`replacement source ${source.kind}/${source.name ?? "*"}: ${sources.length} objects, expected 1`);
  const [value] = fieldValues(sources[0], source.fieldPath.split("."));
  if (typeof value !== "string") throw new Error(`replacement source ${source.fieldPath}: not a string`);
  for (const { select, fieldPaths, options = {} } of targets) {
    for (const o of objects.filter((x) => selected(x, select))) {
      for (const path of fieldPaths) {
        const parts = path.split(".");
        const last = parts.pop()!;
        const parents = fieldValues(o, parts);
        if (parents.length === 0) throw new Error(`replacement target ${o.kind}/${o.metadata.name} ${path}: no such field`);
        for (const parent of parents) {
          // The field's holder and its keys: a map and the field, or a list and its indexes.
          const keys = last === "*" && Array.isArray(parent) ? parent.map((_, i) => i) : isMap(parent) && last in parent ? [last] : [];
          if (keys.length === 0) throw new Error(`replacement target ${o.kind}/${o.metadata.name} ${path}: no such field`);
          const holder = parent as Record<string | number, unknown>;
          for (const key of keys) holder[key] = replaced(holder[key], value, options, path);
        }
      }
    }
  }
}

function replaced(old: unknown, value: string, options: { delimiter?: string; index?: number }, path: string): string {
  if (options.delimiter === undefined) return value;
  const pieces = String(old).split(options.delimiter);
  const i = options.index ?? 0;
  if (i < 0 || i >= pieces.length) throw new Error(`replacement ${path}: part ${i} of ${pieces.length}`);
  pieces[i] = value;
  return pieces.join(options.delimiter);
}

/** Throws on fields of `o` outside `fields`, naming them. */
function only(o: object, fields: readonly string[], what: string): void {
  const unknown = Object.keys(o).filter((f) => !fields.includes(f));
  if (unknown.length > 0) throw new Error(`${what} fields this renderer does not implement: ${unknown.join(", ")}`);
}

/** The values at a dotted path, `*` standing for every item of a list. */
function fieldValues(root: unknown, parts: string[]): unknown[] {
  let values = [root];
  for (const part of parts) {
    values = values.flatMap((v) => {
      if (part === "*") {
        if (!Array.isArray(v)) throw new Error(`"*" over a field that is not a list`);
        return v;
      }
      return isMap(v) && part in v ? [v[part]] : [];
    });
  }
  return values;
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
  only(target, ["kind", "name", "labelSelector"], "patch target");
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
