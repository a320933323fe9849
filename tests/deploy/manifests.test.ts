// The Kubernetes manifests (deploy/k8s), rendered per overlay by tests/deploy/kustomize.ts:
// every object valid against the Kubernetes schemas (kubernetes-models), and what the pods
// run, listen on, probe and read from the environment the same as what the code does.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Service } from "kubernetes-models/v1/Service";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/grpc/health/v1/health_pb.ts";
import { AlignService } from "../../gen/vaccine/v1/align_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { loadConfig, SERVICE_NAMES, VARIABLES, type ServiceName } from "../../services/suite/config.ts";
import { exporterNames } from "../../services/platform/telemetry.ts";
import { startProcess } from "../helpers/process.ts";
import { kustomize, type K8sObject } from "./kustomize.ts";

const K8S = "deploy/k8s";
const DESCS: Record<ServiceName, DescService> = {
  align: AlignService,
  finetune: FineTuneService,
  embed: EmbedService,
  score: ScoreService,
  datasets: DatasetService,
  checkpoints: CheckpointService,
};
// The services with a job executor (services/suite/create-deps.ts): they train.
const TRAINING_SERVICES: ServiceName[] = ["align", "finetune"];
// The OTLP exporters' default timeout (OTEL_EXPORTER_OTLP_TIMEOUT), the longest telemetry flush.
const OTLP_TIMEOUT_MS = 10_000;
// Closing connections after the in-flight calls were aborted: well under this in practice.
const CLOSE_MS = 10_000;

const RENDERS = {
  cpu: () => kustomize(`${K8S}/overlays/cpu`),
  gpu: () => kustomize(`${K8S}/overlays/gpu`),
  "cpu + pvc-store": () => kustomize(`${K8S}/overlays/cpu`, [`${K8S}/components/pvc-store`]),
  "gpu + prometheus": () => kustomize(`${K8S}/overlays/gpu`, [`${K8S}/components/prometheus`]),
};

// kubernetes-models validates types, formats and required fields, but not unknown fields.
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  "v1/Namespace": Namespace,
  "v1/ConfigMap": ConfigMap,
  "v1/Service": Service,
  "v1/PersistentVolumeClaim": PersistentVolumeClaim,
  "apps/v1/Deployment": Deployment,
  "apps/v1/StatefulSet": StatefulSet,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
};

// ...so a misspelt field (readinesProbe) is caught against every field name the Kubernetes
// schemas know, read from the generated validators (kubernetes-models, and apimachinery's
// for ObjectMeta and LabelSelector).
const KNOWN_FIELDS = (() => {
  const names = new Set<string>();
  for (const pkg of ["kubernetes-models", "@kubernetes-models/apimachinery"]) {
    const dir = new URL(`../../node_modules/${pkg}/_schemas/`, import.meta.url);
    for (const file of readdirSync(dir).filter((f) => f.endsWith(".mjs"))) {
      for (const [, a, b] of readFileSync(new URL(file, dir), "utf8").matchAll(/data\.([A-Za-z_$][\w$]*)|data\["([^"]+)"\]/g)) names.add(a ?? b);
    }
  }
  return names;
})();
// Maps whose keys are data, not fields.
const FREE_FORM = new Set(["labels", "annotations", "data", "matchLabels", "nodeSelector", "limits", "requests"]);

function unknownFields(value: unknown, path: string, out: string[] = []): string[] {
  if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, `${path}[${i}]`, out));
  else if (typeof value === "object" && value !== null) {
    for (const [key, v] of Object.entries(value)) {
      if (!KNOWN_FIELDS.has(key)) out.push(`${path}.${key}`);
      // A Service's selector is a label map too.
      else if (!FREE_FORM.has(key) && !(key === "selector" && path === "Service.spec")) unknownFields(v, `${path}.${key}`, out);
    }
  }
  return out;
}

// --- Reading the rendered objects ---
interface Container {
  name: string;
  image: string;
  command?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string }; configMapKeyRef?: { name: string; key: string } } }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  securityContext?: { readOnlyRootFilesystem?: boolean };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface Probe {
  grpc?: { port: number; service?: string };
}
interface PodSpec {
  containers: Container[];
  terminationGracePeriodSeconds?: number;
  nodeSelector?: Record<string, string>;
  tolerations?: { key?: string; operator?: string; effect?: string }[];
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number };
  volumes?: { name: string; persistentVolumeClaim?: { claimName: string }; emptyDir?: unknown; configMap?: { name: string } }[];
}
interface Workload extends K8sObject {
  spec: {
    replicas?: number;
    selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec };
    volumeClaimTemplates?: { metadata: { name: string } }[];
  };
}

