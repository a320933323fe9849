/**
 * Fine-tune accuracy of the shipped base model (models/base) on the harder topic task
 * (agnews-hard) and on the other built-in tasks, after short LoRA runs of several lengths,
 * each a run of its own (the schedule ends at its last step): LoRA r 8 / alpha 16, dropout 0,
 * all projections, lr 1e-3, batch 8, n = 1000 train examples, greedy answers to 100 held-out
 * examples scored by the task's reference rule. Shows which task leaves room below 100% for a
 * defence's accuracy cost (issue 19). Writes bench/results/hard-task.json.
 * Run: npx tsx bench/hard-task.ts [steps...]   (default 100 150 300)
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { selectBackend } from "../services/runtime/backend.ts";
import { greedyAnswers, loadBaseModel } from "../services/runtime/base-model.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import type { Example } from "../services/runtime/data/template.ts";
import { parseTaskAnswer } from "../services/runtime/eval/task-parsers.ts";
import { inferTask } from "../services/runtime/pipeline/scoring.ts";
import { LINEAR_MODULES } from "../services/runtime/model/llama.ts";
import { LoraAdapter } from "../services/runtime/model/lora.ts";
import { Trainer } from "../services/runtime/train/loop.ts";
import { SftStep } from "../services/runtime/train/step.ts";

const STEPS = process.argv.slice(2).map(Number).filter((n) => n > 0);
const STEP_COUNTS = STEPS.length ? STEPS : [100, 150, 300];
const TRAIN = 1000;
const TEST = 100;
/** Enough for GSM8K's worked answers; a label takes a few tokens and then eos. */
const MAX_NEW_TOKENS = 64;
const TASKS = ["agnews-hard", "agnews", "sst2", "gsm8k"];
const LORA = { r: 8, alpha: 16, dropout: 0, targetModules: [...LINEAR_MODULES] };

const examples = (name: string, split: "train" | "test", size: number): Example[] => {
  const built = loadBuiltin(name, { split, size, seed: 0 });
  if (built.kind !== "examples") throw new Error(`${name} holds examples`);
  return built.examples;
};

const backend = (await selectBackend(process.argv.includes("--cpu") ? "cpu" : "wasm", () => {})).backend;
const base = await loadBaseModel();

function accuracy(test: Example[], lora?: LoraAdapter): { accuracy: number; samples: { answer: string; gold: string }[] } {
  const answers = greedyAnswers(base.model, base.tokenizer, test, { maxNewTokens: MAX_NEW_TOKENS, lora });
  const task = inferTask(test[0])!;
  const correct = answers.filter((a, i) => parseTaskAnswer(task, a, test[i].gold!).correct).length;
  return { accuracy: (100 * correct) / test.length, samples: answers.slice(0, 3).map((answer, i) => ({ answer, gold: test[i].gold! })) };
}

const runs: Record<string, unknown>[] = [];
for (const task of TASKS) {
  const train = examples(task, "train", TRAIN);
  const test = examples(task, "test", TEST);
  runs.push({ task, steps: 0, ...accuracy(test) });
  for (const steps of STEP_COUNTS) {
    const started = Date.now();
    const lora = LoraAdapter.init(base.config, LORA, 0);
    const options = { learningRate: 1e-3, maxSteps: steps, batchSize: 8, maxSequenceLength: 200, warmupRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 0 };
    const trainer = new Trainer({ model: base.model, lora, data: train, tokenizer: base.tokenizer, options, stepFn: new SftStep() });
    let loss = 0;
    while (!trainer.done) loss = trainer.runStep().loss;
    trainer.dispose();
    const result = { task, steps, finalLoss: loss, ...accuracy(test, lora), seconds: (Date.now() - started) / 1000 };
    lora.dispose();
    console.log(JSON.stringify(result));
    runs.push(result);
  }
}

mkdirSync("bench/results", { recursive: true });
const out = {
  date: new Date().toISOString(),
  machine: { cpus: os.cpus().length, backend },
  settings: { lora: { r: LORA.r, alpha: LORA.alpha, dropout: LORA.dropout }, learningRate: 1e-3, batchSize: 8, trainExamples: TRAIN, testExamples: TEST, maxNewTokens: MAX_NEW_TOKENS, seed: 0 },
  runs,
};
writeFileSync("bench/results/hard-task.json", JSON.stringify(out, null, 2) + "\n");
console.log(JSON.stringify(runs.map((r) => [r.task, r.steps, r.accuracy])));
