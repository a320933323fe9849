/**
 * Process configuration from environment variables. Every variable is declared once here,
 * with its default and its check, so a bad value fails at start with a message that names
 * the variable, and the README's configuration table can be checked against this list.
 */
import { LOG_LEVELS, type LogLevel } from "../platform/log.ts";

export const SERVICE_NAMES = ["align", "finetune", "embed", "score", "datasets", "checkpoints"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export const BACKENDS = ["auto", "tensorflow-gpu", "tensorflow", "wasm", "cpu"] as const;

export interface Config {
  host: string;
  port: number;
  services: ServiceName[];
  backend: (typeof BACKENDS)[number];
  store: "local" | "s3";
  storeRoot: string;
  s3Bucket: string;
  s3Prefix: string;
  s3Endpoint: string;
  s3Region: string;
  cacheDir: string;
  jobsDir: string;
  maxRunningJobs: number;
  modelCacheMb: number;
  maxDatasetMb: number;
  maxCheckpointMb: number;
  maxUploadFileMb: number;
  shutdownTimeoutMs: number;
  logLevel: LogLevel;
}

interface Variable<K extends keyof Config> {
  name: string;
  key: K;
  default: string;
  description: string;
  parse: (raw: string) => Config[K];
}

class BadValue extends Error {}

function integer(min: number, max: number) {
  return (raw: string): number => {
    const n = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || n < min || n > max) throw new BadValue(`an integer from ${min} to ${max}`);
    return n;
  };
}

function choice<T extends string>(allowed: readonly T[]) {
  return (raw: string): T => {
    if (!(allowed as readonly string[]).includes(raw)) throw new BadValue(`one of ${allowed.join(", ")}`);
    return raw as T;
  };
}

function serviceList(raw: string): ServiceName[] {
  const names = raw.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = names.filter((n) => !(SERVICE_NAMES as readonly string[]).includes(n));
  if (names.length === 0 || bad.length > 0) throw new BadValue(`a comma-separated list of ${SERVICE_NAMES.join(", ")}`);
  return [...new Set(names)] as ServiceName[];
}

function nonEmpty(raw: string): string {
  if (raw.trim() === "") throw new BadValue("a non-empty string");
  return raw;
}

// The type parameter ties each parser to its field.
const v = <K extends keyof Config>(x: Variable<K>) => x;

export const VARIABLES = [
  v({ name: "VACCINE_HOST", key: "host", default: "127.0.0.1", description: "Address to listen on (0.0.0.0 in a container).", parse: nonEmpty }),
  v({ name: "VACCINE_PORT", key: "port", default: "50051", description: "Port for gRPC, gRPC-Web and Connect (0 picks a free port).", parse: integer(0, 65535) }),
  v({ name: "VACCINE_SERVICES", key: "services", default: SERVICE_NAMES.join(","), description: "Services this process serves.", parse: serviceList }),
  v({ name: "VACCINE_BACKEND", key: "backend", default: "auto", description: "tfjs backend: auto, tensorflow-gpu, tensorflow, wasm or cpu.", parse: choice(BACKENDS) }),
  v({ name: "VACCINE_STORE", key: "store", default: "local", description: "Checkpoint store: local (a folder) or s3 (S3-compatible object storage).", parse: choice(["local", "s3"] as const) }),
  v({ name: "VACCINE_STORE_ROOT", key: "storeRoot", default: ".data/store", description: "Root folder of the local checkpoint store.", parse: nonEmpty }),
  v({ name: "VACCINE_S3_BUCKET", key: "s3Bucket", default: "", description: "Bucket of the s3 store (required with VACCINE_STORE=s3); credentials from the AWS_* variables.", parse: (raw) => raw }),
  v({ name: "VACCINE_S3_PREFIX", key: "s3Prefix", default: "vaccine", description: "Key prefix of the s3 store.", parse: (raw) => raw }),
  v({ name: "VACCINE_S3_ENDPOINT", key: "s3Endpoint", default: "", description: "Endpoint of an S3-compatible server (empty: AWS).", parse: (raw) => raw }),
  v({ name: "VACCINE_S3_REGION", key: "s3Region", default: "us-east-1", description: "Region of the s3 store.", parse: nonEmpty }),
  v({ name: "VACCINE_CACHE_DIR", key: "cacheDir", default: ".data/cache", description: "Local cache of checkpoints read from the s3 store.", parse: nonEmpty }),
  v({ name: "VACCINE_JOBS_DIR", key: "jobsDir", default: ".data/jobs", description: "Durable job records (a persistent volume in a cluster).", parse: nonEmpty }),
  v({ name: "VACCINE_MODEL_CACHE_MB", key: "modelCacheMb", default: "2048", description: "Memory for checkpoints kept loaded by Embed and Score.", parse: integer(0, 1_048_576) }),
  v({ name: "VACCINE_MAX_DATASET_MB", key: "maxDatasetMb", default: "1024", description: "Largest dataset an upload may send, in MiB.", parse: integer(1, 1_048_576) }),
  v({ name: "VACCINE_MAX_CHECKPOINT_MB", key: "maxCheckpointMb", default: "65536", description: "Largest checkpoint folder an import may send, in MiB (all files).", parse: integer(1, 16_777_216) }),
  v({ name: "VACCINE_MAX_UPLOAD_FILE_MB", key: "maxUploadFileMb", default: "32768", description: "Largest single file of a checkpoint import, in MiB.", parse: integer(1, 16_777_216) }),
  v({ name: "VACCINE_MAX_RUNNING_JOBS", key: "maxRunningJobs", default: "1", description: "Training jobs run at once per process (one per accelerator).", parse: integer(1, 64) }),
  v({ name: "VACCINE_SHUTDOWN_TIMEOUT_MS", key: "shutdownTimeoutMs", default: "10000", description: "Longest wait for in-flight work on SIGTERM before closing anyway.", parse: integer(0, 3_600_000) }),
  v({ name: "VACCINE_LOG_LEVEL", key: "logLevel", default: "info", description: "debug, info, warn or error.", parse: choice(LOG_LEVELS) }),
];

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Reads the configuration; throws one ConfigError listing every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const config: Partial<Record<keyof Config, unknown>> = {};
  const problems: string[] = [];
  for (const variable of VARIABLES) {
    const raw = env[variable.name] ?? variable.default;
    try {
      config[variable.key] = variable.parse(raw);
    } catch (err) {
      if (!(err instanceof BadValue)) throw err;
      problems.push(`${variable.name}="${raw}" is invalid: expected ${err.message}`);
    }
  }
  if (config.store === "s3" && !config.s3Bucket) problems.push("VACCINE_S3_BUCKET is required when VACCINE_STORE=s3");
  if (problems.length > 0) throw new ConfigError(`Bad configuration:\n  ${problems.join("\n  ")}`);
  return config as Config;
}