function find<T extends K8sObject = K8sObject>(objects: K8sObject[], kind: string, name: string): T {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name}`);
  return found as T;
}

function workload(objects: K8sObject[], name: ServiceName): Workload {
  return find<Workload>(objects, TRAINING_SERVICES.includes(name) ? "StatefulSet" : "Deployment", name);
}

function container(w: Workload): Container {
  return w.spec.template.spec.containers.find((c) => c.name === "vaccine")!;
}

const podName = (w: Workload) => `${w.metadata.name}-0`;

/**
 * The container's environment as the kubelet builds it: envFrom ConfigMaps, then env in order,
 * $(VAR) expanded from variables defined before; downward-API fields get stand-in values and
 * Secret keys a placeholder (their values are not in the manifests).
 */
function environment(objects: K8sObject[], w: Workload): Record<string, string> {
  const c = container(w);
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) Object.assign(env, find<K8sObject & { data: Record<string, string> }>(objects, "ConfigMap", from.configMapRef.name).data);
    if (from.secretRef) throw new Error("envFrom a Secret: its variables cannot be checked; use secretKeyRef");
  }
  const fields: Record<string, string> = { "metadata.name": podName(w), "metadata.namespace": w.metadata.namespace! };
  for (const { name, value, valueFrom } of c.env ?? []) {
    if (value !== undefined) env[name] = value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, v: string) => env[v] ?? ref);
    else if (valueFrom?.fieldRef) env[name] = fields[valueFrom.fieldRef.fieldPath];
    else if (valueFrom?.secretKeyRef) env[name] = `<secret ${valueFrom.secretKeyRef.name}/${valueFrom.secretKeyRef.key}>`;
    else if (valueFrom?.configMapKeyRef) env[name] = find<K8sObject & { data: Record<string, string> }>(objects, "ConfigMap", valueFrom.configMapKeyRef.name).data[valueFrom.configMapKeyRef.key];
    else throw new Error(`${name}: a kind of value this test does not read`);
  }
  return env;
}

function underMount(c: Container, path: string): { name: string; mountPath: string } | undefined {
  return c.volumeMounts?.find((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`));
}

