/**
 * Answers to instructions as the reference evaluates them: the Alpaca prompt (bos first
 * when the tokenizer adds it), new tokens until eos or the limit, decoded without special
 * tokens. Only new tokens are decoded, so the text is what follows "### Response:"; the
 * reference takes split("### Response:")[1] of prompt + generation, so a generation that
 * writes the marker again is cut there.
 */
import { formatPrompt, RESPONSE_MARKER } from "../data/template.ts";
import { generate } from "../model/generate.ts";
import type { LoadedCheckpoint } from "./load.ts";

export interface AnswerOptions {
  maxNewTokens: number;
  /** 0 or unset: greedy. */
  temperature?: number;
  topP?: number;
  seed?: number;
}

export interface Answer {
  text: string;
  tokenCount: number;
  finishReason: "eos" | "length";
}

/** The prompt's token ids, as training saw them. */
export function promptIds(loaded: Pick<LoadedCheckpoint, "tokenizer">, instruction: { instruction: string; input?: string }): number[] {
  const { tokenizer } = loaded;
  const bos = tokenizer.addBos && tokenizer.bosId !== null ? [tokenizer.bosId] : [];
  return [...bos, ...tokenizer.encode(formatPrompt(instruction))];
}

export function answer(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  instructions: ReadonlyArray<{ instruction: string; input?: string }>,
  opts: AnswerOptions,
): Answer[] {
  const ids = generate(
    loaded.model,
    instructions.map((i) => promptIds(loaded, i)),
    { ...opts, eosTokenId: loaded.tokenizer.eosId, lora: loaded.adapter },
  );
  // generate() drops the stop token: fewer tokens than the limit means eos was produced.
  return ids.map((out) => ({
    text: loaded.tokenizer.decode(out).split(RESPONSE_MARKER)[0].trim(),
    tokenCount: out.length,
    finishReason: out.length < opts.maxNewTokens ? "eos" : "length",
  }));
}
