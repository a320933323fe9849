#!/usr/bin/env node
// The `vaccine` command: the compiled CLI (npm run build writes dist/; npm ci runs it).
import { existsSync } from "node:fs";

const main = new URL("../dist/services/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  process.stderr.write("vaccine: the compiled CLI is missing (dist/): run `npm run build` in the package folder\n");
  process.exit(2);
}
await import(main.href);
