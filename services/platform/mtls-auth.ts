/**
 * Tenants from client certificates: the TLS layer verifies the chain against the client CA,
 * and a mapping file names which certificate identities ("URI:spiffe://...", "DNS:...",
 * "email:...", "CN=...") act for which tenant with which roles. Alternative names are
 * searched before the subject CN. The mapping reloads when it changes.
 */
import { readFileSync } from "node:fs";
import { AuthReason, unauthenticated, type Authenticator } from "./authenticate.ts";
import { watchFiles } from "./file-watch.ts";
import { grantsParser, parseGrants, type Grant } from "./grants-file.ts";
import type { Logger } from "./log.ts";

const checkKey = (key: string) =>
  /^(CN=|DNS:|URI:|email:|IP Address:).+$/.test(key) ? undefined : 'key must be a certificate identity: "CN=<name>", "DNS:<name>", "URI:<uri>", "email:<address>" or "IP Address:<ip>"';

export async function mtlsAuthenticator(file: string, logger?: Logger, watch: { debounceMs?: number; pollMs?: number } = {}): Promise<Authenticator> {
  const parse = await grantsParser(file);
  const load = (text: string) => parseGrants(parse(text), file, checkKey);
  let grants: Map<string, Grant> = load(readFileSync(file, "utf8"));
  logger?.info({ file, entries: grants.size }, "certificate mapping loaded");
  const watcher = watchFiles([file], ([text]) => {
    grants = load(text.toString("utf8"));
  }, { ...watch, logger, what: "certificate mapping" });
  return {
    mode: "mtls",
    async authenticate({ peer }) {
      // The TLS layer refuses unverified chains when a client CA is set; this guards a misconfiguration.
      if (!peer?.verified) throw unauthenticated(AuthReason.CREDENTIALS_MISSING, "this server needs a client certificate signed by its client CA");
      for (const id of peer.identities) {
        const grant = grants.get(id);
        if (grant) return { tenant: grant.tenant, principal: grant.principal ?? id, roles: grant.roles, via: "mtls" };
      }
      throw unauthenticated(AuthReason.CERTIFICATE_UNMAPPED, "the client certificate is valid but no tenant is mapped to its identities", {
        identities: peer.identities.join(","),
      });
    },
    close: () => watcher.close(),
  };
}
