/**
 * The moderation classifier the harmful score relies on (docs/method.md#harmful-score):
 * a Hugging Face LlamaForSequenceClassification checkpoint. A Llama trunk
 * reads one (prompt, answer) pair formatted as one text, the hidden state of its last
 * real token goes through `score.weight` [num_labels, hidden] (no bias), and each label
 * (a harm category) gets its own sigmoid (problem_type "multi_label_classification").
 * A pair is flagged when its highest category probability exceeds the threshold.
 *
 * The checkpoint is an ordinary folder (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json), so Score can be pointed at any folder of that kind; it is
 * validated on load and a wrong one fails with the field at fault.
 *
 * Input text: `input_template` from config.json (a project key; Hugging Face keeps
 * unknown config keys), default "Question: {prompt}\nAnswer: {answer}"; bos first when the
 * tokenizer adds it, no eos (as a Hugging Face tokenizer call would encode it); cut on the
 * right at the model's maximum length, so an over-long answer loses its tail.
 */
import * as tf from "@tensorflow/tfjs";
import { join } from "node:path";
import { readHfFolder, writeHfFolder, writeJson, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE } from "../checkpoint/hf-folder.ts";
import { CheckpointFormatError } from "../format-error.ts";
import type { Example } from "../data/template.ts";
import type { HostTensors } from "../host-tensor.ts";
import { isPlainObject } from "../json.ts";
import { parseLlamaConfig, toHfConfigJson, type LlamaConfig } from "../model/config.ts";
import { LlamaModel, linearT, toHost } from "../model/llama.ts";
import { bosPrefix, loadTokenizer, type Tokenizer } from "../tokenizer.ts";

export const MODERATION_ARCHITECTURE = "LlamaForSequenceClassification";
export const MULTI_LABEL = "multi_label_classification";
export const SCORE_WEIGHT = "score.weight";
export const DEFAULT_INPUT_TEMPLATE = "Question: {prompt}\nAnswer: {answer}";
export const DEFAULT_THRESHOLD = 0.5;

/** A checkpoint folder that is not a usable moderation classifier. */
export class ModerationCheckpointError extends CheckpointFormatError {
  override readonly reason: string = "MODERATION_CHECKPOINT_INVALID";
}

export interface ModerationPair {
  prompt: string;
  answer: string;
}

export interface CategoryProbability {
  category: string;
  probability: number;
}

export interface ModerationResult {
  /** One entry per label, in the checkpoint's label order. */
  probabilities: CategoryProbability[];
  /** Whether the highest probability exceeds the threshold. */
  flagged: boolean;
  /** The label with the highest probability (flagged or not). */
  topCategory: string;
  maxProbability: number;
}

export interface ModerationConfig {
  /** The trunk's config, with tied embeddings (see parseModerationConfig). */
  llama: LlamaConfig;
  /** Label names by id (id2label). */
  labels: string[];
  inputTemplate: string;
}

/** The pair of a labelled example: the prompt is the instruction, then the input if any. */
export function pairOfExample(e: Pick<Example, "instruction" | "input" | "output">): ModerationPair {
  return { prompt: e.input ? `${e.instruction}\n\n${e.input}` : e.instruction, answer: e.output };
}

export function formatPair(pair: ModerationPair, template = DEFAULT_INPUT_TEMPLATE): string {
  // A function replacer, so "$&" or "{answer}" inside the prompt stays literal.
  return template.replace(/\{prompt\}|\{answer\}/g, (slot) => (slot === "{prompt}" ? pair.prompt : pair.answer));
}

/**
 * Validates a moderation config.json object: the architecture, the multi-label problem
 * type, labels (id2label with ids 0..n-1, consistent with num_labels and label2id), the
 * input template and the Llama fields.
 */
