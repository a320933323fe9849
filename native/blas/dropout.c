/*
 * Inverted dropout's mask, drawn straight into the wasm heap: the stream and the values of
 * model/lora.ts's dropoutMask (xorshift128 from four seeds, an element kept when its draw is
 * at least rate * 2^32, kept ones 1 / (1 - rate) in float32), bit for bit. In JavaScript, with
 * the copy of its array into the heap, a 6 x 256 model's 42 masks of a pass over 512 rows took
 * 43-58 ms, a sixth of the step.
 */
#include "addon.h"

/*
 * dropoutMask(heap, outOffset, n, skip, s0, s1, s2, s3, rate): writes values [skip, skip + n) of
 * the mask's stream from the seeds (s0 made odd by the caller) to n float32 at outOffset.
 */
napi_value dropout_mask(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[7];
  double rate = 0;
  if (!heap_args(env, info, "dropoutMask: (ArrayBuffer, outOffset, n, skip, 4 uint32 seeds, rate) expected", &heap, &heap_bytes, 7, v, 1, &rate)) return NULL;
  if (!inside((uint64_t)v[0], (uint64_t)v[1], heap_bytes)) {
    napi_throw_range_error(env, NULL, "dropoutMask: the output lies outside the heap or is misaligned");
    return NULL;
  }
  if (v[3] > UINT32_MAX || v[4] > UINT32_MAX || v[5] > UINT32_MAX || v[6] > UINT32_MAX || !(rate >= 0 && rate < 1)) {
    napi_throw_range_error(env, NULL, "dropoutMask: seeds must be uint32 and the rate in [0, 1)");
    return NULL;
  }
  float *out = (float *)heap + v[0] / 4;
  const int64_t n = v[1], skip = v[2];
  const float scale = (float)(1 / (1 - rate));
  const double threshold = rate * 4294967296.0;
  uint32_t s0 = (uint32_t)v[3], s1 = (uint32_t)v[4], s2 = (uint32_t)v[5], s3 = (uint32_t)v[6];
  for (int64_t i = -skip; i < n; i++) {
    uint32_t t = s3;
    const uint32_t s = s0;
    s3 = s2;
    s2 = s1;
    s1 = s;
    t ^= t << 11;
    t ^= t >> 8;
    s0 = t ^ s ^ (s >> 19);
    if (i >= 0) out[i] = (double)s0 >= threshold ? scale : 0.0f;
  }
  return NULL;
}
