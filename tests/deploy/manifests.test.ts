// The Kubernetes manifests (deploy/k8s), rendered per overlay by `kubectl kustomize` (or the
// fallback renderer, tests/deploy/render.ts): every object valid against the Kubernetes schemas
// (kubernetes-models; the KEDA ScaledObject field by field), and what the pods run, listen on,
// probe, read from the environment and train the same as what the code does.
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
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
import { CheckpointService } from "../../gen/vaccine/v1/checkpoints_pb.ts";
import { DatasetService } from "../../gen/vaccine/v1/datasets_pb.ts";
import { EmbedService } from "../../gen/vaccine/v1/embed_pb.ts";
import { FineTuneService } from "../../gen/vaccine/v1/finetune_pb.ts";
import { ScoreService } from "../../gen/vaccine/v1/score_pb.ts";
import { QUEUE_NAME, queueKeys } from "../../services/jobs/queue/connection.ts";
import { exporterNames, prometheusAddress } from "../../services/platform/telemetry-env.ts";
import { tokenHash } from "../../services/platform/token-auth.ts";
import { loadConfig, SERVICE_NAMES, unknownVariables, VARIABLES, type Config, type ServiceName } from "../../services/suite/config.ts";
import { TestPki } from "../helpers/certs.ts";
import { rpcFailure } from "../helpers/errors.ts";
import { startProcess } from "../../scripts/service-process.ts";
import { startRedis } from "../../scripts/redis-server.ts";
import { ENGINE, hasKubectl, NAMESPACE, render, type K8sObject } from "./render.ts";

const DESCS: Record<ServiceName, DescService> = {
  align: AlignService,
  finetune: FineTuneService,
  embed: EmbedService,
  score: ScoreService,
  datasets: DatasetService,
  checkpoints: CheckpointService,
};

// The vaccine workloads: one api Deployment per service, and the training workers.
const WORKLOADS = [...SERVICE_NAMES, "worker"] as const;
type WorkloadName = (typeof WORKLOADS)[number];
// What each serves (an api) or trains (the worker: both job kinds), and in which role.
const EXPECTED: Record<WorkloadName, { role: Config["role"]; services: ServiceName[] }> = {
  align: { role: "api", services: ["align"] },
  finetune: { role: "api", services: ["finetune"] },
  embed: { role: "api", services: ["embed"] },
  score: { role: "api", services: ["score"] },
  datasets: { role: "api", services: ["datasets"] },
  checkpoints: { role: "api", services: ["checkpoints"] },
  worker: { role: "worker", services: ["align", "finetune"] },
};
// The services whose RPCs create jobs (services/suite/create-deps.ts: servesJobs).
const JOB_SERVICES: ServiceName[] = ["align", "finetune"];
// The OTLP exporters' default timeout (OTEL_EXPORTER_OTLP_TIMEOUT), the longest telemetry flush.
const OTLP_TIMEOUT_MS = 10_000;
// Closing connections after the in-flight calls were aborted: well under this in practice.
const CLOSE_MS = 10_000;
// What a worker's SIGTERM waits for (deploy/README.md): a training step within its budget,
// then a training state written to the store.
const STEP_BUDGET_MS = 60_000;
const STATE_WRITE_MS = 30_000;
// BullMQ's lists the worker autoscaler reads: the waiting jobs (connection.ts names that one)
// and the jobs being trained.
const queueLists = (cluster: boolean) => {
  const keys = queueKeys(undefined, cluster);
  return [keys.wait, `${keys.prefix}:${QUEUE_NAME}:active`];
};

// Overlays and components, combined as deploy/README.md says: [overlay, components].
const COMBOS: Record<string, [string, string[]]> = {
  dev: ["dev", []],
  cpu: ["cpu", []],
  gpu: ["gpu", []],
  "cpu + pvc-store": ["cpu", ["pvc-store"]],
  "gpu + prometheus": ["gpu", ["prometheus"]],
  // The components must leave Redis (components/redis, in dev) alone.
  "dev + pvc-store + prometheus": ["dev", ["pvc-store", "prometheus"]],
  // TLS, tokens and probes on the health port (components/tls); the certificate from cert-manager.
  secure: ["secure", []],
  "secure + cert-manager": ["secure", ["cert-manager"]],
  "gpu + tls + cert-manager + prometheus": ["gpu", ["tls", "cert-manager", "prometheus"]],
  // The queue on a Redis Cluster: KEDA's redis-cluster scaler on the hash-tagged lists.
  "cpu + redis-cluster": ["cpu", ["redis-cluster"]],
};
const renderCombo = (name: string) => render(...COMBOS[name]);

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
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string }; configMapKeyRef?: { name: string; key: string } } }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  securityContext?: { readOnlyRootFilesystem?: boolean };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; subPath?: string }[];
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
  volumes?: { name: string; persistentVolumeClaim?: { claimName: string }; emptyDir?: unknown; configMap?: { name: string }; secret?: { secretName: string; items?: unknown[] } }[];
}
interface Workload extends K8sObject {
  spec: {
    replicas?: number;
    selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec };
    volumeClaimTemplates?: { metadata: { name: string } }[];
  };
}
type Ports = { name: string; port: number; targetPort: string | number; appProtocol?: string }[];
type ServiceObject = K8sObject & { spec: { selector: Record<string, string>; ports: Ports } };
interface Trigger {
  type: string;
  name?: string;
  metadata: Record<string, unknown>;
  authenticationRef?: { name: string };
}
interface ScaledObject extends K8sObject {
  spec: {
    scaleTargetRef: { apiVersion?: string; kind?: string; name: string };
    minReplicaCount?: number;
    maxReplicaCount?: number;
    pollingInterval?: number;
    cooldownPeriod?: number;
    advanced?: {
      scalingModifiers?: { formula?: string; target?: string; activationTarget?: string; metricType?: string };
      horizontalPodAutoscalerConfig?: { behavior?: unknown };
    };
    triggers: Trigger[];
  };
}