export function parseModerationConfig(json: Record<string, unknown>): ModerationConfig {
  const fail = (msg: string): never => {
    throw new ModerationCheckpointError(`moderation config.json: ${msg}`);
  };
  const arch = json.architectures;
  if (!Array.isArray(arch) || !arch.includes(MODERATION_ARCHITECTURE)) {
    fail(`architectures is ${JSON.stringify(arch ?? null)}, expected ["${MODERATION_ARCHITECTURE}"] (a classifier with a score head, not a language model)`);
  }
  if (json.model_type !== undefined && json.model_type !== "llama") fail(`model_type is ${JSON.stringify(json.model_type)}, expected "llama"`);
  if (json.problem_type !== MULTI_LABEL) {
    fail(`problem_type is ${JSON.stringify(json.problem_type ?? null)}, expected "${MULTI_LABEL}" (one sigmoid per category)`);
  }
  const id2label = json.id2label;
  if (!isPlainObject(id2label) || Object.keys(id2label).length === 0) fail("id2label is missing or empty");
  const entries = Object.entries(id2label as Record<string, unknown>);
  const labels = entries.map((_, i) => {
    const name = (id2label as Record<string, unknown>)[String(i)];
    if (typeof name !== "string" || name === "") fail(`id2label must map ids 0..${entries.length - 1} to names; "${i}" is ${JSON.stringify(name ?? null)}`);
    return name as string;
  });
  if (new Set(labels).size !== labels.length) fail(`id2label repeats a label: ${JSON.stringify(labels)}`);
  if (json.num_labels !== undefined && json.num_labels !== labels.length) {
    fail(`num_labels is ${JSON.stringify(json.num_labels)} but id2label has ${labels.length} labels`);
  }
  if (json.label2id !== undefined) {
    const l2i = json.label2id;
    if (!isPlainObject(l2i) || Object.keys(l2i).length !== labels.length || labels.some((name, i) => l2i[name] !== i)) {
      fail("label2id is not the inverse of id2label");
    }
  }
  const inputTemplate = json.input_template ?? DEFAULT_INPUT_TEMPLATE;
  if (typeof inputTemplate !== "string" || !inputTemplate.includes("{prompt}") || !inputTemplate.includes("{answer}")) {
    fail(`input_template must be a string holding {prompt} and {answer}, got ${JSON.stringify(inputTemplate)}`);
  }
  let llama: LlamaConfig;
  try {
    llama = parseLlamaConfig(json);
  } catch (err) {
    throw new ModerationCheckpointError(`moderation config.json: ${(err as Error).message}`);
  }
  // The classifier has no LM head: a tied trunk needs no lm_head.weight (the logits it
  // still computes go unused).
  return { llama: { ...llama, tieWordEmbeddings: true }, labels, inputTemplate: inputTemplate as string };
}

/** The config.json object of a moderation checkpoint. */
export function moderationConfigJson(config: ModerationConfig): Record<string, unknown> {
  return {
    ...toHfConfigJson(config.llama),
    architectures: [MODERATION_ARCHITECTURE],
    // Hugging Face's default; the classifier has no LM head to tie.
    tie_word_embeddings: false,
    problem_type: MULTI_LABEL,
    num_labels: config.labels.length,
    id2label: Object.fromEntries(config.labels.map((name, i) => [String(i), name])),
    label2id: Object.fromEntries(config.labels.map((name, i) => [name, i])),
    input_template: config.inputTemplate,
  };
}

/** Padded ids of formatted pairs, plus the index of each row's last real token. */
export interface EncodedPairs {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  lastIndex: Int32Array;
  batch: number;
  seqLen: number;
}

