// Runtime errors as gRPC statuses: the cases no service test can provoke on demand.
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { toRpcError } from "../../services/common/runtime-errors.ts";

const errno = (code: string, message: string) => Object.assign(new Error(message), { code });

describe("toRpcError", () => {
  it("answers a full disk RESOURCE_EXHAUSTED STORAGE_FULL, without the server's paths", () => {
    for (const code of ["ENOSPC", "EDQUOT"]) {
      const e = toRpcError(errno(code, `${code}: no space left on device, write '/var/lib/vaccine/store/.staging/x/object'`));
      expect(e.code).toBe(Code.ResourceExhausted);
      expect(e.findDetails(ErrorInfoSchema)[0]).toMatchObject({ reason: "STORAGE_FULL", metadata: { errno: code } });
      expect(e.rawMessage).not.toContain("/var/lib");
    }
    // Other system errors stay INTERNAL: they are the server's to explain.
    expect(toRpcError(errno("EIO", "EIO: i/o error")).code).toBe(Code.Internal);
  });
});
