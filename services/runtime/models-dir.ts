import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The shipped checkpoints' folder, models/ at the package root. Found by walking up from
 * this file, which sits at services/runtime/ in the sources and at dist/services/runtime/ in
 * the compiled build.
 */
export const MODELS_DIR = findModels(dirname(fileURLToPath(import.meta.url)));

function findModels(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "models", "base", "config.json"))) return join(dir, "models");
    if (dirname(dir) === dir) throw new Error(`no models/ folder with the shipped checkpoints above ${from}`);
  }
}
