/* What the addon's source files share: argument reading and the error macro. */
#ifndef VACCINE_ADDON_H
#define VACCINE_ADDON_H

#include <cblas.h>
#include <math.h>
#include <node_api.h>
#include <stdint.h>
#include <string.h>

#define CHECK(env, call)                                      \
  do {                                                        \
    if ((call) != napi_ok) {                                  \
      napi_throw_error((env), NULL, "vaccine_blas: " #call);  \
      return NULL;                                            \
    }                                                         \
  } while (0)

/*
 * Reads (ArrayBuffer, n non-negative integers, nd numbers) into heap, v and d; on anything
 * else throws a TypeError naming `usage` and returns 0. At most 16 arguments after the heap.
 */
int heap_args(napi_env env, napi_callback_info info, const char *usage, void **heap, size_t *heap_bytes, size_t n, int64_t *v, size_t nd, double *d);

/*
 * exp(x) in float32 without a call, so that loops of it vectorise: Cody-Waite reduction
 * x = n ln2 + r (|r| <= ln2 / 2), Cephes's degree-6 polynomial for e^r, 2^n from the exponent
 * bits. At most 8.2e-8 relative error against exp in double over [-87, 88] (glibc's expf
 * 6.0e-8); below -87.34 it gives 0 where expf gives subnormals, above 88.72 +inf; NaN stays
 * NaN. Branch-free: with -fno-trapping-math (binding.gyp) its selects vectorise, and loops
 * marked VECTOR_CLONES get AVX-512 and AVX2 clones beside the baseline one. Measured here: about
 * 2x glibc's expf a value on the baseline, 4x with AVX2; AVX-512 halved exp_array's time in a
 * step again and took a third off the loss's softmax and the SwiGLU forward (perf samples over
 * 300 steps), where the memory-bound passes stayed as they were.
 */
static inline float exp_poly(float x) {
  const float hi = 88.72283f, lo = -87.33654f, shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds */
  float y = x > hi ? hi : x;
  y = y < lo ? lo : y;
  float n = y * 1.44269504088896341f + shifter;
  n = n - shifter;
  float r = y - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  float out = p * scale;
  out = x > hi ? (float)INFINITY : out;
  return x < lo ? 0.0f : out;
}

/* out[i] = exp_poly(in[i]) for n values; out may be in (blas.c). */
void exp_array(const float *in, float *out, int64_t n);

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/*
 * The largest of n >= 1 values, scanned in 16 independent lanes (16 compares in flight instead
 * of one chain; gcc does not vectorise it, and a vector-extension version measured no faster;
 * inlined into a VECTOR_CLONES function it runs in the clones: the loss's row maxima moved into
 * its softmax took 221 -> 10 perf samples off headLoss and added 151 to the softmax, 300 steps):
 * the same value as one scan (a maximum does not round; a NaN is taken only as the first
 * value, as there).
 */
static inline float max_of(const float *x, int64_t n) {
  float m[16];
  for (int k = 0; k < 16; k++) m[k] = x[0];
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
  for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
  float out = m[0];
  for (int k = 1; k < 16; k++) out = m[k] > out ? m[k] : out;
  return out;
}

/* The sum of n values in double, in 8 lanes so that the loop vectorises (one running sum is a chain of dependent adds). */
static inline double sum_of(const float *x, int64_t n) {
  double s[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) s[k] += (double)x[i + k];
  for (; i < n; i++) s[0] += (double)x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* The sum of a_i b_i (c_i) over n values in double (c may be NULL), in 8 lanes like sum_of. */
static inline double dot_of(const float *a, const float *b, const float *c, int64_t n) {
  double s[8] = {0};
  int64_t i = 0;
  if (c)
    for (; i + 8 <= n; i += 8)
      for (int k = 0; k < 8; k++) s[k] += (double)a[i + k] * b[i + k] * c[i + k];
  else
    for (; i + 8 <= n; i += 8)
      for (int k = 0; k < 8; k++) s[k] += (double)a[i + k] * b[i + k];
  for (; i < n; i++) s[0] += (double)a[i] * b[i] * (c ? c[i] : 1.0f);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* C = alpha op(A) op(B) + beta C on row-major operands, cblas_sgemm's arguments; blas.c says when it cuts a product. */
void row_major_sgemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                     int64_t ldb, float beta, float *c, int64_t ldc);

/* A per-thread scratch buffer of at least count floats, reused across calls; NULL when out of memory. */
float *scratch(size_t count);

/* Whether `count` float32 values from byte offset `off` lie inside the heap, aligned. */
int inside(uint64_t off, uint64_t count, size_t heap_bytes);

/*
 * The parts the decoder-block kernels (block.c) compose, on plain pointers; each file's own
 * napi functions call them too.
 */

/* A projection y = x W^T, LoRA-adapted when r > 0: + s (x * mask) A^T B^T (mask NULL: none). */
typedef struct {
  const float *w, *a, *b, *mask;
  int64_t in, out, r;
  float scaling;
} proj_t;

/*
 * y [n, out] (added to y when accumulate) and, when adapted, xa = s (x * mask) A^T [n, r];
 * without a mask and with n at least in and out, through W + s B A (lora.c). buf: n * in floats
 * when adapted.
 */
void proj_forward(const proj_t *p, const float *x, float *y, int accumulate, float *xa, int64_t n, float *buf);

/*
 * From dy [n, out]: dx = dy W + s ((dy B) A) * mask (added to dx when accumulate; as
 * proj_forward, through W + s B A without a mask), dA = s (dy B)^T (x * mask), dB = dy^T xa; a
 * NULL output is skipped. buf: n * r + n * in floats.
 */
void proj_backward(const proj_t *p, const float *dy, const float *x, const float *xa, float *dx, int accumulate, float *da, float *db, int64_t n, float *buf);

/* RMSNorm of rows [rows, width]: out = x * r * w, r per row kept; and dx from dy, plus `plus` [rows, width] unless NULL. */
void rms_norm_rows(const float *x, const float *w, float *out, float *r, int64_t rows, int64_t width, double eps);
void rms_norm_rows_grad(const float *dy, const float *x, const float *w, const float *r, const float *plus, float *dx, int64_t rows, int64_t width);

/* silu(gate) * up with sigmoid(gate) kept; and both gradients from dy (dg, du may alias nothing). */
void swiglu_forward(const float *g, const float *u, float *out, float *s, uint64_t n);
void swiglu_backward(const float *dy, const float *g, const float *u, const float *s, float *dg, float *du, uint64_t n);

/* Causal attention's shape: batch, time, heads, key-value heads, head size. */
typedef struct {
  int64_t b, t, heads, kv, d;
} attn_shape;

/*
 * attention.c's kernels on pointers; the backward needs attention_grad_floats(t, d) floats of buf
 * (a block of queries' scores and a head's row). ends: each batch row's end (its positions from
 * there on not read, and written only in out, dq, dk and dv: zeros), or NULL for t. probs holds
 * attention_probs(t) floats a head: the causal blocks of queries by keys, one after another.
 */
int64_t attention_grad_floats(int64_t t, int64_t d);
int64_t attention_probs(int64_t t);
void attention_forward(const attn_shape *s, const int32_t *ends, const float *q, const float *k, const float *v, const float *bias, const float *cos, const float *sin, float *out,
                       float *qr, float *kr, float *probs);
void attention_backward(const attn_shape *s, const int32_t *ends, const float *dy, const float *qr, const float *kr, const float *v, const float *probs, const float *cos,
                        const float *sin, float *dq, float *dk, float *dv, float *buf);

napi_value cross_entropy(napi_env env, napi_callback_info info);
napi_value cross_entropy_grad(napi_env env, napi_callback_info info);
napi_value head_loss(napi_env env, napi_callback_info info);
napi_value rms_norm(napi_env env, napi_callback_info info);
napi_value rms_norm_grad(napi_env env, napi_callback_info info);
napi_value lora_linear(napi_env env, napi_callback_info info);
napi_value lora_linear_grad(napi_env env, napi_callback_info info);
napi_value attention(napi_env env, napi_callback_info info);
napi_value attention_grad(napi_env env, napi_callback_info info);
napi_value attention_probs_size(napi_env env, napi_callback_info info);
napi_value swiglu(napi_env env, napi_callback_info info);
napi_value swiglu_grad(napi_env env, napi_callback_info info);
napi_value attention_block(napi_env env, napi_callback_info info);
napi_value attention_block_grad(napi_env env, napi_callback_info info);
napi_value mlp_block(napi_env env, napi_callback_info info);
napi_value mlp_block_grad(napi_env env, napi_callback_info info);
napi_value dropout_mask(napi_env env, napi_callback_info info);

#endif