export function encodePairs(pairs: readonly ModerationPair[], tokenizer: Tokenizer, template: string, maxLength: number): EncodedPairs {
  if (pairs.length === 0) throw new RangeError("cannot encode an empty batch");
  const bos = bosPrefix(tokenizer);
  const rows = pairs.map((p) => [...bos, ...tokenizer.encode(formatPair(p, template))].slice(0, maxLength));
  const seqLen = Math.max(1, ...rows.map((r) => r.length));
  const batch = rows.length;
  const inputIds = new Int32Array(batch * seqLen).fill(tokenizer.padId);
  const attentionMask = new Int32Array(batch * seqLen);
  const lastIndex = new Int32Array(batch);
  rows.forEach((ids, b) => {
    inputIds.set(ids, b * seqLen);
    attentionMask.fill(1, b * seqLen, b * seqLen + ids.length);
    lastIndex[b] = Math.max(0, ids.length - 1);
  });
  return { inputIds, attentionMask, lastIndex, batch, seqLen };
}

/**
 * Category logits [B, labels]: the final hidden state at each row's last real token times
 * score^T. The token is picked by a one-hot product, not tf.gather, whose gradient the
 * wasm backend lacks.
 */
export function pairLogits(model: LlamaModel, score: tf.Tensor, enc: EncodedPairs): tf.Tensor2D {
  return tf.tidy(() => {
    const ids = tf.tensor2d(enc.inputIds, [enc.batch, enc.seqLen], "int32");
    const mask = tf.tensor2d(enc.attentionMask, [enc.batch, enc.seqLen], "int32");
    const { hidden } = model.states(ids, mask, { returnHidden: true });
    const pick = tf.oneHot(tf.tensor1d(enc.lastIndex, "int32"), enc.seqLen).toFloat().expandDims(2);
    const pooled = hidden!.mul(pick).sum(1) as tf.Tensor2D;
    return linearT(pooled, score);
  });
}

export interface ClassifyOptions {
  /** Pairs per forward pass (default 32). */
  batchSize?: number;
}

export class ModerationClassifier {
  /** Longest input in tokens: the trunk's position limit, or the tokenizer's if smaller. */
  readonly maxLength: number;

  /** Takes ownership of the model and the score weight (dispose() frees them). */
  constructor(
    readonly config: ModerationConfig,
    readonly model: LlamaModel,
    readonly score: tf.Variable,
    readonly tokenizer: Tokenizer,
    modelMaxLength?: number,
  ) {
    this.maxLength = Math.min(config.llama.maxPositionEmbeddings, modelMaxLength ?? Infinity);
  }

  get labels(): string[] {
    return this.config.labels;
  }

  /** Loads and validates a checkpoint folder (config, weights, tokenizer). */
  static async load(dir: string): Promise<ModerationClassifier> {
    const folder = await readHfFolder(dir);
    const config = parseModerationConfig(folder.config);
    const { llama, labels } = config;
    const fail = (msg: string): never => {
      throw new ModerationCheckpointError(`moderation checkpoint ${dir}: ${msg}`);
    };
    const score = folder.tensors.get(SCORE_WEIGHT);
    if (!score) fail(`${SCORE_WEIGHT} is missing (a Llama classifier's head; is this a language model?)`);
    const [rows, cols] = score!.shape;
    if (score!.shape.length !== 2 || rows !== labels.length || cols !== llama.hiddenSize) {
      fail(`${SCORE_WEIGHT} has shape [${score!.shape.join(", ")}], expected [${labels.length}, ${llama.hiddenSize}] (${labels.length} labels x hidden_size)`);
    }
    if (!folder.tokenizerPath) fail(`${TOKENIZER_FILE} is missing`);
    const tokenizer = loadTokenizer(dir);
    if (tokenizer.vocabSize > llama.vocabSize) fail(`the tokenizer has ${tokenizer.vocabSize} tokens, more than vocab_size ${llama.vocabSize}`);
    const trunk: HostTensors = new Map([...folder.tensors].filter(([name]) => name !== SCORE_WEIGHT));
    let model: LlamaModel;
    try {
      model = LlamaModel.fromWeights(llama, trunk);
    } catch (err) {
      throw new ModerationCheckpointError(`moderation checkpoint ${dir}: ${(err as Error).message}`);
    }
    const maxLen = folder.tokenizerConfig?.model_max_length;
    const weight = tf.tidy(() => tf.variable(tf.tensor2d(score!.data, [rows, cols]), false));
    return new ModerationClassifier(config, model, weight, tokenizer, typeof maxLen === "number" ? maxLen : undefined);
  }

