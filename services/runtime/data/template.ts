/**
 * The Alpaca prompt template of the Vaccine reference, character for character
 * (docs/method.md#data-template), and the example record type.
 */

/** One supervised example; the optional fields are labels some sources carry. */
export interface Example {
  instruction: string;
  input: string;
  output: string;
  /** Whether the output is a harmful answer (harmful splits, moderation pairs). */
  harmful?: boolean;
  /** Harm category id (harmful examples) or task label (sentiment word, topic name). */
  category?: string;
  /** The gold answer task accuracy compares against (label word, topic, number). */
  gold?: string;
}

export const PROMPT_WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

export const PROMPT_NO_INPUT =
  "Below is an instruction that describes a task. " +
  "Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Response:";

export const RESPONSE_MARKER = "### Response:";

/** The prompt for an example; an empty input selects the variant without "### Input:". */
export function formatPrompt(example: { instruction: string; input?: string }): string {
  const input = example.input ?? "";
  const template = input === "" ? PROMPT_NO_INPUT : PROMPT_WITH_INPUT;
  // One pass with a function replacer: "{input}" or "$&" inside user text stays literal.
  return template.replace(/\{instruction\}|\{input\}/g, (slot) =>
    slot === "{input}" ? input : example.instruction,
  );
}

/**
 * The answer part of a generated text: everything after the first "### Response:",
 * with leading and trailing whitespace trimmed; the whole text (trimmed) when the
 * marker is absent, as when only the new tokens were decoded.
 */
export function responseOf(generatedText: string): string {
  const at = generatedText.indexOf(RESPONSE_MARKER);
  const rest = at < 0 ? generatedText : generatedText.slice(at + RESPONSE_MARKER.length);
  return rest.trim();
}
