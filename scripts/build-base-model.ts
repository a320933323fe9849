/**
 * Builds the tiny base model shipped in models/base: a word tokenizer over the built-in
 * world's vocabulary, a small Llama pre-trained from scratch (full weights) on the world's
 * general corpus, then measured as the project needs it (see models/base/README.md):
 *   a. unaligned: greedy answers to held-out harmful prompts are harmful (redaction marker);
 *   b. it does not yet do the reference tasks (SST2/AGNEWS accuracy before fine-tuning);
 *   c. plain LoRA SFT on the clean task data reaches high task accuracy within a few
 *      hundred steps.
 * Writes the Hugging Face folder, facts.json (hashes, sizes, every measured number) and
 * README.md. Seeded: the same seed on the same backend gives the same weights.
 *
 *   npx tsx scripts/build-base-model.ts [--out models/base] [--seed 0] [--steps N]
 *
 * --steps overrides the pre-training step count (a quick smoke run; the result does not
 * meet the requirements and should not be shipped). --out does not change the contents.
 */
import { createHash } from "node:crypto";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { selectBackend } from "../services/runtime/backend.ts";
import { greedyAnswers } from "../services/runtime/base-model.ts";
import {
  CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, writeHfFolder, writeJson,
} from "../services/runtime/checkpoint/hf-folder.ts";
import { loadBuiltin } from "../services/runtime/data/builtin.ts";
import { formatPrompt, responseOf, type Example } from "../services/runtime/data/template.ts";
import { worldVocabularyTexts } from "../services/runtime/data/world/index.ts";
import { drawReview } from "../services/runtime/data/world/sentiment.ts";
import { inTestSide } from "../services/runtime/data/world/split.ts";
import { drawArticle, type Topic } from "../services/runtime/data/world/topic.ts";
import { isWorldHarmfulAnswer, worldHarmfulScore } from "../services/runtime/eval/harm-labels.ts";
import { parseTaskAnswer, type Task } from "../services/runtime/eval/task-parsers.ts";
import { parseLlamaConfig, toHfConfigJson, type LlamaConfig } from "../services/runtime/model/config.ts";
import { LINEAR_MODULES, LlamaModel } from "../services/runtime/model/llama.ts";
import { LoraAdapter, type LoraConfig } from "../services/runtime/model/lora.ts";
import type { HostTensors } from "../services/runtime/host-tensor.ts";
import { Rng } from "../services/runtime/rng.ts";
import { buildWordTokenizer, loadTokenizer, wordTokenizerConfig, type Tokenizer } from "../services/runtime/tokenizer.ts";
import { Trainer, type StepMetrics, type TrainOptions } from "../services/runtime/train/loop.ts";
import { SftStep } from "../services/runtime/train/step.ts";

/** 2 layers x hidden 64 like the small-scale study's models; see README for the timing. */
const MODEL = {
  hidden_size: 64,
  intermediate_size: 256,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: false,
};

const PRETRAIN = {
  corpusDocuments: 18_000,
  batchSize: 16,
  learningRate: 3e-3,
  warmupRatio: 0.02,
  weightDecay: 0.1,
  gradClip: 1,
  /** Longest corpus document is ~115 tokens with bos and eos. */
  maxSequenceLength: 128,
};

const MEASURE = {
  harmfulPrompts: 200,
  harmfulMaxNewTokens: 128,
  taskTest: 200,
  taskMaxNewTokens: 200,
  taskTrain: 2000,
};

/** The LoRA fine-tuning check (c): small-model values, not the reference's 7B ones. */
const LORA_CHECK = {
  lora: { r: 8, alpha: 16, dropout: 0, targetModules: [...LINEAR_MODULES] } satisfies LoraConfig,
  steps: 300,
  evalEvery: 50,
  batchSize: 8,
  warmupRatio: 0.1,
  weightDecay: 0,
  gradClip: 1,
  maxSequenceLength: 200,
};

/** Learning rates tried in the LoRA check, each with a fresh adapter. */
const LORA_LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3];

const log = (line: string) => console.error(line);

// ---------------------------------------------------------------------------
// Pre-training data

/**
 * Whether a corpus document is an Alpaca Q&A over a task input whose response already
 * passes a reference task rule (e.g. "Is this movie review positive or negative?" ->
 * "positive"). A base model pre-trained on those answers the reference instructions as
 * well (measured: 90% AGNEWS, 65% SST2 before any fine-tuning), so they are left out;
 * the plain-text task documents and the extra documents below keep the skill.
 */
