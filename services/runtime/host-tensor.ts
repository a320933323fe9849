/**
 * A tensor held in host memory, independent of any tfjs backend: what checkpoint
 * formats read and write, and what the model imports and exports.
 */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** Tensors by name, in the naming of the format they come from (HF Llama, PEFT). */
export type HostTensors = Map<string, HostTensor>;
