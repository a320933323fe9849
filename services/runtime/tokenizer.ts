/**
 * Tokenizers from Hugging Face tokenizer.json files (via @huggingface/tokenizers), and
 * the closed-vocabulary word tokenizer of the built-in world.
 *
 * Special tokens: bos/eos/pad come from tokenizer_config.json (bos_token, eos_token,
 * pad_token: a string or {content}), else from the model config's bos_token_id,
 * eos_token_id, pad_token_id. Llama ships no pad token, so pad falls back to eos, as the
 * Hugging Face recipes do; padded positions are masked out, so the id only has to exist.
 * Whether a bos token starts every sequence follows add_bos_token (Llama: true), else
 * whether the tokenizer.json post-processor prepends bos.
 */
import { existsSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { CheckpointFormatError, fileReadError } from "./format-error.ts";
import { isPlainObject, readJsonObject } from "./json.ts";

const TOKENIZER_JSON = "tokenizer.json";
const TOKENIZER_CONFIG_JSON = "tokenizer_config.json";

export interface Tokenizer {
  /** Token ids of text, no special tokens added. */
  encode(text: string): number[];
  /** Text of ids; special tokens dropped unless skipSpecial is false. */
  decode(ids: readonly number[], skipSpecial?: boolean): string;
  bosId: number | null;
  eosId: number;
  padId: number;
  /** Whether sequences start with bos (collation follows this). */
  addBos: boolean;
  vocabSize: number;
  eosToken: string;
}

/** The ids a sequence starts with: [bos] when the tokenizer adds it, else none. */
export function bosPrefix(t: Pick<Tokenizer, "addBos" | "bosId">): number[] {
  return t.addBos && t.bosId !== null ? [t.bosId] : [];
}

type Json = Record<string, unknown>;

/** The token named by a tokenizer_config entry: a string or an AddedToken-like {content}. */
function tokenName(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as Json).content === "string") {
    return (value as Json).content as string;
  }
  return undefined;
}

function postProcessorAddsBos(tokenizerJson: Json, bosToken: string | undefined): boolean {
  const post = tokenizerJson.post_processor as Json | null | undefined;
  if (!post || post.type !== "TemplateProcessing" || !bosToken) return false;
  const single = post.single as Json[] | undefined;
  const first = single?.[0]?.SpecialToken as Json | undefined;
  return first?.id === bosToken;
}

/**
 * Loads a tokenizer. `source` is a tokenizer.json object, a path to one, or a checkpoint
 * folder (then tokenizer_config.json and config.json beside it are read when present and
 * not given). Every failure is a CheckpointFormatError naming the file by its name in
 * the folder.
 */
export function loadTokenizer(source: string | Json, tokenizerConfig?: Json, modelConfig?: Json): Tokenizer {
  let json: Json;
  if (typeof source === "string") {
    let isDir: boolean;
    try {
      isDir = statSync(source).isDirectory();
    } catch (err) {
      throw fileReadError(err, TOKENIZER_JSON);
    }
    json = isDir ? readJsonObject(join(source, TOKENIZER_JSON), TOKENIZER_JSON) : readJsonObject(source, basename(source));
    if (isDir) {
      const tc = join(source, TOKENIZER_CONFIG_JSON);
      const mc = join(source, "config.json");
      tokenizerConfig ??= existsSync(tc) ? readJsonObject(tc, TOKENIZER_CONFIG_JSON) : undefined;
      modelConfig ??= existsSync(mc) ? readJsonObject(mc, "config.json") : undefined;
    }
  } else {
    json = source;
  }
  const tc = tokenizerConfig ?? {};
  const mc = modelConfig ?? {};
  let hf: HfTokenizer;
  try {
    // Exact decoding is ours to decide: the library's default cleanup rewrites " ." to ".".
    hf = new HfTokenizer(json, { ...tc, clean_up_tokenization_spaces: false });
  } catch (err) {
    throw new CheckpointFormatError(`not a tokenizer this runtime can load: ${(err as Error).message}`, TOKENIZER_JSON);
  }

  const idOf = (name: string | undefined): number | undefined =>
    name === undefined ? undefined : hf.token_to_id(name);
  const nameOf = (id: number): string | undefined => hf.id_to_token(id);
  const numberOr = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);

  const bosName = tokenName(tc.bos_token);
  const bosId = idOf(bosName) ?? numberOr(mc.bos_token_id) ?? null;
  const eosId = idOf(tokenName(tc.eos_token)) ?? numberOr(mc.eos_token_id);
  if (eosId === undefined) {
    throw new CheckpointFormatError("names no eos token the tokenizer knows (eos_token here, or eos_token_id in config.json)", TOKENIZER_CONFIG_JSON);
  }
  const padId = idOf(tokenName(tc.pad_token)) ?? numberOr(mc.pad_token_id) ?? eosId;
  const bosToken = bosId === null ? undefined : nameOf(bosId);
  const addBos = bosId !== null && (typeof tc.add_bos_token === "boolean" ? tc.add_bos_token : postProcessorAddsBos(json, bosToken));

  const vocabSize = largestId(json, [eosId, padId]) + 1;

  return {
    encode: (text) => (text === "" ? [] : hf.encode(text, { add_special_tokens: false }).ids),
    // The library refuses an empty id list; an empty generation decodes to "".
    decode: (ids, skipSpecial = true) =>
      ids.length === 0 ? "" : hf.decode([...ids], { skip_special_tokens: skipSpecial, clean_up_tokenization_spaces: false }),
    bosId,
    eosId,
    padId,
    addBos,
    vocabSize,
    eosToken: nameOf(eosId) ?? "",
  };
}

