import { create, toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  ServerReflection,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.ts";

/**
 * grpc.reflection.v1 on connect-node, so buf curl, grpcurl and Postman can discover the API.
 * Files are answered with all their transitive dependencies in one response, as grpc-go does.
 */
export function registerReflection(router: ConnectRouter, services: DescService[]): void {
  const files = new Map<string, DescFile>();
  const addFile = (file: DescFile) => {
    if (files.has(file.name + ".proto")) return;
    files.set(file.name + ".proto", file);
    file.dependencies.forEach(addFile);
  };
  services.forEach((s) => addFile(s.file));
  const fileOfSymbol = new Map<string, DescFile>();
  for (const file of files.values()) {
    for (const s of file.services) {
      fileOfSymbol.set(s.typeName, file);
      for (const m of s.methods) fileOfSymbol.set(`${s.typeName}.${m.name}`, file);
    }
    for (const m of file.messages) indexMessage(m, file, fileOfSymbol);
    for (const e of file.enums) fileOfSymbol.set(e.typeName, file);
  }

  const withDependencies = (file: DescFile): Uint8Array[] => {
    const seen = new Set<string>();
    const out: Uint8Array[] = [];
    const visit = (f: DescFile) => {
      if (seen.has(f.name)) return;
      seen.add(f.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      f.dependencies.forEach(visit);
    };
    visit(file);
    return out;
  };

  const answer = (req: ServerReflectionRequest): ServerReflectionResponse => {
    const base = { validHost: req.host, originalRequest: req };
    const notFound = (what: string) =>
      create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: { case: "errorResponse", value: { errorCode: 5, errorMessage: `${what} not found` } },
      });
    const fileResponse = (file: DescFile) =>
      create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file) } },
      });
    const r = req.messageRequest;
    switch (r.case) {
      case "listServices":
        return create(ServerReflectionResponseSchema, {
          ...base,
          messageResponse: { case: "listServicesResponse", value: { service: services.map((s) => ({ name: s.typeName })) } },
        });
      case "fileByFilename": {
        const file = files.get(r.value);
        return file ? fileResponse(file) : notFound(`file ${r.value}`);
      }
      case "fileContainingSymbol": {
        const file = fileOfSymbol.get(r.value);
        return file ? fileResponse(file) : notFound(`symbol ${r.value}`);
      }
      case "allExtensionNumbersOfType":
        // The suite's contracts declare no extensions.
        return fileOfSymbol.has(r.value)
          ? create(ServerReflectionResponseSchema, {
              ...base,
              messageResponse: { case: "allExtensionNumbersResponse", value: { baseTypeName: r.value, extensionNumber: [] } },
            })
          : notFound(`type ${r.value}`);
      default:
        return create(ServerReflectionResponseSchema, {
          ...base,
          messageResponse: { case: "errorResponse", value: { errorCode: 12, errorMessage: "request kind not implemented" } },
        });
    }
  };

  router.service(ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield answer(req);
    },
  });
}

function indexMessage(m: DescFile["messages"][number], file: DescFile, index: Map<string, DescFile>): void {
  index.set(m.typeName, file);
  for (const nested of m.nestedMessages) indexMessage(nested, file, index);
  for (const e of m.nestedEnums) index.set(e.typeName, file);
}
