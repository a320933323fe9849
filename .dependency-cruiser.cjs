/**
 * Which way imports may point between the layers of services/ (docs/architecture.md):
 * runtime <- platform | common <- jobs <- services <- suite <- cli, experiment.
 * Checked by tests/architecture.test.ts on every test run.
 */
const SERVICES = "^services/(align|finetune|embed|score|datasets|checkpoints)/";
module.exports = {
  forbidden: [
    {
      name: "runtime-is-self-contained",
      comment: "The model runtime knows nothing of gRPC, the contracts or the services.",
      severity: "error",
      from: { path: "^services/runtime/" },
      to: { path: "^(services/(?!runtime/)|gen/)|^node_modules/@connectrpc/" },
    },
    {
      name: "platform-is-generic",
      comment: "platform/ is what any gRPC service needs: no runtime, jobs or vaccine services.",
      severity: "error",
      from: { path: "^services/platform/" },
      to: { path: "^services/(?!platform/)|^gen/vaccine/" },
    },
    {
      name: "common-below-jobs-and-services",
      comment: "common/ maps the runtime to RPC for every service; it uses only platform and runtime.",
      severity: "error",
      from: { path: "^services/common/" },
      to: { path: "^services/(?!common/|platform/|runtime/)" },
    },
    {
      name: "jobs-below-services",
      comment: "The job layer serves Align and FineTune; it must not reach up into them or the process.",
      severity: "error",
      from: { path: "^services/jobs/" },
      to: { path: "^services/(?!jobs/|common/|platform/|runtime/)" },
    },
    {
      name: "services-are-siblings",
      comment: "A service uses the layers below it, never another service or the process that composes them (its main.ts entrypoint starts that process).",
      severity: "error",
      from: { path: SERVICES, pathNot: "/main\\.ts$" },
      to: { path: "^services/(?!common/|jobs/|platform/|runtime/)", pathNot: "^services/$1/" },
    },
    {
      name: "suite-composes-not-clients",
      comment: "suite/ composes services into a process; clients (cli, experiment) sit above it.",
      severity: "error",
      from: { path: "^services/suite/" },
      to: { path: "^services/(cli|experiment|client)/" },
    },
    {
      name: "client-is-thin",
      comment: "The gRPC clients need only the contracts and the RPC tracing interceptor.",
      severity: "error",
      from: { path: "^services/client/" },
      to: { path: "^services/(?!client/|platform/)" },
    },
    {
      name: "nothing-imports-the-cli",
      comment: "The CLI is a leaf: what another module needs from it belongs in client/ or below.",
      severity: "error",
      from: { path: "^services/(?!cli/)" },
      to: { path: "^services/cli/" },
    },
    {
      name: "code-does-not-import-tests",
      severity: "error",
      from: { path: "^(services|gen|bench|scripts)/" },
      to: { path: "^tests/" },
    },
    {
      name: "no-circular",
      comment: "Cycles hide which module owns what (a type-only back reference is fine: it vanishes at run time).",
      severity: "error",
      from: { path: "^services/" },
      to: { circular: true, viaOnly: { dependencyTypesNot: ["type-only"] } },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { extensions: [".ts", ".js", ".json"] },
  },
};
