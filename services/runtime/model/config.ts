/**
 * The Llama model configuration, read from a Hugging Face config.json object and
 * validated up front so a bad checkpoint fails with the field at fault, not with a
 * shape error deep inside a matMul. Sizes are bounded: a config is read before the
 * weights it describes, and a hostile one must not make the loader allocate or loop
 * over what no real model needs.
 */
import { CheckpointFormatError } from "../format-error.ts";

/** Upper bounds of the size fields, well above any released Llama-family model. */
const LLAMA_LIMITS = {
  vocab_size: 2 ** 21,
  hidden_size: 65_536,
  intermediate_size: 262_144,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 1024,
  max_position_embeddings: 2 ** 24,
} as const;
export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** hidden_size / num_attention_heads unless config.json sets head_dim. */
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  bosTokenId?: number;
  eosTokenId?: number | number[];
  padTokenId?: number;
}

/** Parses and validates a Hugging Face Llama config.json object. */
export function parseLlamaConfig(json: unknown): LlamaConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new CheckpointFormatError("expected a JSON object");
  }
  const raw = json as Record<string, unknown>;
  checkSupported(raw);
  const numAttentionHeads = positiveInt(raw, "num_attention_heads");
  const hiddenSize = positiveInt(raw, "hidden_size");
  const numKeyValueHeads =
    raw.num_key_value_heads === undefined || raw.num_key_value_heads === null
      ? numAttentionHeads
      : positiveInt(raw, "num_key_value_heads");
  const config: LlamaConfig = {
    vocabSize: positiveInt(raw, "vocab_size"),
    hiddenSize,
    intermediateSize: positiveInt(raw, "intermediate_size"),
    numHiddenLayers: positiveInt(raw, "num_hidden_layers"),
    numAttentionHeads,
    numKeyValueHeads,
    headDim:
      raw.head_dim === undefined || raw.head_dim === null
        ? hiddenSize / numAttentionHeads
        : positiveInt(raw, "head_dim"),
    rmsNormEps: positiveNumber(raw, "rms_norm_eps", 1e-6, 1),
    ropeTheta: positiveNumber(raw, "rope_theta", 10000),
    maxPositionEmbeddings: positiveInt(raw, "max_position_embeddings"),
    tieWordEmbeddings: optionalBool(raw, "tie_word_embeddings", false),
  };
  const bos = optionalTokenId(raw, "bos_token_id", config.vocabSize);
  if (bos !== undefined) config.bosTokenId = bos;
  const pad = optionalTokenId(raw, "pad_token_id", config.vocabSize);
  if (pad !== undefined) config.padTokenId = pad;
  // Llama 3 configs list several end-of-sequence ids.
  const eos = raw.eos_token_id;
  if (Array.isArray(eos)) {
    if (eos.length === 0 || eos.length > 64) throw new CheckpointFormatError(`eos_token_id must list 1 to 64 token ids, got ${eos.length}`);
    config.eosTokenId = eos.map((_, i) => tokenId(eos[i], `eos_token_id[${i}]`, config.vocabSize));
  } else if (eos !== undefined && eos !== null) {
    config.eosTokenId = tokenId(eos, "eos_token_id", config.vocabSize);
  }
  validateLlamaConfig(config);
  return config;
}

/** Checks the relations between fields; throws naming the field and the reason. */
export function validateLlamaConfig(c: LlamaConfig): void {
  if (!Number.isInteger(c.headDim)) {
    throw new CheckpointFormatError(
      `hidden_size ${c.hiddenSize} is not divisible by num_attention_heads ${c.numAttentionHeads}`,
    );
  }
  if (c.headDim % 2 !== 0) {
    throw new CheckpointFormatError(`head dimension ${c.headDim} must be even for rotary embeddings`);
  }
  if (c.numAttentionHeads % c.numKeyValueHeads !== 0) {
    throw new CheckpointFormatError(
      `num_attention_heads ${c.numAttentionHeads} is not divisible by num_key_value_heads ${c.numKeyValueHeads}`,
    );
  }
}

/** Fields whose other values change the computation this model implements: refused, not ignored. */
function checkSupported(raw: Record<string, unknown>): void {
  const fail = (message: string): never => {
    throw new CheckpointFormatError(message);
  };
  if (raw.model_type !== undefined && raw.model_type !== "llama") fail(`model_type ${JSON.stringify(raw.model_type)} is not supported (only "llama")`);
  if (raw.hidden_act !== undefined && raw.hidden_act !== "silu") fail(`hidden_act ${JSON.stringify(raw.hidden_act)} is not supported (only "silu")`);
  if (raw.rope_scaling !== undefined && raw.rope_scaling !== null) fail("rope_scaling is not supported (only plain rotary positions)");
  for (const field of ["attention_bias", "mlp_bias"]) {
    if (raw[field] !== undefined && raw[field] !== false) fail(`${field} ${JSON.stringify(raw[field])} is not supported (no biases)`);
  }
}

/** The config.json object (Hugging Face field names) for a config. */
export function toHfConfigJson(c: LlamaConfig): Record<string, unknown> {
  const json: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    num_key_value_heads: c.numKeyValueHeads,
    head_dim: c.headDim,
    hidden_act: "silu",
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    max_position_embeddings: c.maxPositionEmbeddings,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: "float32",
  };
  if (c.bosTokenId !== undefined) json.bos_token_id = c.bosTokenId;
  if (c.eosTokenId !== undefined) json.eos_token_id = c.eosTokenId;
  if (c.padTokenId !== undefined) json.pad_token_id = c.padTokenId;
  return json;
}

function positiveInt(raw: Record<string, unknown>, field: keyof typeof LLAMA_LIMITS): number {
  const v = raw[field];
  if (v === undefined || v === null) throw new CheckpointFormatError(`${field} is missing`);
  const max = LLAMA_LIMITS[field];
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0 || v > max) {
    throw new CheckpointFormatError(`${field} must be an integer in [1, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function positiveNumber(raw: Record<string, unknown>, field: string, fallback: number, below = Infinity): number {
  const v = raw[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || v >= below) {
    throw new CheckpointFormatError(`${field} must be a positive number${below < Infinity ? ` below ${below}` : ""}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function optionalBool(raw: Record<string, unknown>, field: string, fallback: boolean): boolean {
  const v = raw[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "boolean") throw new CheckpointFormatError(`${field} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

function optionalTokenId(raw: Record<string, unknown>, field: string, vocabSize: number): number | undefined {
  const v = raw[field];
  return v === undefined || v === null ? undefined : tokenId(v, field, vocabSize);
}

function tokenId(v: unknown, field: string, vocabSize: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= vocabSize) {
    throw new CheckpointFormatError(`${field} must be a token id in [0, ${vocabSize}), got ${JSON.stringify(v)}`);
  }
  return v;
}
