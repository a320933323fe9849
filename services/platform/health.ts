import { create } from "@bufbuild/protobuf";
import { Code, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "../../gen/grpc/health/v1/health_pb.ts";
import { rpcError } from "./errors.ts";
import { echo } from "./validate.ts";

export { ServingStatus };

/** Longest service name an unknown-service error carries in its ErrorInfo (real ones are under 60). */
const MAX_SERVICE_NAME = 256;

/**
 * grpc.health.v1 on connect-node: Check, Watch and List over a status per service name,
 * "" standing for the whole server. Kubernetes' native gRPC probes call Check.
 */
export class HealthRegistry {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Set<() => void>();

  constructor(services: string[]) {
    for (const name of ["", ...services]) this.statuses.set(name, ServingStatus.NOT_SERVING);
  }

  set(service: string, status: ServingStatus): void {
    this.statuses.set(service, status);
    for (const wake of this.watchers) wake();
  }

  /** Sets every registered service, and the server, at once (start and shutdown). */
  setAll(status: ServingStatus): void {
    for (const name of this.statuses.keys()) this.statuses.set(name, status);
    for (const wake of this.watchers) wake();
  }

  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  register(router: ConnectRouter): void {
    router.service(Health, {
      check: (req) => {
        const status = this.statuses.get(req.service);
        if (status === undefined) {
          // The name is the client's: quoted bounded, as every error quotes a request's value.
          throw rpcError(Code.NotFound, "SERVICE_UNKNOWN", `unknown service ${echo(req.service)}`, { service: req.service.slice(0, MAX_SERVICE_NAME) });
        }
        return create(HealthCheckResponseSchema, { status });
      },
      list: () =>
        create(HealthListResponseSchema, {
          statuses: Object.fromEntries(
            [...this.statuses].map(([name, status]) => [name, create(HealthCheckResponseSchema, { status })]),
          ),
        }),
      watch: (req, ctx) => this.watch(req.service, ctx),
    });
  }

  /** Sends the current status, then every change, until the call ends. */
  private async *watch(service: string, ctx: HandlerContext) {
    let last: ServingStatus | undefined;
    let wake: () => void = () => {};
    const waker = () => wake();
    this.watchers.add(waker);
    ctx.signal.addEventListener("abort", waker);
    try {
      while (!ctx.signal.aborted) {
        const status = this.statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (status !== last) {
          last = status;
          yield create(HealthCheckResponseSchema, { status });
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
          // A change or an abort may have come while the stream was suspended at the yield.
          if (ctx.signal.aborted || (this.statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN) !== last) resolve();
        });
      }
    } finally {
      this.watchers.delete(waker);
      ctx.signal.removeEventListener("abort", waker);
    }
  }
}
