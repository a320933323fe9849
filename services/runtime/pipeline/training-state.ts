/**
 * The resumable training-state checkpoint: the adapter so far (a PEFT folder), the AdamW
 * state (optimizer.safetensors, "<param>.exp_avg" / ".exp_avg_sq" / ".step"), the step function's
 * own tensors (step_state.safetensors: Vaccine's reused perturbation and the attention-output
 * norm a relative rho was resolved with, "vaccine.attention_norm"; Lisa's weights at the
 * last switch and its position, "lisa.anchor.<param>" and "lisa.position") and
 * trainer_state.json (step, plan, seed). Data order is a function of (seed, step), Lisa's
 * two data cursors included, so the step is all the position a resume needs.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeJson } from "../checkpoint/hf-folder.ts";
import { readJsonObject } from "../json.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, fromPeftTensors, toPeftConfig, toPeftTensors } from "../checkpoint/peft-folder.ts";
import { parseSafetensors, writeSafetensors } from "../checkpoint/safetensors.ts";
import { CheckpointFormatError } from "../format-error.ts";
import type { HostTensors } from "../host-tensor.ts";
import { LoraAdapter } from "../model/lora.ts";
import type { CheckpointRef, CheckpointStore } from "../store/store.ts";
import type { Trainer, TrainerState } from "../train/loop.ts";
import { KIND } from "./kinds.ts";

export const OPTIMIZER_FILE = "optimizer.safetensors";
export const STEP_STATE_FILE = "step_state.safetensors";
export const TRAINER_STATE_FILE = "trainer_state.json";

/** Writes the adapter as a PEFT folder into dir (the result and the training state share it). */
export async function writeAdapterFolder(dir: string, adapter: LoraAdapter, parent: CheckpointRef): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeJson(join(dir, ADAPTER_CONFIG_FILE), toPeftConfig(adapter.config, parent.uri));
  await writeFile(join(dir, ADAPTER_WEIGHTS_FILE), writeSafetensors(toPeftTensors(adapter.exportWeights())));
}

/** Stores a training state and returns its ref. `plan` identifies the run (method, settings); `meta` goes into its manifest as the result's does (the job). */
export async function saveTrainingState(
  store: CheckpointStore,
  trainer: Trainer,
  adapter: LoraAdapter,
  parent: CheckpointRef,
  plan: Record<string, unknown>,
  meta: Record<string, unknown> = {},
): Promise<CheckpointRef> {
  const dir = await mkdtemp(join(tmpdir(), "vaccine-state-"));
  try {
    const state = trainer.exportState();
    await writeAdapterFolder(dir, adapter, parent);
    await writeFile(join(dir, OPTIMIZER_FILE), writeSafetensors(state.optimizer));
    await writeFile(join(dir, STEP_STATE_FILE), writeSafetensors(state.stepState));
    await writeJson(join(dir, TRAINER_STATE_FILE), { global_step: state.step, total_steps: trainer.totalSteps, plan });
    return await store.put(dir, { kind: KIND.trainingState, meta: { ...meta, parent, step: state.step, plan } });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Restores adapter weights and trainer state from a training-state checkpoint of the same
 * plan; a state written for another plan is refused rather than silently mixed in.
 */
export async function restoreTrainingState(
  store: CheckpointStore,
  ref: CheckpointRef,
  trainer: Trainer,
  adapter: LoraAdapter,
  plan: Record<string, unknown>,
): Promise<number> {
  const { dir, manifest } = await store.get(ref);
  if (manifest.kind !== KIND.trainingState) throw new CheckpointFormatError(`${ref.uri} is a ${manifest.kind}, not a training state`);
  const saved = readJsonObject(join(dir, TRAINER_STATE_FILE));
  if (JSON.stringify(saved.plan) !== JSON.stringify(plan)) {
    throw new CheckpointFormatError(`training state ${ref.uri} was written for another run: ${JSON.stringify(saved.plan)}`);
  }
  const tensors = async (file: string): Promise<HostTensors> => parseSafetensors(await readFile(join(dir, file))).tensors;
  const weights = await tensors(ADAPTER_WEIGHTS_FILE);
  const restored = LoraAdapter.fromWeights(adapter.modelConfig, adapter.config, fromPeftTensors(weights));
  for (const [name, pair] of adapter.pairs) {
    pair.a.assign(restored.pairs.get(name)!.a);
    pair.b.assign(restored.pairs.get(name)!.b);
  }
  restored.dispose();
  const state: TrainerState = { step: saved.global_step as number, optimizer: await tensors(OPTIMIZER_FILE), stepState: await tensors(STEP_STATE_FILE) };
  trainer.importState(state);
  return state.step;
}
