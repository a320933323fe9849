import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, VARIABLES } from "../../services/suite/config.ts";

describe("configuration", () => {
  it("has documented defaults", () => {
    expect(loadConfig({})).toEqual({
      host: "127.0.0.1",
      port: 50051,
      services: ["align", "finetune", "embed", "score", "datasets", "checkpoints"],
      backend: "auto",
      store: "local",
      storeRoot: ".data/store",
      s3Bucket: "",
      s3Prefix: "vaccine",
      s3Endpoint: "",
      s3Region: "us-east-1",
      cacheDir: ".data/cache",
      jobsDir: ".data/jobs",
      maxRunningJobs: 1,
      modelCacheMb: 2048,
      maxDatasetMb: 1024,
      maxCheckpointMb: 65536,
      maxUploadFileMb: 32768,
      shutdownTimeoutMs: 10000,
      logLevel: "info",
    });
  });

  it("parses values and rejects bad ones all at once, naming each variable", () => {
    expect(loadConfig({ VACCINE_SERVICES: "embed, score,embed", VACCINE_PORT: "0" })).toMatchObject({
      services: ["embed", "score"],
      port: 0,
    });
    let err: unknown;
    try {
      loadConfig({ VACCINE_PORT: "80a", VACCINE_BACKEND: "tpu", VACCINE_LOG_LEVEL: "loud" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toContain('VACCINE_PORT="80a"');
    expect(msg).toContain('VACCINE_BACKEND="tpu" is invalid: expected one of auto, tensorflow-gpu, tensorflow, wasm, cpu');
    expect(msg).toContain('VACCINE_LOG_LEVEL="loud"');
  });

  it("requires a bucket for the s3 store", () => {
    expect(() => loadConfig({ VACCINE_STORE: "s3" })).toThrow(/VACCINE_S3_BUCKET is required/);
    expect(loadConfig({ VACCINE_STORE: "s3", VACCINE_S3_BUCKET: "b" }).s3Bucket).toBe("b");
  });

  it("matches the README's configuration table", () => {
    const readme = readFileSync("README.md", "utf8");
    for (const v of VARIABLES) {
      const shown = v.default === "" ? "(empty)" : `\`${v.default}\``;
      expect(readme).toContain(`| \`${v.name}\` | ${shown} | ${v.description} |`);
    }
  });
});
