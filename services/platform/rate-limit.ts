/**
 * Per-tenant request rate: a token bucket per tenant (refilled at `perSecond`, holding at
 * most `burst`). A call over the rate is refused with RESOURCE_EXHAUSTED, an ErrorInfo
 * naming the limit and a google.rpc.RetryInfo saying when a call would be accepted again.
 * Calls without a principal (health) are not counted.
 */
import { Code, type Interceptor } from "@connectrpc/connect";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { rpcError } from "./errors.ts";
import { PRINCIPAL } from "./principal.ts";

export interface RateLimitOptions {
  /** Sustained calls per second per tenant; 0 turns the limit off. */
  perSecond: number;
  /** Calls a tenant may make at once after being idle. */
  burst: number;
}

export const RATE_LIMITED = "RATE_LIMITED";

/** Buckets are dropped once full again, so idle tenants cost nothing; this bounds the map between sweeps. */
const SWEEP_AT = 10_000;

export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes one token: 0 when granted, else the milliseconds until one is available. */
  take(key: string): number {
    const now = this.now();
    if (this.buckets.size >= SWEEP_AT) this.sweep(now);
    const b = this.buckets.get(key) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    this.buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - b.tokens) / this.perSecond) * 1000);
  }

  private sweep(now: number): void {
    for (const [key, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.perSecond >= this.burst) this.buckets.delete(key);
    }
  }
}

export function rateLimit(options: RateLimitOptions, now?: () => number): Interceptor {
  const buckets = new TokenBuckets(options.perSecond, Math.max(1, options.burst), now);
  return (next) => async (req) => {
    const principal = req.contextValues.get(PRINCIPAL);
    if (options.perSecond <= 0 || !principal) return next(req);
    const waitMs = buckets.take(principal.tenant);
    if (waitMs === 0) return next(req);
    throw rpcError(
      Code.ResourceExhausted,
      RATE_LIMITED,
      `tenant ${principal.tenant} exceeded its request rate of ${options.perSecond} calls per second (burst ${options.burst}); retry in ${waitMs} ms`,
      { limit: "requests_per_second", requests_per_second: String(options.perSecond), burst: String(options.burst), tenant: principal.tenant },
      [{ desc: RetryInfoSchema, value: { retryDelay: { seconds: BigInt(Math.floor(waitMs / 1000)), nanos: (waitMs % 1000) * 1_000_000 } } }],
    );
  };
}
