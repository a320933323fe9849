/**
 * A strict check of the charts the experiment writes. No XML parser is a direct dependency
 * (fast-xml-parser is only pulled in by another package), so this reads the XML subset the
 * charts use itself: elements, quoted attributes, text with entity references, comments and
 * an optional XML declaration. Anything else (a DOCTYPE, CDATA, a stray `<` or `&`, an
 * unclosed or crossed tag) is an error.
 */

export interface XmlElement {
  name: string;
  attrs: Map<string, string>;
  children: XmlElement[];
  /** The element's own text (entity references left as written). */
  text: string;
}

const NAME = /[A-Za-z_][\w.:-]*/y;
const ATTR = /\s+([A-Za-z_][\w.:-]*)\s*=\s*(?:"([^"<]*)"|'([^'<]*)')/y;
const ENTITY = /&(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);/y;
const NUMBER = /^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/;

function lineCol(src: string, at: number): string {
  const before = src.slice(0, at).split("\n");
  return `line ${before.length}, column ${before.at(-1)!.length + 1}`;
}

/** Every `&` must start a known entity reference. */
function checkAmpersands(src: string, from: number, to: number): void {
  for (let i = src.indexOf("&", from); i >= 0 && i < to; i = src.indexOf("&", i + 1)) {
    ENTITY.lastIndex = i;
    if (!ENTITY.test(src)) throw new Error(`bad entity reference at ${lineCol(src, i)}`);
  }
}

/** Parses a whole document with exactly one root element; throws with the position of the first fault. */
export function parseXml(src: string): XmlElement {
  let i = 0;
  const fail = (msg: string): never => {
    throw new Error(`${msg} at ${lineCol(src, i)}`);
  };
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  if (src.startsWith("<?xml")) {
    const end = src.indexOf("?>");
    if (end < 0) fail("unterminated XML declaration");
    i = end + 2;
  }
  while (i < src.length) {
    if (src[i] !== "<") {
      const end = src.indexOf("<", i) < 0 ? src.length : src.indexOf("<", i);
      const text = src.slice(i, end);
      if (stack.length === 0 && text.trim() !== "") fail("text outside the root element");
      checkAmpersands(src, i, end);
      if (stack.length) stack.at(-1)!.text += text;
      i = end;
      continue;
    }
    if (src.startsWith("<!--", i)) {
      const end = src.indexOf("-->", i + 4);
      if (end < 0 || src.slice(i + 4, end).includes("--")) fail("bad comment");
      i = end + 3;
      continue;
    }
    if (src.startsWith("</", i)) {
      NAME.lastIndex = i + 2;
      const m = NAME.exec(src) ?? fail("bad closing tag");
      const close = /\s*>/y;
      close.lastIndex = NAME.lastIndex;
      if (!close.test(src)) fail(`bad closing tag </${m[0]}`);
      const open = stack.pop() ?? fail(`closing tag </${m[0]}> without an open element`);
      if (open.name !== m[0]) fail(`closing tag </${m[0]}> does not match <${open.name}>`);
      i = close.lastIndex;
      continue;
    }
    NAME.lastIndex = i + 1;
    const m = NAME.exec(src) ?? fail("a `<` that starts no element");
    if (root && stack.length === 0) fail("a second root element");
    const el: XmlElement = { name: m[0], attrs: new Map(), children: [], text: "" };
    let j = NAME.lastIndex;
    for (;;) {
      ATTR.lastIndex = j;
      const a = ATTR.exec(src);
      if (!a) break;
      if (el.attrs.has(a[1])) fail(`attribute ${a[1]} repeated on <${el.name}>`);
      const value = a[2] ?? a[3];
      checkAmpersands(src, j, ATTR.lastIndex);
      el.attrs.set(a[1], value);
      j = ATTR.lastIndex;
    }
    const end = /\s*(\/?)>/y;
    end.lastIndex = j;
    const e = end.exec(src);
    if (!e) {
      i = j;
      fail(`malformed tag <${el.name}`);
    }
    if (stack.length) stack.at(-1)!.children.push(el);
    else root = el;
    if (e![1] !== "/") stack.push(el);
    i = end.lastIndex;
  }
  if (stack.length) fail(`<${stack.at(-1)!.name}> is never closed`);
  return root ?? fail("no root element");
}

function* walk(el: XmlElement): Generator<XmlElement> {
  yield el;
  for (const c of el.children) yield* walk(c);
}