/**
 * The largest token id of the model vocabulary, the added tokens and `ids`. A loop, not
 * Math.max(...ids): spreading a real vocabulary (128k+ entries) overflows the call stack.
 */
function largestId(json: Json, ids: number[]): number {
  const vocab = isPlainObject(json.model) ? json.model.vocab : undefined;
  const added = Array.isArray(json.added_tokens) ? json.added_tokens : [];
  // Unigram stores [piece, score] pairs (id = index); BPE and WordPiece map piece -> id.
  const candidates = Array.isArray(vocab) ? [vocab.length - 1] : isPlainObject(vocab) ? Object.values(vocab) : [];
  let largest = -1;
  for (const id of [...ids, ...candidates, ...added.map((t) => (isPlainObject(t) ? t.id : undefined))]) {
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
      throw new CheckpointFormatError(`token id ${JSON.stringify(id)} is not a non-negative integer`, TOKENIZER_JSON);
    }
    if (id > largest) largest = id;
  }
  return largest;
}

// ---------------------------------------------------------------------------
// The built-in world's word tokenizer.

/** Stands for a space, attached to the word after it (the SentencePiece convention). */
export const SPACE_MARK = "\u2581";
const CONTINUATION = "##";
export const WORD_SPECIALS = { pad: "<pad>", bos: "<s>", eos: "</s>", unk: "<unk>" } as const;

/**
 * Pre-token pattern: a word (letters or digits) or one punctuation mark, each with an
 * optional leading space mark; one whitespace character; a lone space mark. Every
 * punctuation mark stands alone, so a "#" never starts a continuation key "##x"
 * ("###" is three "#" tokens), which keeps decoding exact.
 */
const PRE_TOKEN_REGEX = `${SPACE_MARK}?[\\p{L}\\p{N}]+|${SPACE_MARK}?[^\\s\\p{L}\\p{N}${SPACE_MARK}]|\\s|${SPACE_MARK}`;
const PRE_TOKEN = new RegExp(PRE_TOKEN_REGEX, "gu");

/** The characters every word tokenizer can spell unseen words with: printable ASCII, space mark, newline, tab. */
function fallbackAlphabet(): string[] {
  const chars = [SPACE_MARK, "\n", "\t"];
  for (let c = 0x21; c <= 0x7e; c++) chars.push(String.fromCharCode(c));
  return chars;
}

export interface WordTokenizerOptions {
  /** Words seen fewer times than this are left to the character fallback (default 1). */
  minCount?: number;
  /** Cap on whole-word entries, most frequent first (default: no cap). */
  maxWords?: number;
}

/**
 * A tokenizer.json object (WordPiece model) for a closed-vocabulary corpus. Ids: the four
 * specials (<pad> 0, <s> 1, </s> 2, <unk> 3), then the fallback characters and their
 * "##" continuations, then every corpus pre-token by descending count, ties in code-unit
 * order, so the same corpus always yields identical JSON.
 *
 * Round trip: spaces become "▁" in the normalizer and return in the decoder, so
 * decode(encode(t)) === t exactly for any text in printable ASCII plus newline and tab;
 * an unseen word is spelled from characters, never <unk>; only a pre-token holding a
 * character outside that alphabet (and not in the corpus) becomes <unk>.
 */
export function buildWordTokenizer(texts: readonly string[], opts: WordTokenizerOptions = {}): Json {
  const minCount = opts.minCount ?? 1;
  const counts = new Map<string, number>();
  for (const text of texts) {
    for (const piece of text.replaceAll(" ", SPACE_MARK).match(PRE_TOKEN) ?? []) {
      counts.set(piece, (counts.get(piece) ?? 0) + 1);
    }
  }
  const specials = [WORD_SPECIALS.pad, WORD_SPECIALS.bos, WORD_SPECIALS.eos, WORD_SPECIALS.unk];
  const alphabet = fallbackAlphabet();
  const vocab: Record<string, number> = {};
  const add = (token: string) => {
    if (!(token in vocab)) vocab[token] = Object.keys(vocab).length;
  };
  for (const t of [...specials, ...alphabet, ...alphabet.map((c) => CONTINUATION + c)]) add(t);
  const words = [...counts.entries()]
    .filter(([, n]) => n >= minCount)
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .slice(0, opts.maxWords ?? Infinity);
  for (const [word] of words) add(word);

  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: { type: "Replace", pattern: { String: " " }, content: SPACE_MARK },
    pre_tokenizer: { type: "Split", pattern: { Regex: PRE_TOKEN_REGEX }, behavior: "Isolated", invert: false },
    // Llama-style: <s> before every sequence when special tokens are requested.
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: WORD_SPECIALS.bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: WORD_SPECIALS.bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: WORD_SPECIALS.bos, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [WORD_SPECIALS.bos]: { id: WORD_SPECIALS.bos, ids: [1], tokens: [WORD_SPECIALS.bos] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { Regex: `^${CONTINUATION}` }, content: "" },
        { type: "Replace", pattern: { String: SPACE_MARK }, content: " " },
        { type: "Fuse" },
      ],
    },
    model: {
      type: "WordPiece",
      unk_token: WORD_SPECIALS.unk,
      continuing_subword_prefix: CONTINUATION,
      max_input_chars_per_word: 100,
      vocab,
    },
  };
}

/** The tokenizer_config.json that goes with buildWordTokenizer's output. */
export function wordTokenizerConfig(): Json {
  return {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: WORD_SPECIALS.bos,
    eos_token: WORD_SPECIALS.eos,
    pad_token: WORD_SPECIALS.pad,
    unk_token: WORD_SPECIALS.unk,
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 200,
  };
}
