// A client in another language: Python grpcio from Debian, stubs from Debian's protoc.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSuite, type TestSuite } from "../helpers/server.ts";

const run = promisify(execFile);
const PYTHON = "/usr/bin/python3"; // Debian's: the first python3 on PATH cannot see Debian's grpcio.
const stubs = mkdtempSync(join(tmpdir(), "vaccine-py-"));
let suite: TestSuite;
let server: TestSuite["server"];

beforeAll(async () => {
  await run("/usr/bin/protoc", [
    "-I", "proto", "-I", "vendor", "-I", "/usr/include",
    `--python_out=${stubs}`, `--grpc_python_out=${stubs}`,
    "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
    "vaccine/v1/common.proto", "vaccine/v1/training.proto", "vaccine/v1/jobs.proto", "vaccine/v1/align.proto",
    "grpc/health/v1/health.proto", "google/rpc/status.proto", "google/rpc/error_details.proto",
  ]);
  suite = await startSuite();
  server = suite.server;
});
afterAll(async () => {
  await suite.close();
  rmSync(stubs, { recursive: true, force: true });
});

describe("Python grpcio interop", () => {
  it("checks health and decodes a validation error's ErrorInfo and BadRequest", async () => {
    const { stdout } = await run(PYTHON, ["tests/interop/python_client.py", stubs, `127.0.0.1:${server.port}`], {
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1", no_proxy: "*" },
    });
    expect(JSON.parse(stdout)).toEqual({
      health: "SERVING",
      code: "INVALID_ARGUMENT",
      reason: "FIELD_INVALID",
      fields: ["spec.vaccine.rho"],
    });
  });
});
