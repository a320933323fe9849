/**
 * CPU time of the optimizer's update alone (global-norm clipping and AdamW) on the LoRA
 * parameters of a bench/train-step.ts config, with random gradients: the part of the step
 * the fused native AdamW replaces. Run: npx tsx bench/optimizer-update.ts [4x128|6x256] [auto|off]
 */
import * as tf from "@tensorflow/tfjs";
import { selectBackend } from "../services/runtime/backend.ts";
import { LINEAR_MODULES } from "../services/runtime/model/llama.ts";
import { LoraAdapter } from "../services/runtime/model/lora.ts";
import { AdamW, clipCoefficient } from "../services/runtime/train/adamw.ts";
import { llamaConfig, RANK, type ConfigName } from "./train-setup.ts";

const [configName = "4x128", native = "auto"] = process.argv.slice(2);
await selectBackend("wasm", (l) => console.error(l), { nativeKernels: native as "auto" | "off" });
const lora = LoraAdapter.init(llamaConfig(configName as ConfigName), { r: RANK, alpha: 2 * RANK, dropout: 0, targetModules: [...LINEAR_MODULES] }, 1);
const params = new Map(lora.variables.map((v) => [v.name, v]));
const optimizer = new AdamW(params, { weightDecay: 0.1 });
const grads = new Map([...params].map(([name, p], i) => [name, tf.randomNormal(p.shape, 0, 1, "float32", i)]));
const update = () => {
  const { scale } = clipCoefficient(grads, 1);
  optimizer.apply(grads, 1e-3, scale);
};
for (let i = 0; i < 20; i++) update();
const STEPS = 200;
const t0 = performance.now();
const c0 = process.cpuUsage();
for (let i = 0; i < STEPS; i++) update();
const c = process.cpuUsage(c0);
const ms = (x: number) => (x / STEPS).toFixed(2);
console.log(`${configName} native=${native}: ${params.size} parameters, update ${ms((c.user + c.system) / 1000)} ms CPU (${ms(performance.now() - t0)} ms wall) a step`);
