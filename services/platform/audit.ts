/**
 * The audit log: one JSON line (msg "audit") for every mutating call and every refusal, with
 * who (tenant, principal), what (method, the identifiers of the request and of a unary
 * response), the outcome (gRPC code name and ErrorInfo reason) and the trace id. It sits
 * outside access control, so refused calls reach it too; the principal is read from the
 * call's context values once access control has run.
 *
 * Nothing secret or bulky is written: no headers, no message bodies, no error messages
 * (they may quote request values); only fields whose names say they identify something
 * (`id`, `uri`, `digest`, `*_id`...), each bounded in length. Which methods mutate is the
 * composing process's to say: the platform knows no service.
 */
import { ScalarType, type DescMessage, type DescMethod, type Message } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { Code, ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { context, isSpanContextValid, trace } from "@opentelemetry/api";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { Logger } from "./log.ts";
import { REMOTE_ADDRESS } from "./peer.ts";
import { PRINCIPAL } from "./principal.ts";
import { statusName } from "./rpc-tracing.ts";

export interface AuditOptions {
  /** Whether a method changes what is stored or running: every call of it is logged. */
  mutating(method: DescMethod): boolean;
}

/**
 * Refusals, logged on any method: authentication, roles, rate limits and quotas, and
 * NOT_FOUND, which is also what another tenant's resource answers (handlers make the two
 * indistinguishable on purpose, so every one is logged: a run of them is someone probing).
 */
const REFUSALS = new Set<Code>([Code.Unauthenticated, Code.PermissionDenied, Code.ResourceExhausted, Code.NotFound]);

/** Field names that identify a resource; trace ids have a field of their own in the line. */
const IDENTIFIER = /^(?:id|uri|digest)$|_(?:id|uri|digest)$/;
const NOT_RESOURCE = /^(?:trace|span)_id$/;
/**
 * Fields below the message: a.b.uri is three deep. A method's or guard's dataset is four or
 * five deep (spec.booster.harmful_dataset.uri), and was left out at three.
 */
const MAX_DEPTH = 5;
const MAX_IDENTIFIERS = 16;
const MAX_CHARS = 256;

/**
 * Adds the identifying string fields of a message to `out`, by dotted path of proto field
 * names, set fields only; repeated and map fields are skipped (a list is not one resource).
 */
function identifiers(schema: DescMessage, message: Message, out: Record<string, string>): void {
  collect(reflect(schema, message), "", 1, out);
}

function collect(msg: ReflectMessage, prefix: string, depth: number, out: Record<string, string>): void {
  for (const field of msg.fields) {
    if (Object.keys(out).length >= MAX_IDENTIFIERS) return;
    if (!msg.isSet(field)) continue;
    const path = `${prefix}${field.name}`;
    if (field.fieldKind === "scalar" && field.scalar === ScalarType.STRING && IDENTIFIER.test(field.name) && !NOT_RESOURCE.test(field.name)) {
      out[path] = bounded(msg.get(field) as string);
    } else if (field.fieldKind === "message" && depth < MAX_DEPTH) {
      collect(msg.get(field) as ReflectMessage, `${path}.`, depth + 1, out);
    }
  }
}

function bounded(s: string): string {
  return s.length <= MAX_CHARS ? s : `${s.slice(0, MAX_CHARS)}...(${s.length} chars)`;
}

/** The active span's trace id, taken when the call starts: a stream's line is written later, elsewhere. */
function traceId(): string | undefined {
  const sc = trace.getSpan(context.active())?.spanContext();
  return sc && isSpanContextValid(sc) ? sc.traceId : undefined;
}

export function audit(options: AuditOptions, logger: Logger): Interceptor {
  // Audit lines are written whatever the configured level (a quieter log must not lose
  // them), unless the logger is silent (tests, embedding).
  const log = logger.levelVal === Infinity ? logger : logger.child({}, { level: "info" });
  return (next) => async (req) => {
    const mutating = options.mutating(req.method);
    const resource: Record<string, string> = {};
    const started = { method: `${req.service.typeName}/${req.method.name}`, trace_id: traceId() };
    const write = (err?: unknown) => {
      const e = err === undefined ? undefined : ConnectError.from(err);
      if (!mutating && !(e && REFUSALS.has(e.code))) return;
      const principal = req.contextValues.get(PRINCIPAL);
      log.info(
        {
          audit: true,
          tenant: principal?.tenant,
          principal: principal?.principal,
          remote: req.contextValues.get(REMOTE_ADDRESS),
          ...started,
          resource: Object.keys(resource).length ? resource : undefined,
          outcome: statusName(e?.code ?? 0),
          reason: e?.findDetails(ErrorInfoSchema)[0]?.reason,
        },
        "audit",
      );
    };
    // A streamed request (an upload) names what it is about in its first message.
    const request = req.stream ? { ...req, message: firstIdentifiers(req.message, req.method.input, resource) } : req;
    if (!req.stream) identifiers(req.method.input, req.message, resource);
    let res: UnaryResponse | StreamResponse;
    try {
      res = await next(request as typeof req);
    } catch (err) {
      write(err);
      throw err;
    }
    // What a call created is named in its one response (unary and client-stream methods;
    // the latter's comes through a stream).
    if (!res.stream) {
      identifiers(req.method.output, res.message, resource);
      write();
      return res;
    }
    const single = req.method.methodKind === "client_streaming";
    const message = single ? firstIdentifiers(res.message, req.method.output, resource) : res.message;
    return { ...res, message: written(message, write) };
  };
}

async function* firstIdentifiers<T extends Message>(stream: AsyncIterable<T>, schema: DescMessage, out: Record<string, string>): AsyncIterable<T> {
  let first = true;
  for await (const m of stream) {
    if (first) identifiers(schema, m, out);
    first = false;
    yield m;
  }
}

/** Writes the line when a response stream ends: its outcome is only known then. */
async function* written<T>(stream: AsyncIterable<T>, write: (err?: unknown) => void): AsyncIterable<T> {
  let outcome: { err?: unknown } | undefined;
  try {
    yield* stream;
    outcome = {};
  } catch (err) {
    outcome = { err };
    throw err;
  } finally {
    // A stream the client abandoned ends here without an outcome of its own.
    write(outcome ? outcome.err : new ConnectError("abandoned", Code.Canceled));
  }
}
