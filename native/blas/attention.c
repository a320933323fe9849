/*
 * Causal self-attention for training, forward and backward, in place on the wasm heap: the
 * rotary embedding of q and k, scores q k^T / sqrt(d) plus the mask's bias, softmax and the
 * product with v, for every row and head, reading q, k and v in the projections' own
 * [B, T, heads * d] layout and writing the context in it (no head transposes). Composed of
 * tfjs ops this is about 15 kernels a layer forward and 25 backward. Grouped-query heads
 * share their key-value head. The products are OpenBLAS sgemm on strided operands.
 *
 * Causal: queries are taken QUERY_BLOCK rows at a time against the keys up to the block's last
 * row only (a query never reads a later key; the bias masks padding and the diagonal block's
 * later keys), and, given each row's end (block.c), not past it. A head's softmax is kept as
 * those blocks of [rows, keys], one after another.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include "addon.h"

/* x * cos + rotate_half(x) * sin on one head's row of d values, rotate_half(x) = [-x2, x1]. */
static void rotate(const float *x, const float *cos, const float *sin, float *out, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; i++) out[i] = x[i] * cos[i] + (-x[i + half]) * sin[i];
  for (int64_t i = half; i < d; i++) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

/* The gradient of rotate with respect to x, in place: g * cos + rotate_half^T(g * sin). */
static void unrotate(float *g, const float *cos, const float *sin, float *tmp, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; i++) tmp[i] = g[i] * cos[i] + g[i + half] * sin[i + half];
  for (int64_t i = half; i < d; i++) tmp[i] = g[i] * cos[i] - g[i - half] * sin[i - half];
  memcpy(g, tmp, 4u * (size_t)d);
}

/* Batch row b's end: its positions from there on are neither queries nor keys. */
static int64_t end_of(const attn_shape *s, const int32_t *ends, int64_t b) { return ends ? ends[b] : s->t; }

/* Rotates every head of x [B, T, n * d] into out at the positions before each row's end (nothing reads the others). */
static void rotate_all(const attn_shape *s, const int32_t *ends, int64_t n, const float *x, const float *cos, const float *sin, float *out) {
  for (int64_t b = 0; b < s->b; b++) {
    for (int64_t p = 0, end = end_of(s, ends, b); p < end; p++) {
      const int64_t bt = b * s->t + p;
      for (int64_t h = 0; h < n; h++) rotate(x + (bt * n + h) * s->d, cos + p * s->d, sin + p * s->d, out + (bt * n + h) * s->d, s->d);
    }
  }
}

/* Query rows a product takes: fewer compute less of the upper triangle but call sgemm more often. */
#define QUERY_BLOCK 32

/* Row-wise softmax of rows x n scores p / root + bias (bias rows bias_ld apart) in place; the exponentials over the whole block at once (one vector loop, not short ones). */
VECTOR_CLONES static void softmax(float *p, const float *bias, int64_t rows, int64_t n, int64_t bias_ld, float root) {
  for (int64_t i = 0; i < rows; i++) {
    float *row = p + i * n;
    const float *br = bias + i * bias_ld;
    for (int64_t j = 0; j < n; j++) row[j] = row[j] / root + br[j];
    const float max = max_of(row, n);
    for (int64_t j = 0; j < n; j++) row[j] -= max;
  }
  exp_array(p, p, rows * n);
  for (int64_t i = 0; i < rows; i++) {
    float *row = p + i * n;
    const float sum = (float)sum_of(row, n);
    for (int64_t j = 0; j < n; j++) row[j] /= sum;
  }
}

int64_t attention_grad_floats(int64_t t, int64_t d) { return (t < QUERY_BLOCK ? t : QUERY_BLOCK) * t + d; }

int64_t attention_probs(int64_t t) {
  int64_t total = 0;
  for (int64_t r0 = 0; r0 < t; r0 += QUERY_BLOCK) {
    const int64_t rows = t - r0 < QUERY_BLOCK ? t - r0 : QUERY_BLOCK;
    total += rows * (r0 + rows);
  }
  return total;
}

