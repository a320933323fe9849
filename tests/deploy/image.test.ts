// The container image (deploy/Dockerfile) cannot be built here (no Docker engine): what can
// drift from the code is checked instead, stage by stage.
import { existsSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import pkg from "../../package.json" with { type: "json" };
import { loadConfig, VARIABLES } from "../../services/suite/config.ts";
import { render } from "./render.ts";

interface Stage {
  from: string;
  env: Record<string, string>;
  args: Record<string, string>;
  copies: string[];
  /** COPY --from=<stage> sources and destinations. */
  copiesFrom: { stage: string; source: string; dest: string }[];
  runs: string[];
  user?: string;
  cmd?: string[];
}

/** Stages by name, with their base after ARG substitution, ENV, ARG, COPY sources, RUN, USER and CMD. */
function parseDockerfile(text: string): { stages: Record<string, Stage>; globalArgs: Record<string, string> } {
  const globalArgs: Record<string, string> = {};
  const stages: Record<string, Stage> = {};
  let stage: Stage | undefined;
  const lines = text.replace(/\\\n/g, " ").split("\n").filter((l) => l.trim() && !l.trimStart().startsWith("#"));
  for (const line of lines) {
    const [, instruction, rest] = /^\s*(\w+)\s+(.*)$/.exec(line)!;
    const args: Record<string, string> = stage?.args ?? globalArgs;
    const sub = (s: string) => s.replace(/\$\{(\w+)\}/g, (_, name: string) => args[name] ?? globalArgs[name] ?? "");
    if (instruction === "FROM") {
      const [, image, name] = /^(\S+)\s+AS\s+(\S+)$/i.exec(rest.trim())!;
      stage = { from: sub(image), env: {}, args: {}, copies: [], copiesFrom: [], runs: [] };
      stages[name] = stage;
    } else if (instruction === "ARG") {
      const [name, value = ""] = rest.trim().split("=");
      args[name] = value;
    } else if (instruction === "ENV") {
      for (const [, k, v] of rest.matchAll(/(\w+)=(\S+)/g)) stage!.env[k] = v;
    } else if (instruction === "COPY" && !rest.includes("--from=")) {
      stage!.copies.push(...rest.trim().split(/\s+/).slice(0, -1));
    } else if (instruction === "COPY") {
      const [, from, source, dest] = /--from=(\S+)\s+(\S+)\s+(\S+)$/.exec(rest.trim())!;
      stage!.copiesFrom.push({ stage: from, source, dest });
    } else if (instruction === "RUN") {
      stage!.runs.push(rest);
    } else if (instruction === "USER") {
      stage!.user = rest.trim();
    } else if (instruction === "CMD") {
      stage!.cmd = JSON.parse(rest) as string[];
    }
  }
  return { stages, globalArgs };
}

const { stages, globalArgs } = parseDockerfile(readFileSync("deploy/Dockerfile", "utf8"));

/** The image a stage finally builds on, following FROM <stage>. */
function baseImage(name: string): string {
  const from = stages[name].from;
  return stages[from] ? baseImage(from) : from;
}

describe("deploy/Dockerfile", () => {
  it("builds the cpu target on Node 20 slim and the gpu target on a CUDA 11 + cuDNN 8 runtime, for tfjs-node-gpu 4.22", () => {
    expect(baseImage("cpu")).toMatch(/^node:20[\w.-]*-slim$/);
    expect(baseImage("gpu")).toMatch(/^nvidia\/cuda:11\.\d+\.\d+-cudnn8-runtime-ubuntu\d+\.\d+$/);
    // libtensorflow 2.9 (CUDA 11, cuDNN 8) comes with tfjs-node-gpu 4.22: another version needs another base.
    expect(pkg.optionalDependencies["@tensorflow/tfjs-node-gpu"]).toBe("4.22.0");
    expect(globalArgs.CUDA_IMAGE).toBe(baseImage("gpu"));
  });

  it.each([
    ["cpu", "wasm"],
    ["gpu", "tensorflow-gpu"],
  ])("the %s target's environment is a valid configuration listening on every address, backend %s", (name, backend) => {
    const { env } = stages[name];
    const known = new Set(VARIABLES.map((v) => v.name));
    expect(Object.keys(env).filter((k) => k.startsWith("VACCINE_") && !known.has(k))).toEqual([]);
    expect(loadConfig(env)).toMatchObject({ host: "0.0.0.0", backend });
  });

  it.each(["cpu", "gpu"])("the %s target runs as the non-root user the manifests expect, and starts an entrypoint that exists", (name) => {
    const { user, cmd } = stages[name];
    const [uid] = user!.split(":");
    expect(Number(uid)).toBeGreaterThan(0);
    // The pods that run this image (container "vaccine"), not the collector's or Redis'.
    const runAsUsers = render("dev").flatMap((o) => {
      const pod = (o.spec as { template?: { spec?: { securityContext?: { runAsUser?: number }; containers?: { name: string }[] } } } | undefined)?.template?.spec;
      return pod?.containers?.some((c) => c.name === "vaccine") ? [pod.securityContext?.runAsUser] : [];
    });
    expect(runAsUsers.length).toBeGreaterThan(0);
    expect(new Set(runAsUsers)).toEqual(new Set([Number(uid)]));
    // Compiled JavaScript from the build stage, for an entrypoint whose source exists.
    expect(cmd).toEqual(["node", "dist/services/main.js"]);
    expect(existsSync("services/main.ts")).toBe(true);
  });

  it("compiles in a build stage, runs no transpiler, and copies only what .dockerignore lets into the context", () => {
    // tsx is for a checkout only: the image installs no devDependencies and needs none.
    expect((pkg.dependencies as Record<string, string>).tsx).toBeUndefined();
    expect(readFileSync("deploy/Dockerfile", "utf8")).toContain("RUN npx tsc -p tsconfig.build.json");
    expect(JSON.parse(readFileSync("tsconfig.build.json", "utf8")).compilerOptions.outDir).toBe("dist");
    const allowed = readFileSync(".dockerignore", "utf8")
      .split("\n")
      .filter((l) => l.startsWith("!"))
      .map((l) => l.slice(1).replace(/\/$/, ""));
    const sources = Object.values(stages).flatMap((s) => s.copies);
    expect(sources.length).toBeGreaterThan(0);
    for (const source of sources) {
      expect(existsSync(source), source).toBe(true);
      expect(allowed, source).toContain(source.replace(/\/$/, ""));
    }
  });

  it("the cpu target runs the native kernels: the addon built against OpenBLAS, copied where the runtime looks, the library installed", () => {
    // The file the runtime loads: native/<addon>/build/Release/<target>.node beside package.json.
    const gyp = JSON.parse(readFileSync("native/blas/binding.gyp", "utf8")) as { targets: { target_name: string }[] };
    const addon = `native/blas/build/Release/${gyp.targets[0].target_name}.node`;
    expect(readFileSync("services/runtime/native/blas-addon.ts", "utf8")).toContain(`join("native", "blas", "build", "Release", "${gyp.targets[0].target_name}.node")`);
    const copy = stages.cpu.copiesFrom.find((c) => c.dest === addon);
    expect(copy, "the cpu stage copies the addon").toBeDefined();
    expect(copy!.source).toBe(`/app/${addon}`);
    expect(stages.cpu.copies).toContain("package.json");

    // The stage it comes from installs a compiler, make, python3 (node-gyp) and OpenBLAS's
    // headers, builds with the package's script, and fails when the addon did not build
    // (build.mjs itself exits 0 then, so that a checkout still installs).
    const native = stages[copy!.stage];
    const installs = (s: Stage) => s.runs.flatMap((r) => /apt-get install ([^&]*)/.exec(r)?.[1].split(/\s+/) ?? []);
    for (const pkgName of ["gcc", "g++", "make", "python3", "libopenblas-dev"]) expect(installs(native), pkgName).toContain(pkgName);
    expect(pkg.scripts["build:native"]).toBe("node native/build.mjs");
    expect(native.copies).toEqual(expect.arrayContaining(["package.json", "native/"]));
    expect(native.runs.join("\n")).toMatch(new RegExp(`npm run build:native\\s+&& test -f ${addon.replace(/\./g, "\\.")}`));

    // The shared library it links, in the pthread build libopenblas-dev defaults to.
    expect(installs(stages.cpu)).toContain("libopenblas0-pthread");
  });
});
