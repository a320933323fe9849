/**
 * Identity on the wasm backend without a copy. tfjs clones every input and output a kernel
 * saves for the backward pass (about 600 clones in one LoRA step of 4 layers x 128), and the
 * stock wasm Identity copies the bytes each time. Tensors are immutable and the wasm backend
 * counts references per buffer (its Reshape already shares the input's buffer this way), so
 * the clone can share the buffer: the same values, no copy, freed with the last reference.
 * The same holds for a Cast to the dtype the tensor already has, which tfjs's gradients
 * issue about 100 times a step (the stock kernel copies those too).
 */
import * as tf from "@tensorflow/tfjs";

interface RefCountingBackend {
  incRef(dataId: object): void;
}

export function sharingIdentity(stock: tf.KernelConfig): tf.KernelConfig {
  const kernelFunc: tf.KernelFunc = (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") return stock.kernelFunc(args);
    (args.backend as unknown as RefCountingBackend).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
  return { kernelName: tf.Identity, backendName: "wasm", kernelFunc };
}

/** Cast that shares the buffer when the dtype does not change; the stock kernel converts otherwise. */
export function sharingCast(stock: tf.KernelConfig): tf.KernelConfig {
  const share = sharingIdentity(stock).kernelFunc;
  const kernelFunc: tf.KernelFunc = (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const { dtype } = args.attrs as unknown as { dtype: tf.DataType };
    return x.dtype === dtype ? share(args) : stock.kernelFunc(args);
  };
  return { kernelName: tf.Cast, backendName: "wasm", kernelFunc };
}
