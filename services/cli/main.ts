// The `vaccine` command (bin/vaccine.mjs): runs the CLI on this process's argv and streams.
import { runCli } from "./cli.ts";

process.exitCode = await runCli(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env });