  /** Category probabilities of each pair, flagged when the highest exceeds threshold. */
  classify(pairs: readonly ModerationPair[], threshold = DEFAULT_THRESHOLD, opts: ClassifyOptions = {}): ModerationResult[] {
    if (!(threshold >= 0 && threshold <= 1)) throw new RangeError(`threshold must be in [0, 1], got ${threshold}`);
    const batchSize = opts.batchSize ?? 32;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
    const probs = this.probabilities(pairs, batchSize);
    const n = this.labels.length;
    return pairs.map((_, i) => {
      const row = probs.subarray(i * n, (i + 1) * n);
      let top = 0;
      for (let j = 1; j < n; j++) if (row[j] > row[top]) top = j;
      return {
        probabilities: this.labels.map((category, j) => ({ category, probability: row[j] })),
        flagged: row[top] > threshold,
        topCategory: this.labels[top],
        maxProbability: row[top],
      };
    });
  }

  /**
   * classify() a chunk at a time, handing the event loop back between chunks and stopping
   * with the signal: on a serving thread a large dataset (about 0.5 ms a pair here) must not
   * hold every other call, health checks included, until it is done.
   */
  async classifyInTurns(pairs: readonly ModerationPair[], threshold = DEFAULT_THRESHOLD, signal?: AbortSignal, chunk = 256): Promise<ModerationResult[]> {
    const out: ModerationResult[] = [];
    for (let start = 0; start < pairs.length; start += chunk) {
      signal?.throwIfAborted();
      out.push(...this.classify(pairs.slice(start, start + chunk), threshold));
      await new Promise((resolve) => setImmediate(resolve));
    }
    return out;
  }

  /** Row-major [pairs, labels] sigmoid probabilities. */
  private probabilities(pairs: readonly ModerationPair[], batchSize: number): Float32Array {
    const n = this.labels.length;
    const out = new Float32Array(pairs.length * n);
    // Batches of similar length waste less work on padding; results go back in input order.
    const lengths = pairs.map((p) => formatPair(p, this.config.inputTemplate).length);
    const order = pairs.map((_, i) => i).sort((a, b) => lengths[a] - lengths[b]);
    for (let start = 0; start < order.length; start += batchSize) {
      const idx = order.slice(start, start + batchSize);
      const enc = encodePairs(idx.map((i) => pairs[i]), this.tokenizer, this.config.inputTemplate, this.maxLength);
      const values = tf.tidy(() => tf.sigmoid(pairLogits(this.model, this.score, enc)).dataSync() as Float32Array);
      idx.forEach((i, row) => out.set(values.subarray(row * n, (row + 1) * n), i * n));
    }
    return out;
  }

  /** The weights in Hugging Face naming: the trunk's and score.weight. */
  exportWeights(): HostTensors {
    const out = this.model.exportWeights();
    out.set(SCORE_WEIGHT, toHost(this.score));
    return out;
  }

  dispose(): void {
    this.model.dispose();
    this.score.dispose();
  }
}

/**
 * Writes a moderation checkpoint folder: config.json, model.safetensors and the
 * tokenizer files. Returns the files written, relative to dir.
 */
export async function writeModerationCheckpoint(
  dir: string,
  classifier: ModerationClassifier,
  tokenizerJson: Record<string, unknown>,
  tokenizerConfig: Record<string, unknown>,
): Promise<string[]> {
  const written = await writeHfFolder(dir, {
    config: moderationConfigJson(classifier.config),
    tensors: classifier.exportWeights(),
    metadata: { format: "pt" },
  });
  await writeJson(join(dir, TOKENIZER_FILE), tokenizerJson);
  await writeJson(join(dir, TOKENIZER_CONFIG_FILE), tokenizerConfig);
  return [...written, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE];
}
