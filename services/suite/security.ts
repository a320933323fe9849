/**
 * The process's transport security, authentication, access policy and limits, from its
 * configuration, as the platform's server options (docs/security.md).
 */
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import type { CallBounds } from "../common/bounds.ts";
import type { Authenticator } from "../platform/authenticate.ts";
import { jwtAuthenticator } from "../platform/jwt-auth.ts";
import { MiB } from "../platform/limits.ts";
import type { Logger } from "../platform/log.ts";
import { mtlsAuthenticator } from "../platform/mtls-auth.ts";
import type { ServerOptions } from "../platform/server.ts";
import { tokenAuthenticator } from "../platform/token-auth.ts";
import { accessPolicy, isMutating } from "./access.ts";
import type { Config } from "./config.ts";
import { fromSetting } from "./start-error.ts";

type SecurityOptions = Required<Pick<ServerOptions, "access" | "limits" | "rateLimit" | "audit">> & Pick<ServerOptions, "tls" | "healthPort">;

export async function authenticatorOf(config: Config, logger: Logger): Promise<Authenticator | undefined> {
  switch (config.auth) {
    case "none":
      return undefined;
    case "token":
      return fromSetting("VACCINE_AUTH_TOKENS_FILE", config.authTokensFile, () => tokenAuthenticator(config.authTokensFile, logger));
    case "mtls":
      return fromSetting("VACCINE_AUTH_MTLS_MAP", config.authMtlsMap, () => mtlsAuthenticator(config.authMtlsMap, logger));
    case "jwt":
      return fromSetting("VACCINE_AUTH_JWKS", config.authJwks, () =>
        jwtAuthenticator(
          {
            jwks: config.authJwks,
            issuer: config.authIssuer,
            audience: config.authAudience,
            clockSkewSeconds: config.authClockSkewS,
            maxLifetimeSeconds: config.authMaxLifetimeS,
            tenantClaim: config.authTenantClaim,
            rolesClaim: config.authRolesClaim,
          },
          logger,
        ),
      );
  }
}

/** Server options of the process; fails (at start) on unreadable or invalid credentials files. */
export async function securityOptions(config: Config, logger: Logger): Promise<SecurityOptions> {
  // Read here first, so that a file that cannot be used is named by its variable.
  const pem = (variable: string, path: string) => (path ? fromSetting(variable, path, () => readFileSync(path)) : undefined);
  const [cert, key] = [await pem("VACCINE_TLS_CERT", config.tlsCert), await pem("VACCINE_TLS_KEY", config.tlsKey)];
  await pem("VACCINE_TLS_CLIENT_CA", config.tlsClientCa);
  if (cert && key) await fromSetting("VACCINE_TLS_CERT and VACCINE_TLS_KEY", `${config.tlsCert} ${config.tlsKey}`, () => createSecureContext({ cert, key }));
  return {
    tls: config.tlsCert ? { certFile: config.tlsCert, keyFile: config.tlsKey, clientCaFile: config.tlsClientCa || undefined } : undefined,
    healthPort: config.healthPort,
    access: { authenticator: await authenticatorOf(config, logger), policy: accessPolicy(), reflectionOpen: config.reflectionOpen },
    limits: {
      maxMessageBytes: config.maxMessageMb * MiB,
      unaryDeadlineMs: config.unaryDeadlineMs,
      streamIdleMs: config.streamIdleMs,
      maxConcurrentStreams: config.maxStreamsPerConnection,
      keepaliveIntervalMs: config.keepaliveMs,
      keepaliveTimeoutMs: config.keepaliveTimeoutMs,
      idleTimeoutMs: config.idleTimeoutMs,
    },
    rateLimit: { perSecond: config.rateLimitRps, burst: config.rateLimitBurst },
    audit: { mutating: (method) => isMutating(method.name) },
  };
}

export function callBounds(config: Config): CallBounds {
  return {
    maxPromptTokens: config.maxPromptTokens,
    maxNewTokens: config.maxNewTokens,
    maxGeneratedTokens: config.maxGeneratedTokens,
    maxEmbedValues: config.maxEmbedValues,
    maxSteps: config.maxSteps,
    maxTrainingTokens: config.maxTrainingTokens,
  };
}
