// What a Python grpcio client of the suite needs, looked up rather than assumed at fixed
// paths: a python3 that can import grpc and google.protobuf, protoc, grpc_python_plugin and
// protoc's well-known types. A missing tool is reported with the Debian package to install,
// so the tests fail saying so (a skip would hide that the interop is unchecked).
import { execFile, execFileSync } from "node:child_process";
import { accessSync, constants, existsSync, realpathSync, statSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";
import { promisify } from "node:util";

export const run = promisify(execFile);
/** What the tests need, as Debian packages (libprotobuf-dev is only recommended by protoc's). */
const DEBIAN_PACKAGES = ["python3-grpcio", "python3-protobuf", "protobuf-compiler", "protobuf-compiler-grpc"];

/** Executable files called `name` in the PATH directories, then in `extra`, each real file once. */
function candidates(name: string, extra: string[] = []): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const dir of [...(process.env.PATH ?? "").split(delimiter), ...extra]) {
    if (!dir) continue;
    const file = join(dir, name);
    try {
      if (!statSync(file).isFile()) continue;
      accessSync(file, constants.X_OK);
    } catch {
      continue;
    }
    // /bin/python3 and /usr/bin/python3 are often one file; pyenv shims are distinct scripts.
    const real = realpathSync(file);
    if (seen.has(real)) continue;
    seen.add(real);
    out.push(file);
  }
  return out;
}

export interface Tools {
  python?: string;
  protoc?: string;
  plugin?: string;
  /** Folder holding google/protobuf/*.proto (the well-known types the contracts import). */
  wellKnown?: string;
  problems: string[];
  /** Debian packages that would supply what is missing. */
  packages: string[];
  /** Empty when everything was found; otherwise what is missing and what to install. */
  missing: string;
}

/**
 * The first python3 that can import grpc and google.protobuf: the first python3 on PATH
 * may be a pyenv or venv interpreter that cannot see Debian's modules, so every one on
 * PATH is tried, and /usr/bin last.
 */
export function findTools(): Tools {
  const tools: Tools = { problems: [], packages: [], missing: "" };
  const lack = (problem: string, ...packages: string[]) => {
    tools.problems.push(`${problem} (Debian: ${packages.join(" ")})`);
    tools.packages.push(...packages);
  };
  const rejected: string[] = [];
  for (const python of candidates("python3", ["/usr/bin"])) {
    try {
      execFileSync(python, ["-c", "import grpc, google.protobuf"], { stdio: "pipe", timeout: 30_000 });
      tools.python = python;
      break;
    } catch (err) {
      const stderr = String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim().split("\n").at(-1);
      rejected.push(`${python} (${stderr})`);
    }
  }
  if (!tools.python) {
    const tried = rejected.length ? `tried ${rejected.join("; ")}` : "no python3 on PATH or in /usr/bin";
    lack(`no python3 can import grpc and google.protobuf; ${tried}`, "python3-grpcio", "python3-protobuf");
  }
  tools.protoc = candidates("protoc")[0];
  if (!tools.protoc) lack("protoc is not on PATH", "protobuf-compiler");
  tools.plugin = candidates("grpc_python_plugin")[0];
  if (!tools.plugin) lack("grpc_python_plugin is not on PATH", "protobuf-compiler-grpc");
  const includes = [...(tools.protoc ? [join(dirname(dirname(realpathSync(tools.protoc))), "include")] : []), "/usr/include", "/usr/local/include"];
  tools.wellKnown = includes.find((dir) => existsSync(join(dir, "google/protobuf/timestamp.proto")));
  if (tools.protoc && !tools.wellKnown) {
    lack(`protoc's well-known types (google/protobuf/timestamp.proto) are in none of ${includes.join(", ")}`, "libprotobuf-dev");
  }
  tools.missing = tools.problems.length
    ? `The Python interop test cannot run:\n- ${tools.problems.join("\n- ")}\n` +
      `Install the missing packages: apt-get install ${[...new Set(tools.packages)].join(" ")}\n` +
      `(everything this test uses: ${DEBIAN_PACKAGES.join(" ")})`
    : "";
  return tools;
}

/** Python message and service stubs for `protos` (paths under proto/ or vendor/), written to `out`. */
export async function generateStubs(tools: Tools, out: string, protos: string[]): Promise<void> {
  await run(tools.protoc!, [
    "-I", "proto", "-I", "vendor", "-I", tools.wellKnown!,
    `--python_out=${out}`, `--grpc_python_out=${out}`,
    `--plugin=protoc-gen-grpc_python=${tools.plugin}`,
    ...protos,
  ]);
}

/** The environment the Python clients run in: no .pyc files in the tree, no proxy for 127.0.0.1. */
export const PYTHON_ENV = { ...process.env, PYTHONDONTWRITEBYTECODE: "1", no_proxy: "*" };
