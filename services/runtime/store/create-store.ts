/** Builds the configured checkpoint store; reading the environment is the caller's job. */
import { LocalCheckpointStore } from "./local-store.ts";
import { S3CheckpointStore, type S3StoreOptions } from "./s3-store.ts";
import type { CheckpointStore } from "./store.ts";

export type StoreConfig = { kind: "local"; root: string } | ({ kind: "s3" } & S3StoreOptions);

export function createStore(config: StoreConfig): CheckpointStore {
  switch (config.kind) {
    case "local":
      return new LocalCheckpointStore(config.root);
    case "s3":
      return new S3CheckpointStore(config);
    default:
      throw new TypeError(`unknown store kind ${JSON.stringify((config as { kind: unknown }).kind)}`);
  }
}
