/**
 * Enum values a request's enums do not have. proto3 enums are open: a binary client may
 * send any number, protobuf-es keeps it, and a handler that switches on the known values
 * takes it for a default or echoes it into a stored spec (which Python then cannot name).
 * JSON already refuses such values by name; this refuses them in every encoding, for every
 * RPC with one request message, as INVALID_ARGUMENT naming each field. The client streams
 * (uploads, imports) check their metadata's enums with the rest of it, in one answer.
 */
import type { DescMessage, Message } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import type { Interceptor } from "@connectrpc/connect";
import type { BadRequest_FieldViolation } from "../../gen/google/rpc/error_details_pb.ts";
import { invalidArgument } from "./errors.ts";

type FieldViolation = Pick<BadRequest_FieldViolation, "field" | "description">;

/** Each enum field of `message` (nested messages, lists and maps too) holding a number its enum does not define. */
export function unknownEnumValues(schema: DescMessage, message: Message): FieldViolation[] {
  const out: FieldViolation[] = [];
  const check = (path: string, enumDesc: { typeName: string; values: readonly { number: number }[] }, value: number) => {
    if (!enumDesc.values.some((v) => v.number === value)) out.push({ field: path, description: `${value} is not a value of ${enumDesc.typeName}` });
  };
  const walk = (r: ReflectMessage, prefix: string) => {
    for (const f of r.fields) {
      if (!r.isSet(f)) continue;
      const path = prefix + f.name;
      if (f.fieldKind === "enum") check(path, f.enum, r.get(f));
      else if (f.fieldKind === "message") walk(r.get(f), `${path}.`);
      else if (f.fieldKind === "list") {
        let i = 0;
        for (const item of r.get(f)) {
          if (f.listKind === "enum") check(`${path}[${i}]`, f.enum, item as number);
          else if (f.listKind === "message") walk(item as ReflectMessage, `${path}[${i}].`);
          i++;
        }
      } else if (f.fieldKind === "map") {
        for (const [key, value] of r.get(f)) {
          if (f.mapKind === "enum") check(`${path}[${JSON.stringify(key)}]`, f.enum, value as number);
          else if (f.mapKind === "message") walk(value as ReflectMessage, `${path}[${JSON.stringify(key)}].`);
        }
      }
    }
  };
  walk(reflect(schema, message), "");
  return out;
}

/** Refuses a request message with an enum value its enum does not define. */
export function knownEnumValues(): Interceptor {
  return (next) => async (req) => {
    const bad = req.stream ? [] : unknownEnumValues(req.method.input, req.message);
    if (bad.length > 0) throw invalidArgument(bad);
    return next(req);
  };
}