function collectorEndpoint(objects: K8sObject[], env: Record<string, string>) {
  const url = new URL(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  const service = find<K8sObject & { spec: { ports: { name: string; port: number }[] } }>(objects, "Service", url.hostname.split(".")[0]);
  return { url, port: service.spec.ports.find((p) => p.port === Number(url.port)) };
}

// --- The checks, per rendered overlay ---
describe.each(Object.entries(RENDERS))("overlay %s", (_, render) => {
  const objects = render();

  it("renders only objects valid against the Kubernetes schemas, without unknown fields, each once", () => {
    for (const o of objects) {
      const Model = MODELS[`${o.apiVersion}/${o.kind}`];
      expect(Model, `${o.apiVersion} ${o.kind}`).toBeDefined();
      expect(() => new Model(o as never).validate(), `${o.kind} ${o.metadata.name}`).not.toThrow();
      expect(unknownFields(o, o.kind)).toEqual([]);
    }
    const ids = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(ids).size).toBe(ids.length);
    expect(objects.every((o) => o.kind === "Namespace" || o.metadata.namespace === "vaccine")).toBe(true);
  });

  it.each(SERVICE_NAMES)("%s runs its own entrypoint with an environment loadConfig accepts", (name) => {
    const c = container(workload(objects, name));
    // The compiled entrypoint (npm run build) of the service's own main.ts.
    expect(c.command).toEqual(["node", `dist/services/${name}/main.js`]);
    expect(readFileSync(`services/${name}/main.ts`, "utf8")).toContain(`runServices(["${name}"])`);
    expect(readFileSync(c.command![1], "utf8")).toContain(`runServices(["${name}"])`);
    const env = environment(objects, workload(objects, name));
    const known = new Set(VARIABLES.map((v) => v.name));
    expect(Object.keys(env).filter((k) => k.startsWith("VACCINE_") && !known.has(k))).toEqual([]);
    const config = loadConfig(env);
    expect(config.host).toBe("0.0.0.0");
    expect(c.ports?.find((p) => p.name === "grpc")?.containerPort).toBe(config.port);
    // Credentials only ever by reference.
    expect((c.env ?? []).filter((e) => /SECRET|PASSWORD|TOKEN|KEY_ID/.test(e.name) && e.value !== undefined)).toEqual([]);
    if (config.store === "s3") {
      for (const key of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) expect(env[key]).toBe(`<secret vaccine-s3/${key}>`);
    } else {
      expect(Object.keys(env).filter((k) => k.startsWith("AWS_"))).toEqual([]);
    }
  });

  it.each(SERVICE_NAMES)("%s is probed over grpc.health.v1 with its real service name, on its port", (name) => {
    const c = container(workload(objects, name));
    const { port } = loadConfig(environment(objects, workload(objects, name)));
    const typeName = DESCS[name].typeName;
    expect(c.startupProbe?.grpc).toEqual({ port, service: typeName });
    expect(c.readinessProbe?.grpc).toEqual({ port, service: typeName });
    expect(c.livenessProbe?.grpc?.port).toBe(port);
    expect(["", typeName]).toContain(c.livenessProbe?.grpc?.service ?? "");
    const service = find<K8sObject & { spec: { selector: Record<string, string>; ports: { name: string; targetPort: string }[] } }>(objects, "Service", name);
    expect(workload(objects, name).spec.template.metadata.labels).toMatchObject(service.spec.selector);
    expect(service.spec.ports.find((p) => p.name === "grpc")?.targetPort).toBe("grpc");
  });

  it.each(SERVICE_NAMES)("%s exports telemetry to the collector as its own service, with its pod in the resource", (name) => {
    const w = workload(objects, name);
    const env = environment(objects, w);
    expect(env.OTEL_SERVICE_NAME).toBe(`vaccine-${name}`);
    expect(exporterNames(env, "TRACES")).toEqual(["otlp"]);
    const { url, port } = collectorEndpoint(objects, env);
    expect(port?.name).toBe(env.OTEL_EXPORTER_OTLP_PROTOCOL === "grpc" ? "otlp-grpc" : "otlp-http");
    expect(url.protocol).toBe("http:");
    const attributes = Object.fromEntries(env.OTEL_RESOURCE_ATTRIBUTES.split(",").map((kv) => kv.split("=")));
    // service.instance.id keeps the replicas of one service apart in the collector's metrics.
    expect(attributes).toEqual({ "service.instance.id": podName(w), "k8s.pod.name": podName(w), "k8s.namespace.name": "vaccine" });
  });

  it.each(SERVICE_NAMES)("%s can write where the process writes, and jobs survive the pod", (name) => {
    const w = workload(objects, name);
    const c = container(w);
    const config = loadConfig(environment(objects, w));
    expect(c.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(w.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001 });
    const written = ["/tmp", config.cacheDir, ...(config.store === "local" ? [config.storeRoot] : [])];
    for (const path of written) expect(underMount(c, path), path).toBeDefined();
    const volumes = new Set([...(w.spec.template.spec.volumes ?? []).map((v) => v.name), ...(w.spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name)]);
    for (const m of c.volumeMounts ?? []) expect(volumes.has(m.name), m.name).toBe(true);
    if (TRAINING_SERVICES.includes(name)) {
      // One process owns its job records: one pod, on a volume of its own.
      expect(w.spec.replicas).toBe(1);
      expect(config.maxRunningJobs).toBe(1);
      const jobs = underMount(c, config.jobsDir);
      expect(w.spec.volumeClaimTemplates?.map((t) => t.metadata.name)).toContain(jobs?.name);
    }
  });

  it.each(SERVICE_NAMES)("%s gets the time to finish its work and flush telemetry on SIGTERM", (name) => {
    const w = workload(objects, name);
    const c = container(w);
    const env = environment(objects, w);
    const preStop = c.lifecycle?.preStop?.exec?.command;
    const preStopMs = preStop ? Number(preStop[1]) * 1000 : 0;
    if (preStop) expect(preStop[0]).toBe("sleep");
    const flushMs = Number(env.OTEL_EXPORTER_OTLP_TIMEOUT ?? OTLP_TIMEOUT_MS);
    const needed = preStopMs + loadConfig(env).shutdownTimeoutMs + CLOSE_MS + flushMs;
    expect(w.spec.template.spec.terminationGracePeriodSeconds! * 1000).toBeGreaterThanOrEqual(needed);
  });

  it.each(SERVICE_NAMES)("%s has a disruption budget, and an autoscaler when it does not train", (name) => {
    const w = workload(objects, name);
    const selects = (o: K8sObject) => {
      const labels = (o.spec as { selector?: { matchLabels?: Record<string, string> } }).selector?.matchLabels ?? {};
      return Object.entries(labels).every(([k, v]) => w.spec.template.metadata.labels[k] === v);
    };
    expect(objects.filter((o) => o.kind === "PodDisruptionBudget" && selects(o))).toHaveLength(1);
    const hpa = objects.find((o) => o.kind === "HorizontalPodAutoscaler" && (o.spec as { scaleTargetRef: { name: string } }).scaleTargetRef.name === name);
    if (TRAINING_SERVICES.includes(name)) {
      expect(hpa).toBeUndefined();
    } else {
      expect(hpa?.spec).toMatchObject({ scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name } });
      // The autoscaler owns the replica count.
      expect(w.spec.replicas).toBeUndefined();
    }
  });

  it("runs a collector whose configuration uses only what it defines, listening where the services send", () => {
    const cm = find<K8sObject & { data: Record<string, string> }>(objects, "ConfigMap", "otel-collector-config");
    const config = parseYaml(cm.data["collector.yaml"]) as Record<string, Record<string, unknown>> & {
      service: { extensions?: string[]; pipelines: Record<string, { receivers: string[]; processors?: string[]; exporters: string[] }> };
    };
    const defined = (section: string, name: string) => name in (config[section] ?? {});
    for (const [pipeline, { receivers, processors = [], exporters }] of Object.entries(config.service.pipelines)) {
      for (const r of receivers) expect(defined("receivers", r) || defined("connectors", r), `${pipeline}: ${r}`).toBe(true);
      for (const p of processors) expect(defined("processors", p), `${pipeline}: ${p}`).toBe(true);
      for (const e of exporters) expect(defined("exporters", e) || defined("connectors", e), `${pipeline}: ${e}`).toBe(true);
    }
    for (const e of config.service.extensions ?? []) expect(defined("extensions", e)).toBe(true);
    expect(Object.keys(config.service.pipelines).sort()).toEqual(["metrics", "traces"]);
    const otlp = (config.receivers.otlp as { protocols: Record<string, { endpoint: string }> }).protocols;
    const env = environment(objects, workload(objects, "align"));
    const { port } = collectorEndpoint(objects, env);
    expect(otlp[env.OTEL_EXPORTER_OTLP_PROTOCOL === "grpc" ? "grpc" : "http"].endpoint).toBe(`0.0.0.0:${port!.port}`);
    // The collector reads the file the ConfigMap mounts.
    const pod = find<Workload>(objects, "Deployment", "otel-collector").spec.template.spec;
    const c = pod.containers[0] as Container & { args: string[] };
    const file = c.args.find((a) => a.startsWith("--config="))!.slice("--config=".length);
    const mount = c.volumeMounts!.find((m) => m.mountPath === posix.dirname(file))!;
    expect(pod.volumes!.find((v) => v.name === mount.name)?.configMap?.name).toBe(cm.metadata.name);
    expect(Object.keys(cm.data)).toContain(posix.basename(file));
  });
});

