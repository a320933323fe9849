import { defineConfig } from "vitest/config";

// .ci/run sets VACCINE_TEST_REPORT to collect a JSON report for its closing line.
const report = process.env.VACCINE_TEST_REPORT;

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    // The compiled build (dist/) that the bin and the deployed entrypoints run.
    globalSetup: ["tests/setup/build.ts"],
    // tfjs training tests are CPU-bound; two cores, so two workers at most.
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: report ? ["default", "json"] : ["default"],
    outputFile: report ? { json: report } : undefined,
  },
});
