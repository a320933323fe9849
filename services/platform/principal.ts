/**
 * Who is calling: the principal an authenticator established, put into the call's connect
 * context values so handlers can read it (`principalOf(ctx)`) without knowing how it was
 * authenticated.
 */
import { createContextKey, type ContextValues } from "@connectrpc/connect";

export const AUTH_MODES = ["none", "token", "jwt", "mtls"] as const;
export type AuthMode = (typeof AUTH_MODES)[number];

export interface Principal {
  /** The tenant whose resources the caller acts on. */
  tenant: string;
  /** Who within the tenant (token name, JWT subject, certificate identity); for logs, never a secret. */
  principal: string;
  /** Roles as the credential states them; the access policy decides what they allow. */
  roles: readonly string[];
  /** How the principal was established. */
  via: AuthMode;
}

/** Set on every call that passed authentication; undefined on open methods (health) when no credentials were checked. */
export const PRINCIPAL = createContextKey<Principal | undefined>(undefined, { description: "authenticated principal" });

export function principalOf(ctx: { values: ContextValues }): Principal | undefined {
  return ctx.values.get(PRINCIPAL);
}