describe("accelerators", () => {
  const gpu = (c: Container) => c.resources?.limits?.["nvidia.com/gpu"];

  it("the cpu overlay runs everything on the wasm backend, without GPUs", () => {
    const objects = RENDERS.cpu();
    for (const name of SERVICE_NAMES) {
      const w = workload(objects, name);
      expect(loadConfig(environment(objects, w)).backend).toBe("wasm");
      expect(gpu(container(w))).toBeUndefined();
      expect(container(w).image).toMatch(/:[\w.-]*cpu$/);
    }
  });

  it("the gpu overlay gives align and finetune a GPU each on GPU nodes, with the gpu image and backend", () => {
    const objects = RENDERS.gpu();
    for (const name of SERVICE_NAMES) {
      const w = workload(objects, name);
      const c = container(w);
      const { backend } = loadConfig(environment(objects, w));
      if (TRAINING_SERVICES.includes(name)) {
        expect(gpu(c)).toBe(1);
        expect(backend).toBe("tensorflow-gpu");
        expect(c.image).toMatch(/:[\w.-]*gpu$/);
        expect(Object.keys(w.spec.template.spec.nodeSelector ?? {})).toContain("nvidia.com/gpu.present");
        expect(w.spec.template.spec.tolerations).toContainEqual({ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" });
      } else {
        expect(gpu(c)).toBeUndefined();
        expect(backend).toBe("wasm");
        expect(c.image).toMatch(/:[\w.-]*cpu$/);
      }
    }
  });
});

describe("components", () => {
  it("pvc-store puts every service on one ReadWriteMany volume as a local store", () => {
    const objects = RENDERS["cpu + pvc-store"]();
    const pvc = find<K8sObject & { spec: { accessModes: string[] } }>(objects, "PersistentVolumeClaim", "vaccine-store");
    expect(pvc.spec.accessModes).toEqual(["ReadWriteMany"]);
    for (const name of SERVICE_NAMES) {
      const w = workload(objects, name);
      const config = loadConfig(environment(objects, w));
      expect(config.store).toBe("local");
      const mount = underMount(container(w), config.storeRoot)!;
      expect(w.spec.template.spec.volumes?.find((v) => v.name === mount.name)?.persistentVolumeClaim?.claimName).toBe(pvc.metadata.name);
    }
  });

  it("prometheus exposes the metrics port the exporter listens on, in every pod and Service", () => {
    const objects = RENDERS["gpu + prometheus"]();
    for (const name of SERVICE_NAMES) {
      const w = workload(objects, name);
      const env = environment(objects, w);
      expect(exporterNames(env, "METRICS")).toEqual(["prometheus"]);
      const port = Number(env.OTEL_EXPORTER_PROMETHEUS_PORT ?? 9464);
      expect(container(w).ports).toContainEqual({ name: "metrics", containerPort: port });
      expect(w.spec.template.metadata.annotations?.["prometheus.io/port"]).toBe(String(port));
      const service = find<K8sObject & { spec: { ports: { name: string; targetPort: string }[] } }>(objects, "Service", name);
      expect(service.spec.ports).toContainEqual({ name: "metrics", port, targetPort: "metrics" });
    }
  });
});

describe("the pods' command and environment, run for real", () => {
  it("each service starts from its manifest, answers its probes SERVING, exports traces, and exits 0 on SIGTERM", async () => {
    const objects = RENDERS.cpu();
    const root = mkdtempSync(join(tmpdir(), "vaccine-manifests-"));
    // Stands in for the collector: takes every OTLP/HTTP request.
    const exports: string[] = [];
    const collector = http.createServer((req, res) => {
      exports.push(`${req.method} ${req.url} ${req.headers["content-type"]}`);
      req.resume().on("end", () => res.end());
    });
    await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve));
    try {
      // One at a time: four processes starting at once on a busy CI machine could miss
      // startProcess's 30 s budget.
      for (const name of SERVICE_NAMES) {
        const w = workload(objects, name);
        const c = container(w);
        const dir = join(root, name);
        // Only where the process listens, writes and sends changes: here, not in a pod.
        const sandbox: Record<string, string> = {
          ...environment(objects, w),
          VACCINE_HOST: "127.0.0.1",
          VACCINE_PORT: "0",
          VACCINE_JOBS_DIR: join(dir, "jobs"),
          VACCINE_CACHE_DIR: join(dir, "cache"),
          VACCINE_STORE_ROOT: join(dir, "store"),
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(collector.address() as AddressInfo).port}`,
        };
        const proc = await startProcess(c.command![1], sandbox);
        try {
          const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proc.port}` }));
          for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) {
            expect((await health.check({ service: probe!.grpc!.service ?? "" })).status).toBe(Serving.SERVING);
          }
        } finally {
          proc.child.kill("SIGTERM");
        }
        expect((await proc.exited).code).toBe(0);
      }
      // The health checks' spans, flushed at exit in the manifests' protocol.
      const protocol = environment(objects, workload(objects, "align")).OTEL_EXPORTER_OTLP_PROTOCOL;
      const type = { "http/protobuf": "application/x-protobuf", "http/json": "application/json" }[protocol];
      const traces = exports.filter((e) => e.startsWith("POST /v1/traces "));
      expect(traces.length).toBeGreaterThanOrEqual(SERVICE_NAMES.length);
      expect(traces.every((e) => e === `POST /v1/traces ${type}`)).toBe(true);
    } finally {
      await new Promise<void>((resolve) => collector.close(() => resolve()));
      rmSync(root, { recursive: true, force: true });
    }
  });
});