function find<T extends K8sObject = K8sObject>(objects: K8sObject[], kind: string, name: string): T {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name}`);
  return found as T;
}

// Object order is kustomize's own (by kind): renderers are compared in this order, lists
// inside objects as they are.
const key = (o: K8sObject) => `${o.apiVersion}/${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`;
const sorted = (objects: K8sObject[]) => [...objects].sort((a, b) => key(a).localeCompare(key(b)));

function workload(objects: K8sObject[], name: WorkloadName): Workload {
  return find<Workload>(objects, "Deployment", name);
}

function container(w: Workload): Container {
  return w.spec.template.spec.containers.find((c) => c.name === "vaccine")!;
}

// A Deployment's pods are named <replicaset>-<suffix>; any stand-in does for the environment.
const podName = (w: Workload) => `${w.metadata.name}-5d4f8b9c6-x7k2p`;

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

/** The services an entrypoint pins (`runServices(["embed"])`), or undefined when VACCINE_SERVICES decides. */
function pinnedServices(entry: string): ServiceName[] | undefined {
  const source = readFileSync(entry.replace(/^dist\//, "").replace(/\.js$/, ".ts"), "utf8");
  const m = /runServices\((\[[^\]]*\])\)/.exec(source);
  return m ? (JSON.parse(m[1]) as ServiceName[]) : undefined;
}

/**
 * What a process does with jobs, as services/suite/create-deps.ts and queue-deps.ts decide it
 * from the configuration: run them in-process (no queue), enqueue them, or train queued ones.
 */
function jobsDuty(config: Config, services: ServiceName[]) {
  const servesJobs = services.some((s) => JOB_SERVICES.includes(s));
  return {
    local: servesJobs && !config.queueUrl,
    enqueues: Boolean(config.queueUrl) && servesJobs && config.role !== "worker",
    trains: Boolean(config.queueUrl) && config.role !== "api",
  };
}

function servedBy(objects: K8sObject[], name: WorkloadName) {
  const w = workload(objects, name);
  const env = environment(objects, w);
  // Every VACCINE_* variable a manifest sets is one the suite reads (no start warning).
  expect(unknownVariables(env), name).toEqual([]);
  const config = loadConfig(env);
  return { w, config, services: pinnedServices(container(w).command![1]) ?? config.services };
}

function underMount(c: Container, path: string): NonNullable<Container["volumeMounts"]>[number] | undefined {
  return c.volumeMounts?.find((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`));
}