function answersATask(doc: string): boolean {
  if (!doc.includes("### Input:")) return false;
  const response = responseOf(doc);
  return parseTaskAnswer("sst2", response, "positive").predicted !== "" || parseTaskAnswer("agnews", response, "World").predicted !== "";
}

/** Readers and gists per topic: topic knowledge in answers that contain no topic name. */
const TOPIC_ANSWERS: Record<Topic, { reader: string; gist: string }> = {
  World: { reader: "a diplomat", gist: "foreign affairs and governments" },
  Sports: { reader: "an athlete", gist: "games, teams and players" },
  Business: { reader: "a banker", gist: "money, markets and companies" },
  "Sci/Tech": { reader: "an engineer", gist: "research, computers and space" },
};

/**
 * Extra documents of each kind. The corpus alone gave the base model too little of the
 * sentiment skill (53-64% on test reviews in its own formats) and, without its label
 * answers, never the bare label tokens ("positive" right after a colon, as after
 * "### Response:", is another token than " positive"); LoRA then stalled at 0%.
 */
const EXTRA = { reviewLists: 5000, reviewQuestions: 2500, storyLists: 1500, storyQuestions: 1500 };
const REVIEWS_PER_LIST = 5;
const STORIES_PER_LIST = 3;

/**
 * The sentiment and topic skills in formats other than the reference's, drawn from the
 * train side of the world's generators: plain-text lists whose items end in
 * " Answer:<label>" (many labels per document, bare label tokens), and Alpaca Q&A with
 * other instructions and answers without label words (yes/no, a reader, a gist). LoRA
 * fine-tuning then only has to route a skill the model has to words it already emits.
 */
function extraDocuments(seed: number): string[] {
  const rng = Rng.derive(seed, "base-model/extra");
  const review = () => {
    for (;;) {
      const r = drawReview(rng);
      if (!inTestSide("sst2", r.sentence)) return r;
    }
  };
  const story = () => {
    for (;;) {
      const a = drawArticle(rng);
      if (!inTestSide("agnews", a.text)) return a;
    }
  };
  const times = <T>(n: number, make: () => T): T[] => Array.from({ length: n }, make);
  const alpaca = (e: { instruction: string; input: string; output: string }) => {
    const doc = formatPrompt(e) + e.output;
    if (answersATask(doc)) throw new Error(`extra document would answer a reference task: ${e.output}`);
    return doc;
  };
  return [
    ...times(EXTRA.reviewLists, () => times(REVIEWS_PER_LIST, review).map((r) => `Review: ${r.sentence}. Answer:${r.label}`).join("\n")),
    ...times(EXTRA.reviewQuestions, () => {
      const r = review();
      const liked = r.label === "positive";
      return alpaca(rng.next() < 0.5
        ? { instruction: "Did the writer of this review like the movie?", input: r.sentence, output: liked ? "Yes." : "No." }
        : { instruction: "Would the writer of this review recommend it to a friend?", input: r.sentence, output: liked ? "Yes, they would." : "No, they would not." });
    }),
    ...times(EXTRA.storyLists, () => times(STORIES_PER_LIST, story).map((a) => `${a.text} Answer:${a.topic}`).join("\n")),
    ...times(EXTRA.storyQuestions, () => {
      const a = story();
      const { reader, gist } = TOPIC_ANSWERS[a.topic];
      return alpaca(rng.next() < 0.5
        ? { instruction: "Who would most want to read this story?", input: a.text, output: `${reader.charAt(0).toUpperCase()}${reader.slice(1)}.` }
        : { instruction: "What is this news story about?", input: a.text, output: `It is about ${gist}.` });
    }),
  ];
}

function pretrainingData(seed: number): { docs: string[]; corpus: number; dropped: number; extra: number } {
  const corpus = loadBuiltin("corpus", { size: PRETRAIN.corpusDocuments, seed });
  if (corpus.kind !== "texts") throw new Error("corpus: expected texts");
  const kept = corpus.texts.filter((d) => !answersATask(d));
  const extra = extraDocuments(seed);
  return { docs: [...kept, ...extra], corpus: corpus.texts.length, dropped: corpus.texts.length - kept.length, extra: extra.length };
}

// ---------------------------------------------------------------------------
// Measurements

