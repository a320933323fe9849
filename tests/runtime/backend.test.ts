import * as tf from "@tensorflow/tfjs";
import { describe, expect, it } from "vitest";
import { selectBackend } from "../../services/runtime/backend.ts";

describe("selectBackend", () => {
  it("auto picks wasm here and says why the native backends were skipped", async () => {
    const lines: string[] = [];
    const sel = await selectBackend("auto", (l) => lines.push(l));
    expect(sel.backend).toBe("wasm");
    expect(tf.getBackend()).toBe("wasm");
    expect(sel.skipped.map((s) => s.name)).toEqual(["tensorflow-gpu", "tensorflow"]);
    expect(sel.skipped[0].reason).toMatch(/@tensorflow\/tfjs-node-gpu is not loadable/);
    expect(sel.skipped[1].reason).toMatch(/@tensorflow\/tfjs-node is not loadable/);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^tfjs backend: wasm \(auto\); skipped tensorflow-gpu: .*; tensorflow: /);
    // Idempotent: the same answer, no reload, no second log line.
    expect(await selectBackend("auto", (l) => lines.push(l))).toBe(sel);
    expect(lines).toHaveLength(1);
  });

  it("switches to an explicit cpu and back", async () => {
    expect((await selectBackend("cpu", () => {})).backend).toBe("cpu");
    expect(tf.getBackend()).toBe("cpu");
    expect((await selectBackend("wasm", () => {})).skipped).toEqual([]);
    expect(tf.getBackend()).toBe("wasm");
  });

  it("an explicit backend that cannot load fails naming it and the cause", async () => {
    await expect(selectBackend("tensorflow", () => {})).rejects.toThrow(
      /backend "tensorflow" cannot be used: @tensorflow\/tfjs-node is not loadable \(Cannot find package/,
    );
    await expect(selectBackend("tensorflow-gpu", () => {})).rejects.toThrow(/backend "tensorflow-gpu" cannot be used/);
  });

  it("rejects unknown values, listing the valid ones", async () => {
    await expect(selectBackend("gpu", () => {})).rejects.toThrow(
      'unknown backend "gpu": valid values are auto, tensorflow-gpu, tensorflow, wasm, cpu',
    );
  });

  it("reads VACCINE_BACKEND by default", async () => {
    process.env.VACCINE_BACKEND = "cpu";
    try {
      expect((await selectBackend(undefined, () => {})).backend).toBe("cpu");
    } finally {
      delete process.env.VACCINE_BACKEND;
    }
  });
});
