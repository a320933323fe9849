/**
 * Authentication and authorization of every call, as the first interceptor after tracing:
 * the authenticator establishes the principal, which goes into the call's context values
 * (see principal.ts); the access policy decides whether one of its roles allows the method.
 * The platform knows no roles of its own: the policy comes from the process that composes
 * the services. Health is always open (probes carry no credentials); reflection needs
 * authentication unless configured open.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import { AuthReason, type AuthenticateFirst, type Authenticator, type CallCredentials } from "./authenticate.ts";
import { rpcError } from "./errors.ts";
import { AUTHORIZATION_FIELDS, PEER } from "./peer.ts";
import { PRINCIPAL, type Principal } from "./principal.ts";

export interface AccessPolicy {
  /** Every role, weakest first: a role allows whatever any role before it allows. */
  roles: readonly string[];
  /** The role each method needs, by "package.Service/Method"; a served method missing here fails the start. */
  methods: Readonly<Record<string, string>>;
}

export interface AccessOptions {
  /** Undefined: no authentication; every call acts as ANONYMOUS. */
  authenticator?: Authenticator;
  policy?: AccessPolicy;
  /** Reflection without credentials (API discovery tools on a trusted network). */
  reflectionOpen?: boolean;
}

/** The caller when authentication is off: one tenant, every role. */
export function anonymous(policy?: AccessPolicy): Principal {
  return { tenant: "default", principal: "anonymous", roles: [...(policy?.roles ?? [])], via: "none" };
}

export const methodKey = (service: { typeName: string }, method: { name: string }) => `${service.typeName}/${method.name}`;

/** Throws when a served method has no required role: nothing is served by default. */
export function checkPolicyCovers(policy: AccessPolicy, services: DescService[]): void {
  const missing = services.flatMap((s) => s.methods.map((m) => methodKey(s, m))).filter((k) => !(k in policy.methods));
  const unknownRoles = [...new Set(Object.values(policy.methods))].filter((r) => !policy.roles.includes(r));
  if (missing.length || unknownRoles.length) {
    throw new Error(`access policy incomplete: ${[...missing.map((k) => `no role for ${k}`), ...unknownRoles.map((r) => `unknown role ${r}`)].join("; ")}`);
  }
}

/** Whether any of `held` is `required` or stronger. */
export function allows(policy: AccessPolicy, held: readonly string[], required: string): boolean {
  const need = policy.roles.indexOf(required);
  return need >= 0 && held.some((r) => policy.roles.indexOf(r) >= need);
}

/** The caller of a method of `service`; undefined where no credentials are asked (health, open reflection). Throws UNAUTHENTICATED. */
async function authenticate(options: AccessOptions, none: Principal, service: string, credentials: CallCredentials): Promise<Principal | undefined> {
  if (service === Health.typeName) return undefined;
  if (!options.authenticator) return none;
  if (service === ServerReflection.typeName && options.reflectionOpen) return undefined;
  return options.authenticator.authenticate(credentials);
}

/**
 * Authentication: the caller becomes the call's principal (PRINCIPAL), or the call is refused
 * UNAUTHENTICATED. Health and open reflection ask for no credentials and get no principal.
 */
export function authentication(options: AccessOptions): Interceptor {
  const none = anonymous(options.policy);
  return (next) => async (req) => {
    const principal = await authenticate(options, none, req.service.typeName, { header: req.header, peer: req.contextValues.get(PEER), authorizationFields: req.contextValues.get(AUTHORIZATION_FIELDS) });
    // Set before the role check, so the audit log names who was refused (the handler never runs then).
    if (principal) req.contextValues.set(PRINCIPAL, principal);
    return next(req);
  };
}

/**
 * Authorization: the principal's roles must allow the method (PERMISSION_DENIED otherwise).
 * Placed after the rate limit, so that refused calls count against their tenant's rate too:
 * uncounted, a reader could write audit lines as fast as it could call.
 */
export function authorization(options: AccessOptions): Interceptor {
  const { policy } = options;
  return (next) => async (req) => {
    const service = req.service.typeName;
    const principal = req.contextValues.get(PRINCIPAL);
    if (!principal) return next(req);
    const key = methodKey(req.service, req.method);
    const required = policy?.methods[key];
    // Reflection only needs an authenticated caller.
    if (policy && service !== ServerReflection.typeName && (required === undefined || !allows(policy, principal.roles, required))) {
      throw rpcError(
        Code.PermissionDenied,
        AuthReason.ROLE_REQUIRED,
        `${key} needs the ${required ?? "(none configured)"} role; ${principal.principal} of tenant ${principal.tenant} has ${principal.roles.length ? principal.roles.join(", ") : "no roles"}`,
        { method: key, required_role: required ?? "" },
      );
    }
    return next(req);
  };
}

/**
 * For requests refused before any interceptor runs (wire-errors.ts, not-served.ts): the error
 * accessControl would have answered when the caller's credentials do not hold, so that a
 * caller without them learns nothing of a request's form (its message type, its field names)
 * or of the services and methods served, which reflection keeps from them.
 */
export function authenticationFirst(options: AccessOptions): AuthenticateFirst {
  const none = anonymous(options.policy);
  return async (service, credentials) => {
    try {
      await authenticate(options, none, service, credentials);
      return undefined;
    } catch (err) {
      return ConnectError.from(err);
    }
  };
}