void attention_forward(const attn_shape *s, const int32_t *ends, const float *q, const float *k, const float *val, const float *bias, const float *cos, const float *sin, float *out,
                       float *qr, float *kr, float *probs) {
  rotate_all(s, ends, s->heads, q, cos, sin, qr);
  rotate_all(s, ends, s->kv, k, cos, sin, kr);
  const int64_t T = s->t, D = s->d, ldq = s->heads * D, ldk = s->kv * D, groups = s->heads / s->kv, head_probs = attention_probs(T);
  const float root = sqrtf((float)D);
  for (int64_t b = 0; b < s->b; b++) {
    const int64_t end = end_of(s, ends, b);
    if (end < T) memset(out + (b * T + end) * ldq, 0, 4u * (size_t)((T - end) * ldq));
    for (int64_t h = 0; h < s->heads; h++) {
      const int64_t kh = h / groups;
      float *p = probs + (b * s->heads + h) * head_probs;
      const float *qb = qr + b * T * ldq + h * D, *kb = kr + b * T * ldk + kh * D, *vb = val + b * T * ldk + kh * D;
      for (int64_t r0 = 0; r0 < end; r0 += QUERY_BLOCK) {
        const int64_t rows = end - r0 < QUERY_BLOCK ? end - r0 : QUERY_BLOCK, keys = r0 + rows;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)keys, (int)D, 1.0f, qb + r0 * ldq, (int)ldq, kb, (int)ldk, 0.0f, p, (int)keys);
        softmax(p, bias + (b * T + r0) * T, rows, keys, T, root);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D, (int)keys, 1.0f, p, (int)keys, vb, (int)ldk, 0.0f, out + (b * T + r0) * ldq + h * D, (int)ldq);
        p += rows * keys;
      }
    }
  }
}

