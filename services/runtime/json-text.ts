/**
 * Checks on JSON source text that JSON.parse cannot make: it keeps the last of duplicate
 * keys and reads 2.0 or 1e1 as integers. Formats that need exact JSON (safetensors headers)
 * run these on text that JSON.parse has already accepted.
 */

export interface JsonTextFacts {
  /** The first key that repeats within one object, with its object's path ("" at the top). */
  duplicateKey?: { path: string; key: string };
  /** Every number literal, as written. */
  numbers: string[];
}

/** Walks valid JSON text once: duplicate keys and number literals. */
export function scanJsonText(text: string): JsonTextFacts {
  const facts: JsonTextFacts = { numbers: [] };
  // One entry per open container: the keys seen in an object, null for an array.
  const stack: { keys: Set<string> | null; path: string }[] = [];
  let lastKey = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      const end = stringEnd(text, i);
      const top = stack[stack.length - 1];
      if (top?.keys && nextSignificant(text, end) === ":") {
        const key = JSON.parse(text.slice(i, end)) as string;
        if (top.keys.has(key) && !facts.duplicateKey) facts.duplicateKey = { path: top.path, key };
        top.keys.add(key);
        lastKey = key;
      }
      i = end;
    } else if (c === "{" || c === "[") {
      const parent = stack[stack.length - 1];
      const path = parent === undefined ? "" : parent.keys ? join(parent.path, lastKey) : `${parent.path}[]`;
      stack.push({ keys: c === "{" ? new Set() : null, path });
      i++;
    } else if (c === "}" || c === "]") {
      stack.pop();
      i++;
    } else if (c === "-" || (c >= "0" && c <= "9")) {
      let end = i + 1;
      while (end < text.length && /[0-9eE+\-.]/.test(text[end])) end++;
      facts.numbers.push(text.slice(i, end));
      i = end;
    } else {
      i++;
    }
  }
  return facts;
}

function join(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

/** Index just past the closing quote of the string starting at `start`. */
function stringEnd(text: string, start: number): number {
  let i = start + 1;
  while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
  return i + 1;
}

function nextSignificant(text: string, from: number): string | undefined {
  let i = from;
  while (i < text.length && " \t\n\r".includes(text[i])) i++;
  return text[i];
}
