/**
 * Renders deploy/k8s for the tests: with the real `kubectl kustomize` when kubectl is on PATH,
 * else with the small renderer in kustomize.ts. An overlay with extra components is rendered
 * the way deploy/README.md tells users to combine them: a kustomization of its own with
 * `resources: [<overlay>]`, `components: [...]` and the namespace.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { parseAllDocuments } from "yaml";
import { kustomize, type K8sObject } from "./kustomize.ts";

export type { K8sObject };
export type Engine = "kubectl" | "fallback";

export const K8S = "deploy/k8s";
export const NAMESPACE = "vaccine";

let kubectl: boolean | undefined;
/** True when `kubectl kustomize` can run here. */
export function hasKubectl(): boolean {
  kubectl ??= spawnSync("kubectl", ["version", "--client"], { stdio: "ignore" }).status === 0;
  return kubectl;
}

/** kubectl when it is there, the fallback otherwise (VACCINE_KUSTOMIZE=fallback forces it). */
export const ENGINE: Engine = process.env.VACCINE_KUSTOMIZE === "fallback" || !hasKubectl() ? "fallback" : "kubectl";

function renderDir(dir: string, engine: Engine): K8sObject[] {
  if (engine === "fallback") return kustomize(dir);
  // kubectl prints errors on stderr and exits non-zero: execFileSync throws with them.
  const out = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  return parseAllDocuments(out).flatMap((doc) => {
    if (doc.errors.length > 0) throw new Error(`kubectl kustomize ${dir}: ${doc.errors[0].message}`);
    const value = doc.toJS() as K8sObject | null;
    return value === null ? [] : [value];
  });
}

const cache = new Map<string, K8sObject[]>();

export interface RenderOptions {
  engine?: Engine;
  /** Strategic merge patches (YAML texts) of a user's own overlay. */
  patches?: string[];
  /** The user's `namespace:` (default NAMESPACE). */
  namespace?: string;
  /** A replacements file (YAML text) the user's kustomization lists under `replacements:`. */
  replacements?: string;
}

/**
 * The objects of overlays/<overlay> with components/<c> for each of `components`, through a
 * user's own kustomization when anything is added to the overlay, as a fresh copy (tests may
 * not share mutations).
 */
export function render(overlay: string, components: string[] = [], options: RenderOptions = {}): K8sObject[] {
  const { engine = ENGINE, patches = [], namespace = NAMESPACE, replacements } = options;
  const id = JSON.stringify([engine, overlay, components, patches, namespace, replacements]);
  if (!cache.has(id)) {
    const overlayDir = resolve(K8S, "overlays", overlay);
    if (components.length === 0 && patches.length === 0 && namespace === NAMESPACE && replacements === undefined) {
      cache.set(id, renderDir(overlayDir, engine));
    } else {
      // kustomize refuses absolute paths in resources: paths relative to the temporary folder.
      const dir = mkdtempSync(join(tmpdir(), "vaccine-kustomize-"));
      try {
        const rel = (path: string) => relative(dir, path);
        patches.forEach((patch, i) => writeFileSync(join(dir, `patch-${i}.yaml`), patch));
        if (replacements !== undefined) writeFileSync(join(dir, "replacements.yaml"), replacements);
        writeFileSync(
          join(dir, "kustomization.yaml"),
          [
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
            `namespace: ${namespace}`,
            "resources:",
            `  - ${rel(overlayDir)}`,
            ...(components.length ? ["components:", ...components.map((c) => `  - ${rel(resolve(K8S, "components", c))}`)] : []),
            ...(patches.length ? ["patches:", ...patches.map((_, i) => `  - path: patch-${i}.yaml`)] : []),
            ...(replacements !== undefined ? ["replacements:", "  - path: replacements.yaml"] : []),
            "",
          ].join("\n"),
        );
        cache.set(id, renderDir(dir, engine));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  return structuredClone(cache.get(id)!);
}