function collectorEndpoint(objects: K8sObject[], env: Record<string, string>) {
  const url = new URL(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  const service = find<K8sObject & { spec: { ports: { name: string; port: number }[] } }>(objects, "Service", url.hostname.split(".")[0]);
  return { url, port: service.spec.ports.find((p) => p.port === Number(url.port)) };
}

function selectsPods(selector: Record<string, string> | undefined, w: Workload): boolean {
  return Object.entries(selector ?? {}).every(([k, v]) => w.spec.template.metadata.labels[k] === v);
}

/** host:port and database of a redis:// URL, as KEDA's redis trigger names them. */
function redisAddress(url: string): { address: string; host: string; port: number; db: string } {
  const u = new URL(url);
  const port = u.port ? Number(u.port) : 6379;
  return { address: `${u.hostname}:${port}`, host: u.hostname, port, db: u.pathname.replace(/^\//, "") || "0" };
}

// The ScaledObject fields (KEDA 2.12+, keda.sh/v1alpha1) these manifests may use.
const SCALED_OBJECT_SPEC = new Set(["scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"]);
const REDIS_TRIGGER_METADATA: Record<string, Set<string>> = {
  redis: new Set(["address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv", "passwordFromEnv", "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl"]),
  "redis-cluster": new Set(["addresses", "hosts", "ports", "addressesFromEnv", "hostsFromEnv", "portsFromEnv", "usernameFromEnv", "passwordFromEnv", "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl"]),
};

/**
 * kubernetes-models has no KEDA schema: the ScaledObject's fields one by one. Returns problems.
 * The CRD types trigger metadata as a map of strings, so a YAML number there is refused.
 */
function scaledObjectProblems(objects: K8sObject[], so: ScaledObject): string[] {
  const problems: string[] = [];
  const fail = (message: string) => problems.push(`ScaledObject ${so.metadata.name}: ${message}`);
  if (so.apiVersion !== "keda.sh/v1alpha1") fail(`apiVersion ${so.apiVersion}`);
  for (const key of Object.keys(so.spec)) if (!SCALED_OBJECT_SPEC.has(key)) fail(`unknown field spec.${key}`);
  const { scaleTargetRef: ref, minReplicaCount: min = 0, maxReplicaCount: max = 100, triggers, advanced } = so.spec;
  if (!objects.some((o) => o.apiVersion === (ref.apiVersion ?? "apps/v1") && o.kind === (ref.kind ?? "Deployment") && o.metadata.name === ref.name)) fail(`scaleTargetRef names no object: ${JSON.stringify(ref)}`);
  for (const [field, value] of Object.entries({ minReplicaCount: min, maxReplicaCount: max, pollingInterval: so.spec.pollingInterval ?? 30, cooldownPeriod: so.spec.cooldownPeriod ?? 300 })) {
    if (!Number.isInteger(value) || value < 0) fail(`${field} is not a count: ${String(value)}`);
  }
  if (max < Math.max(min, 1)) fail(`maxReplicaCount ${max} below minReplicaCount ${min} (or 0)`);
  if (!Array.isArray(triggers) || triggers.length === 0) fail("no triggers");
  const names = new Set<string>();
  for (const t of triggers ?? []) {
    for (const key of Object.keys(t)) if (!["type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"].includes(key)) fail(`unknown trigger field ${key}`);
    if (t.name) names.add(t.name);
    for (const [key, value] of Object.entries(t.metadata ?? {})) {
      if (typeof value !== "string") fail(`trigger ${t.name}: metadata.${key} must be a string, is ${typeof value}`);
      if (REDIS_TRIGGER_METADATA[t.type] && !REDIS_TRIGGER_METADATA[t.type].has(key)) fail(`trigger ${t.name}: unknown ${t.type} metadata ${key}`);
    }
    if (REDIS_TRIGGER_METADATA[t.type] && !t.metadata.listName) fail(`trigger ${t.name}: no listName`);
  }
  if (names.size !== (triggers ?? []).filter((t) => t.name).length) fail("trigger names repeat");
  const modifiers = advanced?.scalingModifiers;
  if (modifiers) {
    if (!modifiers.formula || !modifiers.target) fail("scalingModifiers need a formula and a target");
    if (typeof modifiers.target !== "string" || !/^\d+(\.\d+)?$/.test(modifiers.target)) fail(`scalingModifiers.target ${String(modifiers.target)}`);
    if (!["AverageValue", "Value", undefined].includes(modifiers.metricType)) fail(`scalingModifiers.metricType ${modifiers.metricType}`);
    // Every name in the formula is a trigger's.
    for (const [id] of (modifiers.formula ?? "").matchAll(/[A-Za-z_][\w-]*/g)) if (!names.has(id)) fail(`formula names no trigger: ${id}`);
  }
  return problems;
}

// The Certificate fields (cert-manager.io/v1) these manifests may use.
const CERTIFICATE_SPEC = new Set(["secretName", "secretTemplate", "duration", "renewBefore", "privateKey", "usages", "dnsNames", "ipAddresses", "uris", "commonName", "subject", "issuerRef", "isCA"]);
const KEY_USAGES = new Set(["signing", "digital signature", "content commitment", "key encipherment", "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]);
interface CertificateObject extends K8sObject {
  spec: {
    secretName: string;
    duration?: string;
    renewBefore?: string;
    privateKey?: { algorithm?: string; size?: number; rotationPolicy?: string; encoding?: string };
    usages?: string[];
    dnsNames?: string[];
    issuerRef: { name: string; kind?: string; group?: string };
  };
}

/** A Go duration as cert-manager reads it (h, m, s units), in seconds. */
function goSeconds(d: string): number {
  const parts = [...d.matchAll(/(\d+(?:\.\d+)?)(h|m|s)/g)];
  if (parts.map((p) => p[0]).join("") !== d) return NaN;
  return parts.reduce((sum, [, n, unit]) => sum + Number(n) * { h: 3600, m: 60, s: 1 }[unit]!, 0);
}

/** kubernetes-models has no cert-manager schema either: a Certificate field by field. */
function certificateProblems(cert: CertificateObject): string[] {
  const problems: string[] = [];
  const fail = (message: string) => problems.push(`Certificate ${cert.metadata.name}: ${message}`);
  if (cert.apiVersion !== "cert-manager.io/v1") fail(`apiVersion ${cert.apiVersion}`);
  for (const key of Object.keys(cert.spec)) if (!CERTIFICATE_SPEC.has(key)) fail(`unknown field spec.${key}`);
  const { secretName, issuerRef, duration = "2160h", renewBefore, privateKey, usages = [], dnsNames = [] } = cert.spec;
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(secretName ?? "")) fail(`secretName ${secretName}`);
  if (!issuerRef?.name || !["Issuer", "ClusterIssuer", undefined].includes(issuerRef.kind) || ![undefined, "cert-manager.io"].includes(issuerRef.group)) fail(`issuerRef ${JSON.stringify(issuerRef)}`);
  const [life, before] = [goSeconds(duration), goSeconds(renewBefore ?? "0s")];
  if (!(life >= 3600) || !(before >= 0 && before < life)) fail(`duration ${duration} / renewBefore ${renewBefore}`);
  for (const u of usages) if (!KEY_USAGES.has(u)) fail(`usage ${u}`);
  if (privateKey && (!["RSA", "ECDSA", "Ed25519", undefined].includes(privateKey.algorithm) || !["Always", "Never", undefined].includes(privateKey.rotationPolicy))) fail(`privateKey ${JSON.stringify(privateKey)}`);
  for (const name of dnsNames) if (!/^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(name)) fail(`dnsName ${name}`);
  if (dnsNames.length === 0) fail("no dnsNames");
  return problems;
}

// --- The checks, per rendered overlay ---
describe.each(Object.keys(COMBOS))(`overlay %s (rendered by ${ENGINE})`, (combo) => {
  const objects = renderCombo(combo);

  it("renders only objects valid against their schemas, without unknown fields, each once", () => {
    for (const o of objects) {
      if (o.kind === "ScaledObject") {
        expect(scaledObjectProblems(objects, o as ScaledObject)).toEqual([]);
        continue;
      }
      if (o.kind === "Certificate") {
        expect(certificateProblems(o as CertificateObject)).toEqual([]);
        continue;
      }
      const Model = MODELS[`${o.apiVersion}/${o.kind}`];
      expect(Model, `${o.apiVersion} ${o.kind}`).toBeDefined();
      expect(() => new Model(o as never).validate(), `${o.kind} ${o.metadata.name}`).not.toThrow();
      expect(unknownFields(o, o.kind)).toEqual([]);
    }
    const ids = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(ids).size).toBe(ids.length);
    expect(objects.every((o) => o.kind === "Namespace" || o.metadata.namespace === NAMESPACE)).toBe(true);
    // The vaccine workloads are Deployments: nothing of theirs is per pod any more.
    const vaccine = objects.filter((o) => ["Deployment", "StatefulSet"].includes(o.kind) && container(o as Workload));
    expect(vaccine.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(WORKLOADS.map((n) => `Deployment/${n}`).sort());
  });

  it.each(WORKLOADS)("%s runs an entrypoint that serves what it should, in its role, with an environment loadConfig accepts", (name) => {
    const w = workload(objects, name);
    const c = container(w);
    // A compiled entrypoint (npm run build) whose source exists.
    expect(c.command?.[0]).toBe("node");
    expect(c.command![1]).toMatch(/^dist\/services\/([a-z]+\/)?main\.js$/);
    expect(readFileSync(c.command![1], "utf8")).toContain("runServices(");
    const env = environment(objects, w);
    const known = new Set(VARIABLES.map((v) => v.name));
    expect(Object.keys(env).filter((k) => k.startsWith("VACCINE_") && !known.has(k))).toEqual([]);
    const { config, services } = servedBy(objects, name);
    expect({ role: config.role, services }).toEqual(EXPECTED[name]);
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

  it("the api processes enqueue jobs and only the workers train them, all on one queue", () => {
    const duties = Object.fromEntries(WORKLOADS.map((name) => {
      const { config, services } = servedBy(objects, name);
      return [name, { ...jobsDuty(config, services), queue: config.queueUrl }];
    }));
    const queues = new Set(Object.values(duties).map((d) => d.queue));
    expect(queues.size).toBe(1);
    expect([...queues][0]).toMatch(/^rediss?:\/\//);
    expect(WORKLOADS.filter((n) => duties[n].local)).toEqual([]);
    expect(WORKLOADS.filter((n) => duties[n].enqueues)).toEqual(JOB_SERVICES);
    expect(WORKLOADS.filter((n) => duties[n].trains)).toEqual(["worker"]);
  });

  it.each(WORKLOADS)("%s is probed over grpc.health.v1 with the names its server registers, on its port", (name) => {
    const w = workload(objects, name);
    const c = container(w);
    const { config, services } = servedBy(objects, name);
    const routes = objects.filter((o): o is ServiceObject => o.kind === "Service" && selectsPods((o as ServiceObject).spec.selector, w));
    // With TLS on the port the kubelet (no TLS, no client certificate) probes the plaintext
    // health port, which the process binds on VACCINE_HOST like its port.
    const port = config.healthPort ?? config.port;
    expect(Boolean(config.tlsCert)).toBe(config.healthPort !== undefined);
    if (config.healthPort !== undefined) {
      expect(config.healthPort).not.toBe(config.port);
      expect(c.ports).toContainEqual({ name: "health", containerPort: config.healthPort });
    }
    if (config.role === "worker") {
      // A worker registers no service, only the server's health (""), and nothing calls it.
      for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) expect(probe?.grpc).toEqual({ port, service: "" });
      expect(routes).toEqual([]);
      return;
    }
    const typeName = DESCS[services[0]].typeName;
    // Started and alive are about the process (""): a job service is NOT_SERVING while Redis
    // is away, which must not keep a pod from starting nor restart it. Ready is about traffic.
    expect(c.startupProbe?.grpc).toEqual({ port, service: "" });
    expect(c.readinessProbe?.grpc).toEqual({ port, service: typeName });
    expect(c.livenessProbe?.grpc).toEqual({ port, service: "" });
    expect(routes.map((s) => s.metadata.name)).toEqual([name]);
    expect(routes[0].spec.ports.find((p) => p.name === "grpc")?.targetPort).toBe("grpc");
  });

  it.each(WORKLOADS)("%s exports telemetry to the collector as its own service, with its pod in the resource", (name) => {
    const w = workload(objects, name);
    const env = environment(objects, w);
    expect(env.OTEL_SERVICE_NAME).toBe(`vaccine-${name}`);
    expect(exporterNames(env, "TRACES")).toEqual(["otlp"]);
    const { url, port } = collectorEndpoint(objects, env);
    expect(port?.name).toBe(env.OTEL_EXPORTER_OTLP_PROTOCOL === "grpc" ? "otlp-grpc" : "otlp-http");
    expect(url.protocol).toBe("http:");
    const attributes = Object.fromEntries(env.OTEL_RESOURCE_ATTRIBUTES.split(",").map((kv) => kv.split("=")));
    // service.instance.id keeps the replicas of one service apart in the collector's metrics.
    expect(attributes).toEqual({ "service.instance.id": podName(w), "k8s.pod.name": podName(w), "k8s.namespace.name": NAMESPACE });
  });

  it.each(WORKLOADS)("%s can write where the process writes, and keeps nothing of its own: any pod may go", (name) => {
    const w = workload(objects, name);
    const c = container(w);
    const config = loadConfig(environment(objects, w));
    expect(c.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(w.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001 });
    const written = ["/tmp", config.cacheDir, ...(config.store === "local" ? [config.storeRoot] : [])];
    for (const path of written) expect(underMount(c, path), path).toBeDefined();
    const volumes = new Map((w.spec.template.spec.volumes ?? []).map((v) => [v.name, v]));
    for (const m of c.volumeMounts ?? []) expect(volumes.has(m.name), m.name).toBe(true);
    // Job records live in Redis, checkpoints in the shared store: the only claim is that store's.
    expect(w.spec.volumeClaimTemplates).toBeUndefined();
    expect([...volumes.values()].filter((v) => v.persistentVolumeClaim && v.persistentVolumeClaim.claimName !== "vaccine-store")).toEqual([]);
    expect(c.env?.some((e) => e.name === "VACCINE_JOBS_DIR")).toBe(false);
  });

  it.each(WORKLOADS)("%s gets the time to finish its work and flush telemetry on SIGTERM", (name) => {
    const w = workload(objects, name);
    const c = container(w);
    const env = environment(objects, w);
    const config = loadConfig(env);
    const preStop = c.lifecycle?.preStop?.exec?.command;
    const preStopMs = preStop ? Number(preStop[1]) * 1000 : 0;
    if (config.role === "worker") {
      // No Service endpoints to leave; SIGTERM must leave a step and a state write.
      expect(preStop).toBeUndefined();
      expect(config.shutdownTimeoutMs).toBeGreaterThanOrEqual(STEP_BUDGET_MS + STATE_WRITE_MS);
    } else {
      // Leaving the endpoints races SIGTERM: keep serving a moment.
      expect(preStop?.[0]).toBe("sleep");
      expect(preStopMs).toBeGreaterThan(0);
    }
    const flushMs = Number(env.OTEL_EXPORTER_OTLP_TIMEOUT ?? OTLP_TIMEOUT_MS);
    const needed = preStopMs + config.shutdownTimeoutMs + CLOSE_MS + flushMs;
    expect(w.spec.template.spec.terminationGracePeriodSeconds! * 1000).toBeGreaterThanOrEqual(needed);
  });

  it.each(WORKLOADS)("%s has a disruption budget and one autoscaler: an HPA on CPU for an api, KEDA on the queue for the worker", (name) => {
    const w = workload(objects, name);
    const config = loadConfig(environment(objects, w));
    const targets = (o: K8sObject) => (o.spec as { scaleTargetRef?: { kind?: string; name: string } }).scaleTargetRef?.name === name;
    expect(objects.filter((o) => o.kind === "PodDisruptionBudget" && selectsPods((o.spec as { selector?: { matchLabels?: Record<string, string> } }).selector?.matchLabels, w))).toHaveLength(1);
    const hpas = objects.filter((o) => o.kind === "HorizontalPodAutoscaler" && targets(o));
    const scaled = objects.filter((o): o is ScaledObject => o.kind === "ScaledObject" && targets(o));
    // The autoscaler owns the replica count.
    expect(w.spec.replicas).toBeUndefined();
    if (config.role !== "worker") {
      expect(scaled).toEqual([]);
      expect(hpas).toHaveLength(1);
      expect(hpas[0].spec).toMatchObject({ scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name }, minReplicas: 2 });
      return;
    }
    expect(hpas).toEqual([]);
    expect(scaled).toHaveLength(1);
    const so = scaled[0].spec;
    expect(so.scaleTargetRef).toEqual({ apiVersion: "apps/v1", kind: "Deployment", name: "worker" });
    expect(so.minReplicaCount).toBe(0);
    expect(so.maxReplicaCount).toBeGreaterThanOrEqual(1);
    // KEDA reads the same Redis as the processes (VACCINE_QUEUE_URL): address and database, or
    // on a cluster (VACCINE_QUEUE_CLUSTER) its redis-cluster scaler on a node of it.
    const redis = redisAddress(config.queueUrl);
    const redisTriggers = so.triggers.filter((t) => t.type === (config.queueCluster ? "redis-cluster" : "redis"));
    expect(redisTriggers.length).toBe(so.triggers.length);
    for (const t of redisTriggers) expect(t.metadata).toMatchObject(config.queueCluster ? { addresses: redis.address } : { address: redis.address, databaseIndex: redis.db });
    // BullMQ's wait list (connection.ts) scales up; its active list keeps busy workers.
    const byList = Object.fromEntries(redisTriggers.map((t) => [t.metadata.listName as string, t.name!]));
    expect(Object.keys(byList).sort()).toEqual(queueLists(config.queueCluster).sort());
    // One worker per waiting or running job, a worker training VACCINE_WORKER_CONCURRENCY at once.
    const modifiers = so.advanced?.scalingModifiers;
    expect(modifiers?.formula?.split("+").map((s) => s.trim()).sort()).toEqual(Object.values(byList).sort());
    expect(modifiers).toMatchObject({ metricType: "AverageValue", target: String(config.workerConcurrency) });
    expect(Number(modifiers?.activationTarget ?? 0)).toBe(0);
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

describe("the fallback renderer (tests/deploy/kustomize.ts)", () => {
  it.skipIf(!hasKubectl()).each(Object.keys(COMBOS))("renders %s exactly as kubectl kustomize does", (combo) => {
    const [overlay, components] = COMBOS[combo];
    const real = sorted(render(overlay, components, { engine: "kubectl" }));
    const fallback = sorted(render(overlay, components, { engine: "fallback" }));
    expect(fallback.map(key)).toEqual(real.map(key));
    for (let i = 0; i < real.length; i++) expect(fallback[i], key(real[i])).toStrictEqual(real[i]);
  });
});

describe("accelerators", () => {
  const gpu = (c: Container) => c.resources?.limits?.["nvidia.com/gpu"];

  it("the cpu overlay runs everything on the wasm backend, without GPUs", () => {
    const objects = renderCombo("cpu");
    for (const name of WORKLOADS) {
      const w = workload(objects, name);
      expect(loadConfig(environment(objects, w)).backend).toBe("wasm");
      expect(gpu(container(w))).toBeUndefined();
      expect(container(w).image).toMatch(/:[\w.-]*cpu$/);
    }
  });

  it("the gpu overlay gives each worker a GPU on GPU nodes with the gpu image and backend; the apis stay on CPU", () => {
    const objects = renderCombo("gpu");
    for (const name of WORKLOADS) {
      const w = workload(objects, name);
      const c = container(w);
      const { backend } = loadConfig(environment(objects, w));
      const pod = w.spec.template.spec;
      if (name === "worker") {
        expect(gpu(c)).toBe(1);
        expect(backend).toBe("tensorflow-gpu");
        expect(c.image).toMatch(/:[\w.-]*gpu$/);
        expect(Object.keys(pod.nodeSelector ?? {})).toContain("nvidia.com/gpu.present");
        expect(pod.tolerations).toContainEqual({ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" });
        // One job per GPU: the process trains one at a time.
        expect(loadConfig(environment(objects, w)).workerConcurrency).toBe(1);
      } else {
        expect(gpu(c)).toBeUndefined();
        expect(backend).toBe("wasm");
        expect(c.image).toMatch(/:[\w.-]*cpu$/);
        expect(pod.nodeSelector).toBeUndefined();
        expect(pod.tolerations).toBeUndefined();
      }
    }
  });
});

describe("components", () => {
  it("redis (overlays/dev) is the Redis VACCINE_QUEUE_URL and the ScaledObject name, set up for BullMQ", () => {
    const objects = renderCombo("dev");
    const { config } = servedBy(objects, "worker");
    const { host, port, db } = redisAddress(config.queueUrl);
    // <service>.<namespace>.svc: resolvable from the pods and from KEDA's own namespace.
    const [serviceName, namespace, svc] = host.split(".");
    expect(svc).toBe("svc");
    const service = find<ServiceObject>(objects, "Service", serviceName);
    expect(service.metadata.namespace).toBe(namespace);
    const redis = find<Workload & { spec: { replicas: number } }>(objects, "StatefulSet", "redis");
    expect(redis.spec.replicas).toBe(1);
    expect(selectsPods(service.spec.selector, redis)).toBe(true);
    const servicePort = service.spec.ports.find((p) => p.port === port)!;
    const c = redis.spec.template.spec.containers[0];
    expect(c.ports).toContainEqual({ name: servicePort.targetPort, containerPort: port });
    const args = [...(c.command ?? []), ...(c.args ?? [])];
    const flag = (name: string) => args[args.indexOf(`--${name}`) + 1];
    expect(flag("port")).toBe(String(port));
    // BullMQ's keys must never be evicted; the job records survive a restart on the volume.
    expect(flag("maxmemory-policy")).toBe("noeviction");
    expect(flag("appendonly")).toBe("yes");
    expect(underMount(c, flag("dir"))?.name).toBe(redis.spec.volumeClaimTemplates?.[0].metadata.name);
    expect(db).toBe("0");
    // The other overlays bring no Redis: they need one at VACCINE_QUEUE_URL (deploy/README.md).
    for (const combo of ["cpu", "gpu"]) expect(renderCombo(combo).filter((o) => o.metadata.name === "redis")).toEqual([]);
  });

  it("pvc-store puts every service and the workers on one ReadWriteMany volume as a local store", () => {
    const objects = renderCombo("cpu + pvc-store");
    const pvc = find<K8sObject & { spec: { accessModes: string[] } }>(objects, "PersistentVolumeClaim", "vaccine-store");
    expect(pvc.spec.accessModes).toEqual(["ReadWriteMany"]);
    for (const name of WORKLOADS) {
      const w = workload(objects, name);
      const config = loadConfig(environment(objects, w));
      expect(config.store).toBe("local");
      const mount = underMount(container(w), config.storeRoot)!;
      expect(w.spec.template.spec.volumes?.find((v) => v.name === mount.name)?.persistentVolumeClaim?.claimName).toBe(pvc.metadata.name);
    }
  });

  it("prometheus exposes the metrics port the exporter listens on, in every pod (workers too) and every service's Service", () => {
    const objects = renderCombo("gpu + prometheus");
    for (const name of WORKLOADS) {
      const w = workload(objects, name);
      const env = environment(objects, w);
      expect(exporterNames(env, "METRICS")).toEqual(["prometheus"]);
      const { port, host } = prometheusAddress(env, loadConfig(env).host);
      expect(host).toBe("0.0.0.0"); // reachable from Prometheus, as the services are
      expect(container(w).ports).toContainEqual({ name: "metrics", containerPort: port });
      expect(w.spec.template.metadata.annotations).toMatchObject({ "prometheus.io/scrape": "true", "prometheus.io/port": String(port) });
      // The workers have no Service: Prometheus finds their pods by the annotations.
      if (name === "worker") continue;
      const service = find<ServiceObject>(objects, "Service", name);
      expect(service.spec.ports).toContainEqual({ name: "metrics", port, targetPort: "metrics" });
    }
  });

  it("pvc-store and prometheus leave Redis and the collector alone", () => {
    const objects = renderCombo("dev + pvc-store + prometheus");
    const plain = renderCombo("dev");
    for (const [kind, name] of [["StatefulSet", "redis"], ["Service", "redis"], ["Deployment", "otel-collector"], ["Service", "otel-collector"]]) {
      expect(find(objects, kind, name), `${kind} ${name}`).toEqual(find(plain, kind, name));
    }
  });
});

describe("TLS and authentication (components/tls, components/cert-manager)", () => {
  // The Secrets' keys: kubernetes.io/tls's with the CA cert-manager adds, and the credentials
  // files deploy/README.md tells to put into vaccine-auth.
  const SECRET_KEYS: Record<string, string[]> = { "vaccine-tls": ["tls.crt", "tls.key", "ca.crt"], "vaccine-auth": ["tokens.json", "jwks.json", "mtls.json"] };

  /** The Secret and key a file of the configuration is read from; fails unless it is mounted so that rotation reaches it. */
  function secretFile(w: Workload, file: string): { secret: string; key: string } {
    const mount = underMount(container(w), file);
    expect(mount, file).toBeDefined();
    // A subPath mount never sees the Secret change; items would hide keys added later.
    expect(mount).toMatchObject({ readOnly: true });
    expect(mount!.subPath).toBeUndefined();
    const volume = w.spec.template.spec.volumes!.find((v) => v.name === mount!.name)!;
    expect(volume.secret, file).toBeDefined();
    expect(volume.secret!.items).toBeUndefined();
    return { secret: volume.secret!.secretName, key: posix.relative(mount!.mountPath, file) };
  }

  it.each(["secure", "gpu + tls + cert-manager + prometheus"])("%s: every process serves TLS with bearer tokens, each file it reads a key of a Secret mounted read-only as a folder", (combo) => {
    const objects = renderCombo(combo);
    for (const name of WORKLOADS) {
      const w = workload(objects, name);
      const config = loadConfig(environment(objects, w));
      expect({ auth: config.auth, tls: Boolean(config.tlsCert) }, name).toEqual({ auth: "token", tls: true });
      const files = { cert: config.tlsCert, key: config.tlsKey, tokens: config.authTokensFile };
      const from = Object.fromEntries(Object.entries(files).map(([what, file]) => [what, secretFile(w, file)]));
      for (const { secret, key } of Object.values(from)) expect(SECRET_KEYS[secret], `${secret}/${key}`).toContain(key);
      // Certificate and key from one Secret: cert-manager replaces both at once.
      expect(from.cert.secret).toBe(from.key.secret);
      expect([from.cert.key, from.key.key]).toEqual(["tls.crt", "tls.key"]);
    }
    // The Services' port speaks TLS: a mesh or a load balancer must not send it cleartext HTTP/2.
    for (const name of SERVICE_NAMES) expect(find<ServiceObject>(objects, "Service", name).spec.ports.find((p) => p.name === "grpc")?.appProtocol).toBe("https");
  });

  it("cert-manager's Certificate writes the Secret the pods mount, names every Service as clients dial it, and renews key and certificate", () => {
    const objects = renderCombo("secure + cert-manager");
    const certs = objects.filter((o): o is CertificateObject => o.kind === "Certificate");
    expect(certs).toHaveLength(1);
    const cert = certs[0].spec;
    for (const name of WORKLOADS) {
      const w = workload(objects, name);
      expect(secretFile(w, loadConfig(environment(objects, w)).tlsCert).secret).toBe(cert.secretName);
    }
    for (const name of SERVICE_NAMES) {
      const ns = find<ServiceObject>(objects, "Service", name).metadata.namespace;
      expect(cert.dnsNames).toEqual(expect.arrayContaining([`${name}.${ns}.svc`, `${name}.${ns}.svc.cluster.local`]));
    }
    expect(cert.usages).toContain("server auth");
    expect(cert.privateKey?.rotationPolicy).toBe("Always");
    // Renewal starts early enough for a failure to be noticed and fixed.
    expect(goSeconds(cert.renewBefore!)).toBeGreaterThanOrEqual(goSeconds(cert.duration!) / 4);
    expect(cert.issuerRef).toEqual({ group: "cert-manager.io", kind: "Issuer", name: "vaccine-issuer" });
    expect(renderCombo("secure").filter((o) => o.kind === "Certificate")).toEqual([]);
  });

  it("takes another issuer from an overlay's patch, as deploy/README.md shows", () => {
    const patch = readmeBlock("cluster-issuer.yaml");
    const objects = render("secure", ["cert-manager"], { patches: [patch] });
    const cert = find<CertificateObject>(objects, "Certificate", "vaccine-tls");
    expect(cert.spec.issuerRef).toEqual({ group: "cert-manager.io", kind: "ClusterIssuer", name: "internal-ca" });
    expect(certificateProblems(cert)).toEqual([]);
  });
});

describe("another namespace, as deploy/README.md shows", () => {
  const ns = "ml-safety";
  const replacements = readmeBlock("namespace.yaml");
  const COMBOS_ELSEWHERE: [string, string[]][] = [
    ["dev", ["tls", "cert-manager"]],
    // Without cert-manager the Certificate's target is skipped.
    ["cpu", []],
  ];

  it("moves every name that held the namespace: the Redis URL and Service, KEDA's address, the certificate", () => {
    const objects = render("dev", ["tls", "cert-manager"], { namespace: ns, replacements });
    expect(JSON.stringify(objects)).not.toContain(`.${NAMESPACE}.svc`);
    expect(objects.filter((o) => o.kind === "Namespace").map((o) => o.metadata.name)).toEqual([ns]);
    expect(objects.every((o) => o.kind === "Namespace" || o.metadata.namespace === ns)).toBe(true);
    const { address, host } = redisAddress(servedBy(objects, "worker").config.queueUrl);
    expect(host).toBe(`redis.${ns}.svc`);
    expect(find(objects, "Service", "redis").metadata.namespace).toBe(ns);
    const scaled = find<ScaledObject>(objects, "ScaledObject", "worker");
    expect(scaled.spec.triggers.map((t) => t.metadata.address)).toEqual(scaled.spec.triggers.map(() => address));
    const cert = find<CertificateObject>(objects, "Certificate", "vaccine-tls");
    expect([...(cert.spec.dnsNames ?? [])].sort()).toEqual(SERVICE_NAMES.flatMap((name) => [`${name}.${ns}.svc`, `${name}.${ns}.svc.cluster.local`]).sort());
    expect(certificateProblems(cert)).toEqual([]);
  });

  it.skipIf(!hasKubectl()).each(COMBOS_ELSEWHERE)("the fallback renderer renders %s + %j there as kubectl does", (overlay, components) => {
    const real = sorted(render(overlay, components, { engine: "kubectl", namespace: ns, replacements }));
    expect(sorted(render(overlay, components, { engine: "fallback", namespace: ns, replacements }))).toStrictEqual(real);
  });
});

/** The YAML block of deploy/README.md that starts with the comment "# <name>". */
function readmeBlock(name: string): string {
  const m = new RegExp("```yaml\\n(# " + name.replace(".", "\\.") + "\\n[^]*?)```").exec(readFileSync("deploy/README.md", "utf8"));
  if (!m) throw new Error(`no yaml block "# ${name}" in deploy/README.md`);
  return m[1];
}

describe("the pods' command and environment, run for real", () => {
  it("each workload starts from its manifest on a real Redis, answers its probes SERVING, exports traces, and exits 0 on SIGTERM", async () => {
    const objects = renderCombo("dev");
    const root = mkdtempSync(join(tmpdir(), "vaccine-manifests-"));
    // Stands in for the Redis of the manifests (a Service in the cluster).
    const redis = await startRedis();
    // Stands in for the collector: takes every OTLP/HTTP request.
    const exports: string[] = [];
    const collector = http.createServer((req, res) => {
      exports.push(`${req.method} ${req.url} ${req.headers["content-type"]}`);
      req.resume().on("end", () => res.end());
    });
    await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve));
    try {
      // One at a time: seven processes starting at once on a busy CI machine could miss
      // startProcess's 30 s budget.
      for (const name of WORKLOADS) {
        const w = workload(objects, name);
        const c = container(w);
        const dir = join(root, name);
        // Only where the process listens, writes and sends changes: here, not in a pod.
        const sandbox: Record<string, string> = {
          ...environment(objects, w),
          VACCINE_HOST: "127.0.0.1",
          VACCINE_PORT: "0",
          VACCINE_CACHE_DIR: join(dir, "cache"),
          VACCINE_STORE_ROOT: join(dir, "store"),
          VACCINE_QUEUE_URL: redis.url,
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(collector.address() as AddressInfo).port}`,
        };
        const proc = await startProcess(c.command![1], sandbox);
        try {
          const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proc.port}` }));
          for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) {
            expect((await health.check({ service: probe!.grpc!.service ?? "" })).status, `${name}: ${probe!.grpc!.service}`).toBe(Serving.SERVING);
          }
          // Only the worker takes queued jobs (services/suite/run.ts logs it).
          expect(proc.log().includes('"msg":"training queued jobs"'), name).toBe(name === "worker");
        } finally {
          proc.child.kill("SIGTERM");
        }
        expect((await proc.exited).code, `${name} exit code:\n${proc.log()}`).toBe(0);
      }
      // The health checks' spans, flushed at exit in the manifests' protocol.
      const protocol = environment(objects, workload(objects, "align")).OTEL_EXPORTER_OTLP_PROTOCOL;
      const type = { "http/protobuf": "application/x-protobuf", "http/json": "application/json" }[protocol];
      const traces = exports.filter((e) => e.startsWith("POST /v1/traces "));
      expect(traces.length).toBeGreaterThanOrEqual(WORKLOADS.length);
      expect(traces.every((e) => e === `POST /v1/traces ${type}`)).toBe(true);
    } finally {
      await new Promise<void>((resolve) => collector.close(() => resolve()));
      await redis.stop();
      rmSync(root, { recursive: true, force: true });
    }
  });
  it("a workload of the secure overlay answers its probes in plaintext on the health port, and its port only over TLS with a token", async () => {
    const objects = renderCombo("secure");
    const w = workload(objects, "embed");
    const c = container(w);
    const env = environment(objects, w);
    const root = mkdtempSync(join(tmpdir(), "vaccine-secure-"));
    const pki = new TestPki();
    const redis = await startRedis();
    // The Secrets, as their volumes show them: one file per key.
    const ca = pki.ca("ca");
    const server = pki.leaf("server", ca, { cn: "embed.vaccine.svc", sans: ["DNS:embed.vaccine.svc", "IP:127.0.0.1"], usage: "serverAuth" });
    const token = randomBytes(32).toString("base64url");
    const secrets: Record<string, Record<string, Buffer | string>> = {
      "vaccine-tls": { "tls.crt": server.certPem, "tls.key": server.keyPem, "ca.crt": ca.certPem },
      "vaccine-auth": { "tokens.json": JSON.stringify({ [tokenHash(token)]: { tenant: "team-a", roles: ["reader"] } }) },
    };
    const mounted: Record<string, string> = {};
    for (const m of c.volumeMounts ?? []) {
      const secret = w.spec.template.spec.volumes!.find((v) => v.name === m.name)?.secret?.secretName;
      if (!secret) continue;
      mounted[m.mountPath] = join(root, m.name);
      mkdirSync(mounted[m.mountPath]);
      for (const [key, value] of Object.entries(secrets[secret])) writeFileSync(join(mounted[m.mountPath], key), value);
    }
    const relocated = (value: string) => Object.entries(mounted).reduce((v, [from, to]) => (v.startsWith(`${from}/`) ? to + v.slice(from.length) : v), value);
    const sandbox: Record<string, string> = {
      ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, relocated(v)])),
      VACCINE_HOST: "127.0.0.1",
      VACCINE_PORT: "0",
      VACCINE_HEALTH_PORT: "0",
      VACCINE_CACHE_DIR: join(root, "cache"),
      VACCINE_QUEUE_URL: redis.url,
      OTEL_TRACES_EXPORTER: "none",
      OTEL_METRICS_EXPORTER: "none",
    };
    expect(Object.values(sandbox).filter((v) => v.startsWith("/etc/vaccine/"))).toEqual([]);
    const proc = await startProcess(c.command![1], sandbox);
    try {
      const serving = JSON.parse(proc.log().split("\n").find((l) => l.includes('"msg":"serving"'))!) as { tls: string; auth: string; healthPort: number };
      expect(serving).toMatchObject({ tls: "tls", auth: "token" });
      // The kubelet's probes: plaintext gRPC, no credentials.
      const probe = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${serving.healthPort}` }));
      for (const p of [c.startupProbe, c.readinessProbe, c.livenessProbe]) expect((await probe.check({ service: p!.grpc!.service ?? "" })).status).toBe(Serving.SERVING);
      // The port itself: nothing in plaintext; over TLS, the token decides.
      const plain = createClient(EmbedService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proc.port}` }));
      await expect(plain.embed({})).rejects.toThrow();
      const tls = createClient(EmbedService, createGrpcTransport({ baseUrl: `https://127.0.0.1:${proc.port}`, nodeOptions: { ca: ca.certPem } }));
      expect((await rpcFailure(() => tls.embed({}))).code).toBe(Code.Unauthenticated);
      // Authenticated, the empty request reaches the handler's validation.
      expect((await rpcFailure(() => tls.embed({}, { headers: { authorization: `Bearer ${token}` } }))).code).toBe(Code.InvalidArgument);
    } finally {
      proc.child.kill("SIGTERM");
      await proc.exited;
      await redis.stop();
      pki.close();
      rmSync(root, { recursive: true, force: true });
    }
    expect(proc.log()).not.toContain(token);
  });
});
