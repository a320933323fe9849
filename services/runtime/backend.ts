/**
 * Chooses the tfjs backend at start (VACCINE_BACKEND=auto|tensorflow-gpu|tensorflow|wasm|cpu).
 * The native bindings are optional dependencies that need a libtensorflow download, so
 * they are imported dynamically and their absence is a reason to skip, not a crash.
 * On wasm, the matrix products and exp run natively (OpenBLAS, glibc) when the optional
 * addon loads (VACCINE_NATIVE_KERNELS=auto|off, read from the environment by default so that
 * a training worker thread follows its process; native/kernels.ts).
 */
import * as tf from "@tensorflow/tfjs";
import { configureNativeKernels, NATIVE_KERNEL_MODES, type NativeKernelMode, type NativeKernels } from "./native/kernels.ts";

export const BACKEND_CHOICES = ["auto", "tensorflow-gpu", "tensorflow", "wasm", "cpu"] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];
export type BackendName = Exclude<BackendChoice, "auto">;

export interface BackendSelection {
  /** The backend in use. */
  backend: BackendName;
  /** tfjs's own name for it (tfjs-node and tfjs-node-gpu both register "tensorflow"). */
  tfBackend: string;
  /** Backends auto tried first and could not use, with why. */
  skipped: { name: BackendName; reason: string }[];
  /** On wasm: whether the matrix products run on native OpenBLAS, and why (or why not). */
  nativeKernels?: NativeKernels;
}

export interface BackendOptions {
  /** auto: the native kernels when the addon loads; off: only the stock wasm ones. */
  nativeKernels?: NativeKernelMode;
}

const AUTO_ORDER: BackendName[] = ["tensorflow-gpu", "tensorflow", "wasm", "cpu"];

const loaders: Record<BackendName, { tfBackend: string; load: () => Promise<void> }> = {
  "tensorflow-gpu": { tfBackend: "tensorflow", load: () => importOptional("@tensorflow/tfjs-node-gpu") },
  tensorflow: { tfBackend: "tensorflow", load: () => importOptional("@tensorflow/tfjs-node") },
  wasm: { tfBackend: "wasm", load: async () => void (await import("@tensorflow/tfjs-backend-wasm")) },
  cpu: { tfBackend: "cpu", load: async () => undefined },
};

const selections = new Map<string, BackendSelection>();

/**
 * Activates a backend and reports what it chose. Repeated calls with the same choice
 * return the earlier result without reloading anything, as long as it is still active.
 */
export async function selectBackend(
  choice: string = process.env.VACCINE_BACKEND ?? "auto",
  log: (line: string) => void = (line) => console.error(line),
  options: BackendOptions = {},
): Promise<BackendSelection> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new Error(`unknown backend ${JSON.stringify(choice)}: valid values are ${BACKEND_CHOICES.join(", ")}`);
  }
  const nativeMode = options.nativeKernels ?? nativeKernelsFromEnv();
  const previous = selections.get(choice);
  if (previous && tf.getBackend() === previous.tfBackend) {
    // The kernels are process-wide state another call may have switched.
    if (previous.backend === "wasm") previous.nativeKernels = configureNativeKernels(nativeMode);
    return previous;
  }

  const skipped: BackendSelection["skipped"] = [];
  const candidates = choice === "auto" ? AUTO_ORDER : [choice as BackendName];
  for (const name of candidates) {
    try {
      await activate(name);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (choice !== "auto") throw new Error(`backend "${name}" cannot be used: ${reason}`);
      skipped.push({ name, reason });
      continue;
    }
    const selection: BackendSelection = { backend: name, tfBackend: loaders[name].tfBackend, skipped };
    if (name === "wasm") selection.nativeKernels = configureNativeKernels(nativeMode);
    selections.set(choice, selection);
    const why = skipped.map((s) => `${s.name}: ${s.reason}`).join("; ");
    log(`tfjs backend: ${name} (${choice === "auto" ? "auto" : "requested"})${why ? `; skipped ${why}` : ""}${kernelsNote(selection.nativeKernels)}`);
    return selection;
  }
  // cpu is always registered with @tensorflow/tfjs, so auto cannot get here but by a broken install.
  throw new Error(`no tfjs backend could be used: ${skipped.map((s) => `${s.name}: ${s.reason}`).join("; ")}`);
}

/**
 * The backend an earlier selectBackend call activated, while it is still tfjs's current one:
 * what a training worker thread selects so that it computes as the serving thread does.
 */
export function activeBackend(): BackendName | undefined {
  // tf.getBackend() would initialise a backend of its own choice when none was selected.
  if (selections.size === 0) return undefined;
  for (const s of selections.values()) if (tf.getBackend() === s.tfBackend) return s.backend;
  return undefined;
}

/** VACCINE_NATIVE_KERNELS, checked at start by the suite's configuration; anything but off means auto here. */
function nativeKernelsFromEnv(): NativeKernelMode {
  const raw = process.env.VACCINE_NATIVE_KERNELS ?? "auto";
  return (NATIVE_KERNEL_MODES as readonly string[]).includes(raw) ? (raw as NativeKernelMode) : "auto";
}

function kernelsNote(k: NativeKernels | undefined): string {
  if (!k) return "";
  return k.active ? `; matmul kernels: native (${k.detail}, ${k.threads} thread${k.threads === 1 ? "" : "s"})` : `; matmul kernels: wasm (${k.detail})`;
}

async function activate(name: BackendName): Promise<void> {
  const { tfBackend, load } = loaders[name];
  await load();
  if (!(await tf.setBackend(tfBackend))) throw new Error(`tf.setBackend("${tfBackend}") failed to initialise`);
  await tf.ready();
}

/** Imports a module whose name TypeScript must not resolve (it is optional and may be absent). */
async function importOptional(specifier: string): Promise<void> {
  try {
    await import(specifier);
  } catch (err) {
    const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new Error(`${specifier} is not loadable (${msg})`);
  }
}
