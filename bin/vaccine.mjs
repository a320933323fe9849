#!/usr/bin/env node
// The `vaccine` command: registers the TypeScript loader, then runs the CLI from source.
import { register } from "tsx/esm/api";

register();
await import("../services/cli/main.ts");