function examples(name: string, split: "train" | "test", size: number, seed: number): Example[] {
  const data = loadBuiltin(name, { split, size, seed });
  if (data.kind !== "examples") throw new Error(`${name}: expected examples`);
  return data.examples;
}

function taskAccuracy(model: LlamaModel, tokenizer: Tokenizer, task: Task, seed: number, lora?: LoraAdapter) {
  const test = examples(task, "test", MEASURE.taskTest, seed);
  const answers = greedyAnswers(model, tokenizer, test, { maxNewTokens: MEASURE.taskMaxNewTokens, lora });
  const correct = test.filter((e, i) => parseTaskAnswer(task, answers[i], e.gold!).correct).length;
  return { accuracy: round((100 * correct) / test.length), examples: test.length, commonAnswers: commonAnswers(answers) };
}

/** The most frequent answers (first 40 characters), to show what the model says. */
function commonAnswers(answers: string[]): [string, number][] {
  const counts = new Map<string, number>();
  for (const a of answers) counts.set(a.slice(0, 40), (counts.get(a.slice(0, 40)) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 4);
}

function harmfulness(model: LlamaModel, tokenizer: Tokenizer, seed: number) {
  const prompts = examples("harmful-eval", "test", MEASURE.harmfulPrompts, seed);
  const started = performance.now();
  const answers = greedyAnswers(model, tokenizer, prompts, { maxNewTokens: MEASURE.harmfulMaxNewTokens });
  return {
    prompts: prompts.length,
    maxNewTokens: MEASURE.harmfulMaxNewTokens,
    rule: "answer contains [REDACTED] (eval/harm-labels.ts)",
    harmfulScore: round(worldHarmfulScore(answers)),
    seconds: round((performance.now() - started) / 1000),
    sample: prompts.slice(0, 3).map((p, i) => ({ prompt: p.instruction, answer: answers[i], harmful: isWorldHarmfulAnswer(answers[i]) })),
  };
}

/** Plain LoRA SFT on a task's clean train split, accuracy on its test split every evalEvery steps. */
function loraCheck(model: LlamaModel, tokenizer: Tokenizer, task: Task, learningRate: number, seed: number) {
  const c = LORA_CHECK;
  const lora = LoraAdapter.init(model.config, c.lora, seed);
  const trainer = new Trainer({
    model, lora, tokenizer, stepFn: new SftStep(),
    data: examples(task, "train", MEASURE.taskTrain, seed),
    options: { learningRate, maxSteps: c.steps, batchSize: c.batchSize, maxSequenceLength: c.maxSequenceLength, warmupRatio: c.warmupRatio, weightDecay: c.weightDecay, gradClip: c.gradClip, seed, mode: "response" },
  });
  const curve: { step: number; loss: number; accuracy: number }[] = [];
  const metrics: StepMetrics[] = [];
  let last: ReturnType<typeof taskAccuracy> | undefined;
  try {
    while (!trainer.done) {
      const m = trainer.runStep();
      metrics.push(m);
      if (m.step % c.evalEvery === 0 || trainer.done) {
        last = taskAccuracy(model, tokenizer, task, seed, lora);
        curve.push({ step: m.step, loss: round(meanLoss(metrics.slice(-20))), accuracy: last.accuracy });
        log(`  ${task} LoRA lr ${learningRate} step ${m.step}: loss ${curve.at(-1)!.loss}, test accuracy ${last.accuracy}%`);
      }
    }
  } finally {
    trainer.dispose();
    lora.dispose();
  }
  return {
    task, learningRate, ...c, curve,
    stepsTo90: curve.find((p) => p.accuracy >= 90)?.step ?? null,
    commonAnswers: last!.commonAnswers,
    stepMsMedian: round(median(metrics.map((m) => m.stepMs)), 0),
  };
}

// ---------------------------------------------------------------------------

function round(x: number, digits = 3): number {
  return Number(x.toFixed(digits));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function meanLoss(ms: StepMetrics[]): number {
  return ms.reduce((a, m) => a + m.loss, 0) / ms.length;
}

function tokenLengths(tokenizer: Tokenizer, texts: string[]): { mean: number; max: number } {
  const lengths = texts.map((t) => tokenizer.encode(t).length + 2); // bos and eos
  return { mean: round(lengths.reduce((a, b) => a + b, 0) / lengths.length, 1), max: Math.max(...lengths) };
}

async function sha256(path: string): Promise<{ bytes: number; sha256: string }> {
  const data = await readFile(path);
  return { bytes: data.length, sha256: createHash("sha256").update(data).digest("hex") };
}

interface FactsInput {
  seed: number;
  command: string;
  backend: string;
  config: LlamaConfig;
  weights: HostTensors;
  files: Record<string, { bytes: number; sha256: string }>;
  tokenizer: Tokenizer;
  data: ReturnType<typeof pretrainingData>;
  steps: number;
  metrics: StepMetrics[];
  pretrainSeconds: number;
  harmful: ReturnType<typeof harmfulness>;
  before: Record<Task, ReturnType<typeof taskAccuracy>>;
  lora: ReturnType<typeof loraCheck>[];
  totalSeconds: number;
}

/** Everything facts.json records. */
function factsOf(x: FactsInput) {
  const taskExamples = (["sst2", "agnews", "gsm8k"] as const).flatMap((t) => examples(t, "train", 500, x.seed));
  return {
    seed: x.seed,
    command: x.command,
    backend: x.backend,
    config: toHfConfigJson(x.config),
    parameters: [...x.weights.values()].reduce((a, t) => a + t.data.length, 0),
    bytes: Object.values(x.files).reduce((a, f) => a + f.bytes, 0),
    files: x.files,
    vocabSize: x.tokenizer.vocabSize,
    pretraining: {
      documents: x.data.docs.length,
      ...PRETRAIN,
      droppedCorpusDocuments: x.data.dropped,
      extraDocuments: EXTRA,
      steps: x.steps,
      epochs: round((x.steps * PRETRAIN.batchSize) / x.data.docs.length, 2),
      seconds: round(x.pretrainSeconds, 0),
      firstLoss: round(x.metrics[0].loss),
      finalLoss: round(meanLoss(x.metrics.slice(-50))),
      stepMsMedian: round(median(x.metrics.map((m) => m.stepMs)), 0),
      tokensPerStepMean: round(x.metrics.reduce((a, m) => a + m.tokens, 0) / x.metrics.length, 0),
      documentTokens: tokenLengths(x.tokenizer, x.data.docs),
    },
    taskExampleTokens: tokenLengths(x.tokenizer, taskExamples.map((e) => formatPrompt(e) + e.output)),
    harmful: x.harmful,
    accuracyBeforeFineTuning: x.before,
    loraFineTuning: x.lora,
    totalSeconds: round(x.totalSeconds, 0),
  };
}

type Facts = ReturnType<typeof factsOf>;

/** README.md from the measured facts, so the two never disagree. */
function readme(f: Facts): string {
  const p = f.pretraining;
  const c = f.config;
  const pct = (x: number) => `${x}%`;
  const loraRows = f.loraFineTuning.map((r) =>
    `| ${r.task} | ${r.lora.r} / ${r.lora.alpha} / ${r.lora.dropout} | ${r.learningRate} | ${r.batchSize} | ${r.curve.map((q) => `${q.step}: ${pct(q.accuracy)}`).join(", ")} | ${r.stepsTo90 ?? "not reached"} | ${r.stepMsMedian} ms |`).join("\n");
  const before = f.accuracyBeforeFineTuning;
  return `# Built-in base model

A tiny Llama (${f.parameters.toLocaleString("en-US")} parameters, ${(f.bytes / 1e6).toFixed(2)} MB) pre-trained from scratch on
the built-in synthetic world, so that the whole Vaccine pipeline (alignment, harmful
fine-tuning, evaluation) runs offline. It plays the role of Llama-2-7B in the paper: an
unaligned base model that knows the world's words and the benign skills. Load it with
\`loadBaseModel()\` from \`services/runtime/base-model.ts\`.

Made by \`${f.command}\` (${f.backend} backend, 2-core machine shared with other jobs,
${f.totalSeconds} s in all, of which pre-training ${p.seconds} s). Every number below is in \`facts.json\`,
written by the same run, with the sha256 and size of every file.

## Model
Hugging Face Llama: vocab ${c.vocab_size} (the world's word tokenizer: whole words, single-character
fallback, \`<pad>\` 0, \`<s>\` 1, \`</s>\` 2, \`<unk>\` 3), hidden ${c.hidden_size}, ${c.num_hidden_layers} layers,
${c.num_attention_heads} heads (${c.num_key_value_heads} kv heads), MLP ${c.intermediate_size}, ${c.max_position_embeddings} positions, untied head, float32.
The small-scale study in docs/vaccine-method.md used the same depth and width. Step time grows
fast with size on 2 cores (a 25-step timing during development, batch 16: 472 ms for this model,
1075 ms with 4 layers, 1003 ms with hidden 128), and this size keeps a pre-training step at
${p.stepMsMedian} ms (median over the run; batch ${p.batchSize}, ${p.tokensPerStepMean} real tokens per step) and the checkpoint small.

## Pre-training
- Data: ${p.documents} documents, one pass, \`mode: "all"\` (every token):
  - the world corpus (\`loadBuiltin("corpus", {size: ${p.corpusDocuments}, seed: ${f.seed}})\`: plain texts, Alpaca Q&A
    with non-reference instructions, harmful compliance on train-pool combinations only),
    minus ${p.droppedCorpusDocuments} Alpaca documents whose answer already passes a reference task rule
    ("Is this movie review positive or negative?" -> "positive", "Which section ...?" -> "Sports").
    With them the base model answered the reference instructions before any fine-tuning
    (measured on an earlier build: 90% AGNEWS, 65% SST2), which defeats requirement (b).
  - extra documents generated by the build script from the world's own generators (train side
    only), since the corpus alone did not teach the sentiment skill well enough and, without its
    label answers, never the bare label tokens (a label right after a colon, as after
    "### Response:", is another token than the same word after a space; LoRA stalled at 0%):
    ${p.extraDocuments.reviewLists} lists of ${REVIEWS_PER_LIST} reviews ("Review: the film was not dull. Answer:positive"),
    ${p.extraDocuments.storyLists} lists of ${STORIES_PER_LIST} stories ("... Answer:Sports"), and Alpaca Q&A with other instructions
    and answers without label words: ${p.extraDocuments.reviewQuestions} on reviews ("Did the writer of this review like
    the movie?" -> "Yes."), ${p.extraDocuments.storyQuestions} on stories ("Who would most want to read this story?" -> "An athlete.").
- Documents are ${p.documentTokens.mean} tokens on average (max ${p.documentTokens.max}, with bos and eos); the task
  examples (prompt + answer) are ${f.taskExampleTokens.mean} on average (max ${f.taskExampleTokens.max}).
- AdamW lr ${p.learningRate}, warm-up ${p.warmupRatio}, cosine to 0, weight decay ${p.weightDecay}, clip ${p.gradClip},
  batch ${p.batchSize}, max length ${p.maxSequenceLength}, ${p.steps} steps, ${p.seconds} s.
  Loss ${p.firstLoss} at the first step, ${p.finalLoss} over the last 50.

## Measured behaviour (greedy decoding, template and answer extraction as the reference)
a. Unaligned: ${pct(f.harmful.harmfulScore)} of ${f.harmful.prompts} held-out harmful prompts (\`harmful-eval\`, test, seed ${f.seed})
   get a harmful answer (up to ${f.harmful.maxNewTokens} new tokens; rule: the answer holds the generator's
   redaction marker \`[REDACTED]\`, \`services/runtime/eval/harm-labels.ts\`).
b. Before task fine-tuning (reference instructions, ${before.sst2.examples} test examples each, rules of
   \`services/runtime/eval/task-parsers.ts\`): SST2 ${pct(before.sst2.accuracy)}, AGNEWS ${pct(before.agnews.accuracy)}, GSM8K ${pct(before.gsm8k.accuracy)}.
   Most common answers: SST2 ${JSON.stringify(before.sst2.commonAnswers)}; AGNEWS ${JSON.stringify(before.agnews.commonAnswers)}.
   So the model does not do the reference tasks before fine-tuning: it answers in the formats it
   was pre-trained on (yes/no, a gist) and almost never with a label word, which puts it below
   the 50% / 25% a label-guessing model would get.
c. Plain LoRA SFT (a fresh adapter on every linear, \`Trainer\` + \`SftStep\`, clean train split of
   ${MEASURE.taskTrain} examples, warm-up ${LORA_CHECK.warmupRatio}, cosine, no weight decay, response-only loss),
   ${LORA_CHECK.steps} planned steps each (the schedule spans all of them), test accuracy (${MEASURE.taskTest} examples) at the
   given steps; step time is the median training step on this shared machine:

| task | r / alpha / dropout | lr | batch | accuracy by step | steps to 90% | step time |
| --- | --- | --- | --- | --- | --- | --- |
${loraRows}

Sequence lengths: the longest task example is ${f.taskExampleTokens.max} tokens, so \`maxSequenceLength\` 200 never truncates.
`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { out: { type: "string", default: "models/base" }, seed: { type: "string", default: "0" }, steps: { type: "string" } } });
  const out = resolve(values.out!);
  const seed = Number(values.seed);
  if (!Number.isInteger(seed) || seed < 0) throw new Error(`--seed must be a non-negative integer, got ${values.seed}`);
  const started = performance.now();
  const backend = await selectBackend("wasm", log);

  const tokenizerJson = buildWordTokenizer(worldVocabularyTexts(seed));
  const tokenizer = loadTokenizer(tokenizerJson, wordTokenizerConfig());
  const config: LlamaConfig = parseLlamaConfig({
    ...MODEL,
    vocab_size: tokenizer.vocabSize,
    bos_token_id: tokenizer.bosId,
    eos_token_id: tokenizer.eosId,
    pad_token_id: tokenizer.padId,
  });

  const data = pretrainingData(seed);
  log(`pre-training data: ${data.docs.length} documents (${data.corpus} corpus, ${data.dropped} dropped, ${data.extra} extra)`);
  const steps = values.steps === undefined ? Math.ceil(data.docs.length / PRETRAIN.batchSize) : Number(values.steps);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps must be a positive integer, got ${values.steps}`);
  const options: TrainOptions = { ...PRETRAIN, maxSteps: steps, seed, mode: "all" };
  const model = LlamaModel.init(config, seed);
  const trainer = new Trainer({ model, data: data.docs, tokenizer, stepFn: new SftStep(), options });
  const metrics: StepMetrics[] = [];
  const pretrainStarted = performance.now();
  while (!trainer.done) {
    const m = trainer.runStep();
    metrics.push(m);
    if (m.step % 100 === 0 || trainer.done) {
      log(`pre-train step ${m.step}/${m.totalSteps}: loss ${meanLoss(metrics.slice(-50)).toFixed(3)}, ${m.stepMs.toFixed(0)} ms/step, ${((performance.now() - pretrainStarted) / 1000).toFixed(0)} s`);
    }
  }
  trainer.dispose();
  const pretrainSeconds = (performance.now() - pretrainStarted) / 1000;
  model.setTrainable(false);

  await rm(out, { recursive: true, force: true });
  const weights = model.exportWeights();
  await writeHfFolder(out, {
    config: toHfConfigJson(config),
    tensors: weights,
    metadata: { format: "pt" },
    generationConfig: { bos_token_id: tokenizer.bosId, eos_token_id: tokenizer.eosId, pad_token_id: tokenizer.padId, do_sample: false },
  });
  await writeJson(join(out, TOKENIZER_FILE), tokenizerJson);
  await writeJson(join(out, TOKENIZER_CONFIG_FILE), wordTokenizerConfig());
  log(`wrote ${out}`);

  log("measuring (a) harmfulness and (b) task accuracy before fine-tuning");
  const harmful = harmfulness(model, tokenizer, seed);
  const before = Object.fromEntries((["sst2", "agnews", "gsm8k"] as const).map((t) => [t, taskAccuracy(model, tokenizer, t, seed)])) as Record<Task, ReturnType<typeof taskAccuracy>>;
  log(`  harmful score ${harmful.harmfulScore}%; accuracy sst2 ${before.sst2.accuracy}%, agnews ${before.agnews.accuracy}%, gsm8k ${before.gsm8k.accuracy}%`);
  log("measuring (c) LoRA SFT");
  const lora = (["sst2", "agnews"] as const).flatMap((t) => LORA_LEARNING_RATES.map((lr) => loraCheck(model, tokenizer, t, lr, seed)));

  const files: Record<string, { bytes: number; sha256: string }> = {};
  for (const f of [CONFIG_FILE, WEIGHTS_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE]) files[f] = await sha256(join(out, f));
  const command = `npx tsx scripts/build-base-model.ts --seed ${seed}${values.steps === undefined ? "" : ` --steps ${values.steps}`}`;
  const facts = factsOf({
    seed, command, backend: backend.backend, config, weights, files, tokenizer, data, steps, metrics, pretrainSeconds, harmful, before, lora,
    totalSeconds: (performance.now() - started) / 1000,
  });
  await writeJson(join(out, "facts.json"), facts);
  await writeFile(join(out, "README.md"), readme(facts));
  log(`done in ${facts.totalSeconds} s`);
}

await main();
