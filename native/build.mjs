// Builds the optional OpenBLAS addon (native/blas/) with npm's own node-gyp, against the
// installed Node headers (no download). Never fails the install: without a compiler,
// Node headers or libopenblas-dev it says why and exits 0, and the runtime keeps the wasm kernels.
import { spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const dir = join(dirname(fileURLToPath(import.meta.url)), "blas");
const skip = (why) => {
  console.log(`native kernels not built: ${why}; the wasm kernels will be used`);
  process.exit(0);
};

if (process.env.VACCINE_NATIVE_KERNELS === "off") skip("VACCINE_NATIVE_KERNELS=off");
if (process.platform !== "linux") skip(`platform ${process.platform} (the build is for Linux with Debian's OpenBLAS)`);

const gyp = [
  process.env.npm_config_node_gyp,
  join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
].find((p) => p && existsSync(p));
if (!gyp) skip("node-gyp not found beside npm");

// Node's headers as installed with it (a distribution's /usr, or a tarball's prefix).
const nodedir = [dirname(dirname(process.execPath)), "/usr", "/usr/local"].find((d) => existsSync(join(d, "include", "node", "node_api.h")));
if (!nodedir) skip("no Node headers (include/node/node_api.h) next to node, in /usr or /usr/local");

for (const tool of ["c++", "make"]) {
  if (spawnSync(tool, ["--version"]).error) skip(`no ${tool} (apt-get install g++ make)`);
}
const probe = spawnSync("cc", ["-x", "c", "-", "-lopenblas", "-o", "/dev/null"], {
  input: "#include <cblas.h>\nint main(void) { return cblas_sdot(0, 0, 1, 0, 1) != 0; }\n",
  encoding: "utf8",
});
if (probe.error) skip(`no C compiler (cc: ${probe.error.message})`);
if (probe.status !== 0) skip(`OpenBLAS headers or library missing (apt-get install libopenblas-dev): ${probe.stderr.trim().split("\n")[0]}`);

const build = spawnSync(process.execPath, [gyp, "rebuild", `--nodedir=${nodedir}`], { cwd: dir, encoding: "utf8" });
if (build.status !== 0) {
  rmSync(join(dir, "build"), { recursive: true, force: true });
  skip(`node-gyp failed:\n${(build.stderr || build.stdout || String(build.error)).trim().split("\n").slice(-8).join("\n")}`);
}
console.log(`native kernels built: ${join(dir, "build", "Release", "vaccine_blas.node")}`);
