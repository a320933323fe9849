/**
 * The files that grant a tenant and roles to a credential (tokens by their SHA-256,
 * certificate identities): a JSON or YAML mapping from a key to {tenant, roles, principal}.
 */
import { extname } from "node:path";

export interface Grant {
  tenant: string;
  roles: string[];
  principal?: string;
}

/** Tenants end up in logs, metrics and (later) storage paths: a conservative alphabet. */
export const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export class GrantsFileError extends Error {
  override name = "GrantsFileError";
}

type Parse = (text: string) => unknown;

/**
 * The parser for a grants file by its extension. YAML needs the `yaml` package, loaded
 * only for .yaml/.yml files so that JSON files need nothing beyond Node.
 */
export async function grantsParser(path: string): Promise<Parse> {
  const ext = extname(path).toLowerCase();
  if (ext !== ".yaml" && ext !== ".yml") return JSON.parse as Parse;
  try {
    const yaml = await import("yaml");
    return (text) => yaml.parse(text, { maxAliasCount: 100, uniqueKeys: true });
  } catch {
    throw new GrantsFileError(`${path}: reading YAML needs the "yaml" package, which is not installed; write the file as JSON`);
  }
}

/**
 * Checks a parsed grants file. `checkKey` returns a problem for a bad key (or undefined);
 * every problem in the file is reported at once, without echoing values (a misplaced
 * secret must not reach the logs).
 */
export function parseGrants(data: unknown, file: string, checkKey: (key: string) => string | undefined): Map<string, Grant> {
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new GrantsFileError(`${file}: expected a mapping from key to {tenant, roles, principal}`);
  }
  const problems: string[] = [];
  const grants = new Map<string, Grant>();
  let n = 0;
  for (const [key, value] of Object.entries(data as Record<string, unknown>)) {
    n++;
    const where = `entry ${n}`;
    const keyProblem = checkKey(key);
    if (keyProblem) {
      problems.push(`${where}: ${keyProblem}`);
      continue;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      problems.push(`${where}: expected {tenant, roles, principal}`);
      continue;
    }
    const v = value as Record<string, unknown>;
    const unknown = Object.keys(v).filter((k) => !["tenant", "roles", "principal"].includes(k));
    if (unknown.length) problems.push(`${where}: unknown field(s) ${unknown.join(", ")}`);
    if (typeof v.tenant !== "string" || !TENANT_PATTERN.test(v.tenant)) problems.push(`${where}: tenant must match ${TENANT_PATTERN}`);
    if (!Array.isArray(v.roles) || v.roles.some((r) => typeof r !== "string" || r === "")) problems.push(`${where}: roles must be a list of role names`);
    if (v.principal !== undefined && (typeof v.principal !== "string" || v.principal === "" || v.principal.length > 256)) {
      problems.push(`${where}: principal must be a non-empty string of at most 256 characters`);
    }
    grants.set(key, { tenant: v.tenant as string, roles: v.roles as string[], principal: v.principal as string | undefined });
  }
  if (problems.length) throw new GrantsFileError(`${file}:\n  ${problems.join("\n  ")}`);
  return grants;
}