const X_ATTRS = ["x", "x1", "x2", "cx"];
const Y_ATTRS = ["y", "y1", "y2", "cy"];
const NUMERIC_ATTRS = [...X_ATTRS, ...Y_ATTRS, "r", "width", "height", "stroke-width", "font-size"];

const finite = (s: string) => NUMBER.test(s.trim()) && Number.isFinite(Number(s));

/**
 * Problems of a chart (empty when it is fine): well-formed XML with an <svg> root in the SVG
 * namespace, positive width and height matching the viewBox, every coordinate a finite
 * number inside the canvas (so no NaN or Infinity leaks in from missing data), and at least
 * one data line.
 */
export function chartProblems(src: string): string[] {
  let root: XmlElement;
  try {
    root = parseXml(src);
  } catch (err) {
    return [`not well-formed XML: ${(err as Error).message}`];
  }
  const problems: string[] = [];
  if (root.name !== "svg") problems.push(`the root is <${root.name}>, not <svg>`);
  if (root.attrs.get("xmlns") !== "http://www.w3.org/2000/svg") problems.push(`xmlns is ${JSON.stringify(root.attrs.get("xmlns") ?? null)}`);
  const width = Number(root.attrs.get("width"));
  const height = Number(root.attrs.get("height"));
  if (!(finite(root.attrs.get("width") ?? "") && width > 0)) problems.push(`width is ${root.attrs.get("width")}`);
  if (!(finite(root.attrs.get("height") ?? "") && height > 0)) problems.push(`height is ${root.attrs.get("height")}`);
  const viewBox = (root.attrs.get("viewBox") ?? "").trim().split(/[\s,]+/);
  if (viewBox.length !== 4 || !viewBox.every(finite) || Number(viewBox[2]) !== width || Number(viewBox[3]) !== height) {
    problems.push(`viewBox "${root.attrs.get("viewBox")}" is not 4 numbers matching width and height`);
  }
  const inX = (v: number) => v >= 0 && v <= width;
  const inY = (v: number) => v >= 0 && v <= height;
  let lines = 0;
  for (const el of walk(root)) {
    for (const [name, value] of el.attrs) {
      if (/NaN|Infinity|undefined/.test(value)) problems.push(`<${el.name} ${name}="${value}">`);
    }
    if (/NaN|Infinity|undefined/.test(el.text)) problems.push(`<${el.name}> text "${el.text}"`);
    for (const name of NUMERIC_ATTRS) {
      const value = el.attrs.get(name);
      if (value === undefined) continue;
      if (!finite(value)) problems.push(`<${el.name} ${name}="${value}"> is not a finite number`);
      else if (X_ATTRS.includes(name) && !inX(Number(value))) problems.push(`<${el.name} ${name}="${value}"> is outside the canvas`);
      else if (Y_ATTRS.includes(name) && !inY(Number(value))) problems.push(`<${el.name} ${name}="${value}"> is outside the canvas`);
    }
    const transform = el.attrs.get("transform");
    if (transform !== undefined) {
      for (const args of transform.matchAll(/\(([^)]*)\)/g)) {
        if (!args[1].trim().split(/[\s,]+/).every(finite)) problems.push(`<${el.name} transform="${transform}"> has a non-numeric argument`);
      }
    }
    if (el.name === "polyline") {
      lines++;
      const pairs = (el.attrs.get("points") ?? "").trim().split(/\s+/).filter(Boolean);
      if (pairs.length === 0) problems.push("a polyline without points");
      for (const pair of pairs) {
        const [x, y, extra] = pair.split(",");
        if (extra !== undefined || !finite(x ?? "") || !finite(y ?? "") || !inX(Number(x)) || !inY(Number(y))) {
          problems.push(`polyline point "${pair}" is not a pair of finite coordinates on the canvas`);
        }
      }
    }
  }
  if (lines === 0) problems.push("no polyline: the chart shows no data");
  return problems;
}

/** The data points a chart labels, by series, read from its <circle><title>Series: (x, y)</title>. */
export function chartPoints(src: string): Map<string, [number, number][]> {
  const out = new Map<string, [number, number][]>();
  for (const el of walk(parseXml(src))) {
    if (el.name !== "circle") continue;
    const title = el.children.find((c) => c.name === "title")?.text ?? "";
    const m = /^(.*): \(([^,]+), ([^)]+)\)$/.exec(title);
    if (!m) throw new Error(`a data point without a "series: (x, y)" title: ${JSON.stringify(title)}`);
    const list = out.get(m[1]) ?? [];
    list.push([Number(m[2]), Number(m[3])]);
    out.set(m[1], list);
  }
  return out;
}
