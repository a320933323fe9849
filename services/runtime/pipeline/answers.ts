/**
 * Answers to instructions as the reference evaluates them: the Alpaca prompt (bos first
 * when the tokenizer adds it), new tokens until eos or the limit, decoded without special
 * tokens. Only new tokens are decoded, so the text is what follows "### Response:"; the
 * reference takes split("### Response:")[1] of prompt + generation, so a generation that
 * writes the marker again is cut there.
 */
import { formatPrompt, RESPONSE_MARKER } from "../data/template.ts";
import { generate, tokenBudget } from "../model/generate.ts";
import type { LoadedCheckpoint } from "./load.ts";
import { bosPrefix } from "../tokenizer.ts";

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
  const bos = bosPrefix(tokenizer);
  return [...bos, ...tokenizer.encode(formatPrompt(instruction))];
}

export function answer(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  instructions: ReadonlyArray<{ instruction: string; input?: string }>,
  opts: AnswerOptions & { signal?: undefined },
): Answer[];
/**
 * With a signal: the same answers, asynchronously, stopping between tokens once the signal
 * aborts (the promise then rejects with its reason); see generate().
 */
export function answer(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  instructions: ReadonlyArray<{ instruction: string; input?: string }>,
  opts: AnswerOptions & { signal: AbortSignal },
): Promise<Answer[]>;
export function answer(
  loaded: Pick<LoadedCheckpoint, "model" | "adapter" | "tokenizer">,
  instructions: ReadonlyArray<{ instruction: string; input?: string }>,
  { signal, ...opts }: AnswerOptions & { signal?: AbortSignal },
): Answer[] | Promise<Answer[]> {
  const prompts = instructions.map((i) => promptIds(loaded, i));
  const generation = { ...opts, eosTokenId: loaded.tokenizer.eosId, lora: loaded.adapter };
  // generate() drops the stop token: fewer tokens than the prompt's budget (the limit, or the
  // positions left in the model) means eos was produced.
  const answers = (ids: number[][]): Answer[] =>
    ids.map((out, i) => ({
      text: loaded.tokenizer.decode(out).split(RESPONSE_MARKER)[0].trim(),
      tokenCount: out.length,
      finishReason: out.length < tokenBudget(loaded.model, prompts[i].length, opts.maxNewTokens) ? "eos" : "length",
    }));
  if (signal) return generate(loaded.model, prompts, { ...generation, signal }).then(answers);
  return answers(generate(loaded.model, prompts, generation));
}
