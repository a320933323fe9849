/**
 * Per-call bounds of the suite's requests: how much text, generation and training one call
 * may ask for. Requests over a bound get INVALID_ARGUMENT naming the field and the bound,
 * before any work (text lengths in tokens once the checkpoint's tokenizer is known).
 * Defaults below; a process sets its own from VACCINE_MAX_* (suite/config.ts).
 */
import type { RequestValidator } from "../platform/validate.ts";

export interface CallBounds {
  /** Tokens of one Generate prompt, Moderate pair or Embed text (and never more than the model's positions). */
  maxPromptTokens: number;
  /** Tokens one Generate answer or scoring answer may produce (max_new_tokens). */
  maxNewTokens: number;
  /** Tokens one Generate call may produce in all: prompts x max_new_tokens. */
  maxGeneratedTokens: number;
  /** Values one Embed response may hold: vectors (texts, or their tokens unpooled) x layers x hidden size. */
  maxEmbedValues: number;
  /** Optimizer steps of one training job (max_steps, or epochs over the dataset). */
  maxSteps: number;
  /** Tokens one training job may process: steps x batch_size x max_sequence_length. */
  maxTrainingTokens: number;
}

export const DEFAULT_BOUNDS: CallBounds = {
  maxPromptTokens: 1024,
  maxNewTokens: 1024,
  maxGeneratedTokens: 65_536,
  maxEmbedValues: 4_194_304,
  maxSteps: 1_000_000,
  maxTrainingTokens: 1_000_000_000,
};

/**
 * Characters a text may have per allowed token before it is tokenized at all: no tokenizer
 * of natural text averages 32 characters a token, and tokenizing megabytes costs seconds.
 */
export const CHARS_PER_TOKEN_BOUND = 32;

/** The bounds of a process: its configured ones, or the defaults. */
export function boundsOf(deps: { bounds?: Partial<CallBounds> }): CallBounds {
  return { ...DEFAULT_BOUNDS, ...deps.bounds };
}

/** A text before tokenization: at most CHARS_PER_TOKEN_BOUND characters per allowed token. */
export function checkTextLength(v: RequestValidator, field: string, text: string, bounds: CallBounds): void {
  const max = bounds.maxPromptTokens * CHARS_PER_TOKEN_BOUND;
  if (text.length > max) {
    v.fail(field, `is ${text.length} characters long; the bound is ${max} characters (max_prompt_tokens ${bounds.maxPromptTokens} x ${CHARS_PER_TOKEN_BOUND})`);
  }
}

/** A tokenized text against max_prompt_tokens and the model's own limit. */
export function checkTokenCount(v: RequestValidator, field: string, tokens: number, bounds: CallBounds, model: { limit: number; what: string }): void {
  if (tokens > bounds.maxPromptTokens) v.fail(field, `is ${tokens} tokens long; the bound is max_prompt_tokens, ${bounds.maxPromptTokens}`);
  else if (tokens > model.limit) v.fail(field, `is ${tokens} tokens long; ${model.what} is ${model.limit}`);
}
