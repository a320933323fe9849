/*
 * Inverted dropout's mask, drawn straight into the wasm heap: the stream and the values of
 * model/lora.ts's dropoutMask, bit for bit: eight xorshift128 generators stepped together,
 * element i from generator i % 8's draw i / 8, kept when that draw is at least rate * 2^32, a
 * kept one 1 / (1 - rate) in float32. Eight independent generators make the loop a vector
 * one; one generator's chain of dependent shifts ran at 3.4 ns a value here (0.45 ms a [512,
 * 256] mask; 0.8 in JavaScript with the copy in), eight at 0.15-0.22 ms.
 */
#include <math.h>
#include "addon.h"

#define LANES 8

/* One draw of every generator; s[0] holds the draws. */
static inline void step_lanes(uint32_t s[4][LANES]) {
  for (int l = 0; l < LANES; l++) {
    uint32_t t = s[3][l];
    const uint32_t x = s[0][l];
    s[3][l] = s[2][l];
    s[2][l] = s[1][l];
    s[1][l] = x;
    t ^= t << 11;
    t ^= t >> 8;
    s[0][l] = t ^ x ^ (x >> 19);
  }
}

/* Values [skip, skip + n) of the stream into out; keep: a draw is kept when at least this (2^32: none). */
VECTOR_CLONES static void draw_mask(uint32_t s[4][LANES], float *out, int64_t n, int64_t skip, uint64_t keep, float scale) {
  for (int64_t b = 0; b < skip / LANES; b++) step_lanes(s);
  const int64_t start = skip - skip % LANES; /* the stream's index of the first block drawn */
  int64_t i = start;
  /* Blocks that lie inside [skip, skip + n) whole go through the vector loop; the edges one by one. */
  for (; i < skip + n; i += LANES) {
    step_lanes(s);
    if (i >= skip && i + LANES <= skip + n) {
      float *o = out + (i - skip);
      for (int l = 0; l < LANES; l++) o[l] = (uint64_t)s[0][l] >= keep ? scale : 0.0f;
    } else {
      for (int l = 0; l < LANES; l++)
        if (i + l >= skip && i + l < skip + n) out[i + l - skip] = (uint64_t)s[0][l] >= keep ? scale : 0.0f;
    }
  }
}

/*
 * dropoutMask(heap, outOffset, n, skip, rate, seeds): writes values [skip, skip + n) of the
 * mask's stream to n float32 at outOffset; seeds is a Uint32Array of 4 x 8 words, the
 * generators' states word by word (s0 of the eight, then s1, ...).
 */
napi_value dropout_mask(napi_env env, napi_callback_info info) {
  const char *usage = "dropoutMask: (ArrayBuffer, outOffset, n, skip, rate in [0, 1), Uint32Array of 32 seeds) expected";
  size_t argc = 6;
  napi_value argv[6];
  void *heap = NULL, *seeds = NULL;
  size_t heap_bytes = 0, seed_count = 0;
  napi_typedarray_type type;
  int64_t v[3];
  double rate = -1;
  bool typed = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6 || napi_get_arraybuffer_info(env, argv[0], &heap, &heap_bytes) != napi_ok ||
      napi_get_value_int64(env, argv[1], &v[0]) != napi_ok || napi_get_value_int64(env, argv[2], &v[1]) != napi_ok ||
      napi_get_value_int64(env, argv[3], &v[2]) != napi_ok || napi_get_value_double(env, argv[4], &rate) != napi_ok || napi_is_typedarray(env, argv[5], &typed) != napi_ok ||
      !typed || napi_get_typedarray_info(env, argv[5], &type, &seed_count, &seeds, NULL, NULL) != napi_ok || type != napi_uint32_array || seed_count != 4 * LANES ||
      v[0] < 0 || v[1] < 0 || v[2] < 0 || !(rate >= 0 && rate < 1)) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  if (!inside((uint64_t)v[0], (uint64_t)v[1], heap_bytes)) {
    napi_throw_range_error(env, NULL, "dropoutMask: the output lies outside the heap or is misaligned");
    return NULL;
  }
  uint32_t s[4][LANES];
  memcpy(s, seeds, sizeof s);
  /* A draw x is kept when x >= rate * 2^32, that is x >= its ceiling (x is an integer). */
  draw_mask(s, (float *)heap + v[0] / 4, v[1], v[2], (uint64_t)ceil(rate * 4294967296.0), (float)(1 / (1 - rate)));
  return NULL;
}