void attention_backward(const attn_shape *s, const int32_t *ends, const float *dy, const float *qr, const float *kr, const float *val, const float *probs, const float *cos,
                        const float *sin, float *dq, float *dk, float *dv, float *buf) {
  const int64_t T = s->t, D = s->d, ldq = s->heads * D, ldk = s->kv * D, groups = s->heads / s->kv, head_probs = attention_probs(T);
  const uint64_t kn = (uint64_t)(s->b * s->t) * (uint64_t)ldk;
  memset(dk, 0, 4u * (size_t)kn);
  memset(dv, 0, 4u * (size_t)kn);
  const float root = sqrtf((float)D);
  float *ds = buf, *tmp = buf + attention_grad_floats(T, 0);
  for (int64_t b = 0; b < s->b; b++) {
    const int64_t end = end_of(s, ends, b);
    if (end < T) memset(dq + (b * T + end) * ldq, 0, 4u * (size_t)((T - end) * ldq));
    for (int64_t h = 0; h < s->heads; h++) {
      const int64_t kh = h / groups;
      const float *p = probs + (b * s->heads + h) * head_probs;
      const float *dyb = dy + b * T * ldq + h * D, *qb = qr + b * T * ldq + h * D, *kb = kr + b * T * ldk + kh * D, *vb = val + b * T * ldk + kh * D;
      float *dvb = dv + b * T * ldk + kh * D, *dkb = dk + b * T * ldk + kh * D;
      for (int64_t r0 = 0; r0 < end; r0 += QUERY_BLOCK) {
        const int64_t rows = end - r0 < QUERY_BLOCK ? end - r0 : QUERY_BLOCK, keys = r0 + rows;
        /* dv += p^T dy; dp = dy v^T; ds = p * (dp - rowsum(dp * p)) / sqrt(d). */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)keys, (int)D, (int)rows, 1.0f, p, (int)keys, dyb + r0 * ldq, (int)ldq, 1.0f, dvb, (int)ldk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)keys, (int)D, 1.0f, dyb + r0 * ldq, (int)ldq, vb, (int)ldk, 0.0f, ds, (int)keys);
        for (int64_t i = 0; i < rows; i++) {
          float *row = ds + i * keys;
          const float *pr = p + i * keys;
          const float dot = (float)dot_of(row, pr, NULL, keys);
          for (int64_t j = 0; j < keys; j++) row[j] = pr[j] * (row[j] - dot) / root;
        }
        /* dq = ds k (rotated space, unrotated below); dk += ds^T q. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D, (int)keys, 1.0f, ds, (int)keys, kb, (int)ldk, 0.0f, dq + (b * T + r0) * ldq + h * D, (int)ldq);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)keys, (int)D, (int)rows, 1.0f, ds, (int)keys, qb + r0 * ldq, (int)ldq, 1.0f, dkb, (int)ldk);
        p += rows * keys;
      }
    }
  }
  for (int64_t b = 0; b < s->b; b++) {
    for (int64_t p = 0, end = end_of(s, ends, b); p < end; p++) {
      const int64_t i = b * T + p;
      for (int64_t h = 0; h < s->heads; h++) unrotate(dq + (i * s->heads + h) * D, cos + p * D, sin + p * D, tmp, D);
      for (int64_t h = 0; h < s->kv; h++) unrotate(dk + (i * s->kv + h) * D, cos + p * D, sin + p * D, tmp, D);
    }
  }
}

static int read_shape(napi_env env, const int64_t *v, attn_shape *s) {
  *s = (attn_shape){v[0], v[1], v[2], v[3], v[4]};
  if (s->kv == 0 || s->heads % s->kv != 0 || s->d % 2 != 0 || s->t > INT32_MAX / 4 || s->heads * s->d > INT32_MAX) {
    napi_throw_range_error(env, NULL, "attention: heads must be a multiple of kvHeads and the head size even");
    return 0;
  }
  return 1;
}

/*
 * attention(heap, qOffset, kOffset, vOffset, biasOffset, cosOffset, sinOffset, outOffset,
 * qrOffset, krOffset, probsOffset, b, t, heads, kvHeads, d): for q [B, T, heads * d], k and
 * v [B, T, kvHeads * d], bias [B, T, T] and rotary tables cos, sin [T, d], writes the
 * context out [B, T, heads * d], the rotated q and k (qr, kr) and the softmax probs
 * [B, heads, attentionProbs(T)] the backward pass reads.
 */
napi_value attention(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[15];
  attn_shape s;
  if (!heap_args(env, info, "attention: (ArrayBuffer, 10 offsets, b, t, heads, kvHeads, d) of non-negative integers expected", &heap, &heap_bytes, 15, v, 0, NULL) ||
      !read_shape(env, v + 10, &s))
    return NULL;
  const uint64_t bt = (uint64_t)(s.b * s.t), qn = bt * (uint64_t)(s.heads * s.d), kn = bt * (uint64_t)(s.kv * s.d);
  const uint64_t counts[10] = {qn, kn, kn, bt * (uint64_t)s.t, (uint64_t)(s.t * s.d), (uint64_t)(s.t * s.d), qn, qn, kn, (uint64_t)(s.b * s.heads * attention_probs(s.t))};
  for (int i = 0; i < 10; i++) {
    if (!inside((uint64_t)v[i], counts[i], heap_bytes)) {
      napi_throw_range_error(env, NULL, "attention: an operand lies outside the heap or is misaligned");
      return NULL;
    }
  }
  float *f = (float *)heap;
  const float *q = f + v[0] / 4, *k = f + v[1] / 4, *val = f + v[2] / 4, *bias = f + v[3] / 4, *cos = f + v[4] / 4, *sin = f + v[5] / 4;
  float *out = f + v[6] / 4, *qr = f + v[7] / 4, *kr = f + v[8] / 4, *probs = f + v[9] / 4;
  attention_forward(&s, NULL, q, k, val, bias, cos, sin, out, qr, kr, probs);
  return NULL;
}

/*
 * attentionGrad(heap, dyOffset, qrOffset, krOffset, vOffset, probsOffset, cosOffset,
 * sinOffset, dqOffset, dkOffset, dvOffset, b, t, heads, kvHeads, d): from the context's
 * gradient dy [B, T, heads * d] and what the forward kept, the gradients of q, k (before the
 * rotation) and v in their [B, T, n * d] layouts.
 */
napi_value attention_grad(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[15];
  attn_shape s;
  if (!heap_args(env, info, "attentionGrad: (ArrayBuffer, 10 offsets, b, t, heads, kvHeads, d) of non-negative integers expected", &heap, &heap_bytes, 15, v, 0, NULL) ||
      !read_shape(env, v + 10, &s))
    return NULL;
  const uint64_t bt = (uint64_t)(s.b * s.t), qn = bt * (uint64_t)(s.heads * s.d), kn = bt * (uint64_t)(s.kv * s.d);
  const uint64_t counts[10] = {qn, qn, kn, kn, (uint64_t)(s.b * s.heads * attention_probs(s.t)), (uint64_t)(s.t * s.d), (uint64_t)(s.t * s.d), qn, kn, kn};
  for (int i = 0; i < 10; i++) {
    if (!inside((uint64_t)v[i], counts[i], heap_bytes)) {
      napi_throw_range_error(env, NULL, "attentionGrad: an operand lies outside the heap or is misaligned");
      return NULL;
    }
  }
  float *buf = scratch((size_t)attention_grad_floats(s.t, s.d));
  if (!buf) {
    napi_throw_error(env, NULL, "attentionGrad: out of memory");
    return NULL;
  }
  float *f = (float *)heap;
  const float *dy = f + v[0] / 4, *qr = f + v[1] / 4, *kr = f + v[2] / 4, *val = f + v[3] / 4, *probs = f + v[4] / 4, *cos = f + v[5] / 4, *sin = f + v[6] / 4;
  float *dq = f + v[7] / 4, *dk = f + v[8] / 4, *dv = f + v[9] / 4;
  attention_backward(&s, NULL, dy, qr, kr, val, probs, cos, sin, dq, dk, dv, buf);
  return NULL;
}

/* attentionProbs(t): the floats a head's softmax takes for t positions (its blocks of queries by keys). */
napi_value attention_probs_size(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  int32_t t = 0;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 1 || napi_get_value_int32(env, argv[0], &t) != napi_ok || t < 0) {
    napi_throw_type_error(env, NULL, "attentionProbs: a non-negative integer expected");
    return NULL;
  }
  CHECK(env, napi_create_double(env, (double)attention_probs(t), &out));
  return out;
}
