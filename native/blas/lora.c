/*
 * A LoRA-adapted projection, y = x W^T + s (x * mask) A^T B^T, as one kernel forward and one
 * per gradient, in place on the wasm heap: composed of tfjs ops it is five or six kernels
 * forward (three products, the scaling, the sum, the dropout mask) and about ten backward,
 * and a step runs it for every adapted projection of every layer. The products are OpenBLAS
 * sgemm (row_major_sgemm, which cuts the rank-r ones) with the scaling as alpha and the branch
 * summed into y as beta = 1.
 */
#include <cblas.h>
#include "addon.h"

#define SGEMM row_major_sgemm
#define N CblasNoTrans
#define T CblasTrans

/* Both calls' operands: byte offsets by role and the sizes n, in, out (outs), r. */
typedef struct {
  float *heap;
  int64_t x, w, a, b, mask, xa, out;
  int64_t n, in, outs, r;
  int has_mask;
  double scaling;
} lora_args;

static int operands_inside(const lora_args *g, size_t heap_bytes, int64_t out_count) {
  const uint64_t n = (uint64_t)g->n, in = (uint64_t)g->in, outs = (uint64_t)g->outs, r = (uint64_t)g->r;
  return n <= INT32_MAX && in <= INT32_MAX && outs <= INT32_MAX && r <= INT32_MAX && inside((uint64_t)g->x, n * in, heap_bytes) &&
         inside((uint64_t)g->w, outs * in, heap_bytes) && inside((uint64_t)g->a, r * in, heap_bytes) && inside((uint64_t)g->b, outs * r, heap_bytes) &&
         (!g->has_mask || inside((uint64_t)g->mask, n * in, heap_bytes)) && inside((uint64_t)g->xa, n * r, heap_bytes) &&
         inside((uint64_t)g->out, (uint64_t)out_count, heap_bytes);
}

/* x * mask written into buf, or x itself without a mask. */
static const float *masked(const float *x, const float *mask, int64_t count, float *buf) {
  if (!mask) return x;
  for (int64_t i = 0; i < count; i++) buf[i] = x[i] * mask[i];
  return buf;
}

/*
 * Whether a product takes the adapter merged into its weight, W + s B A, instead of the
 * branch's two rank-r products: without dropout (the branch's input is x itself), and when the
 * rows are at least the weight's sides, so that building the merged weight (a copy of W and an
 * [out, r] x [r, in] product) costs less than the [n, r] x [r, out] product it replaces (forward;
 * backward, the [n, r] x [r, in] one). A 4 x 128 SFT step took 35-37 ms against 38-41 in four
 * alternated runs of 150 steps. xa is still taken: B's gradient reads it.
 */
static int merges(const proj_t *p, int64_t n) {
  return p->r > 0 && !p->mask && n >= p->in && n >= p->out;
}

/* W + s B A into m [out, in]. */
static void merged_weight(const proj_t *p, float *m) {
  memcpy(m, p->w, 4u * (size_t)(p->out * p->in));
  SGEMM(N, N, p->out, p->in, p->r, p->scaling, p->b, p->r, p->a, p->in, 1.0f, m, p->in);
}

void proj_forward(const proj_t *p, const float *x, float *y, int accumulate, float *xa, int64_t n, float *buf) {
  if (n == 0 || p->out == 0) return;
  const int merge = merges(p, n);
  if (merge) merged_weight(p, buf);
  SGEMM(N, T, n, p->out, p->in, 1.0f, x, p->in, merge ? buf : p->w, p->in, accumulate ? 1.0f : 0.0f, y, p->out);
  if (p->r == 0) return;
  if (merge) {
    SGEMM(N, T, n, p->r, p->in, p->scaling, x, p->in, p->a, p->in, 0.0f, xa, p->r);
    return;
  }
  SGEMM(N, T, n, p->r, p->in, p->scaling, masked(x, p->mask, n * p->in, buf), p->in, p->a, p->in, 0.0f, xa, p->r);
  SGEMM(N, T, n, p->out, p->r, 1.0f, xa, p->r, p->b, p->r, 1.0f, y, p->out);
}

void proj_backward(const proj_t *p, const float *dy, const float *x, const float *xa, float *dx, int accumulate, float *da, float *db, int64_t n, float *buf) {
  if (n == 0) {
    if (da) memset(da, 0, 4u * (size_t)(p->r * p->in));
    if (db) memset(db, 0, 4u * (size_t)(p->out * p->r));
    return;
  }
  /* dy B [n, r] first, then a masked input (for A), the branch's input gradient (for x) or the merged weight after it. */
  float *dyb = buf, *wide = buf + n * p->r;
  const int merge = dx && merges(p, n);
  if (merge) merged_weight(p, wide);
  if (dx) SGEMM(N, N, n, p->in, p->out, 1.0f, dy, p->out, merge ? wide : p->w, p->in, accumulate ? 1.0f : 0.0f, dx, p->in);
  if (p->r == 0) return;
  if (db) SGEMM(T, N, p->out, p->r, n, 1.0f, dy, p->out, xa, p->r, 0.0f, db, p->r);
  if (!(dx && !merge) && !da) return;
  SGEMM(N, N, n, p->r, p->out, 1.0f, dy, p->out, p->b, p->r, 0.0f, dyb, p->r);
  if (da) SGEMM(T, N, p->r, p->in, n, p->scaling, dyb, p->r, masked(x, p->mask, n * p->in, wide), p->in, 0.0f, da, p->in);
  if (!dx || merge) return;
  if (!p->mask) {
    SGEMM(N, N, n, p->in, p->r, p->scaling, dyb, p->r, p->a, p->in, 1.0f, dx, p->in);
    return;
  }
  SGEMM(N, N, n, p->in, p->r, p->scaling, dyb, p->r, p->a, p->in, 0.0f, wide, p->in);
  for (int64_t i = 0; i < n * p->in; i++) dx[i] += wide[i] * p->mask[i];
}

/* The projection of a call's operands. */
static proj_t proj_of(const lora_args *g) {
  const float *h = g->heap;
  return (proj_t){h + g->w / 4, h + g->a / 4, h + g->b / 4, g->has_mask ? h + g->mask / 4 : NULL, g->in, g->outs, g->r, (float)g->scaling};
}

/*
 * loraLinear(heap, xOffset, wOffset, aOffset, bOffset, maskOffset, yOffset, xaOffset, n, in,
 * out, r, hasMask, scaling): for x [n, in], W [out, in], A [r, in], B [out, r] and, when
 * hasMask, a dropout mask [n, in]: xa = scaling * (x * mask) A^T [n, r] (kept for B's
 * gradient) and y = x W^T + xa B^T [n, out].
 */
napi_value lora_linear(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[12];
  double scaling = 0;
  if (!heap_args(env, info, "loraLinear: (ArrayBuffer, 7 offsets, n, in, out, r, hasMask, scaling) expected", &heap, &heap_bytes, 12, v, 1, &scaling)) return NULL;
  const lora_args g = {heap, v[0], v[1], v[2], v[3], v[4], v[6], v[5], v[7], v[8], v[9], v[10], v[11] != 0, scaling};
  if (!operands_inside(&g, heap_bytes, g.n * g.outs)) {
    napi_throw_range_error(env, NULL, "loraLinear: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const proj_t p = proj_of(&g);
  const int wide = g.has_mask || merges(&p, g.n);
  float *buf = wide ? scratch((size_t)(g.n * g.in)) : NULL;
  if (wide && !buf) {
    napi_throw_error(env, NULL, "loraLinear: out of memory");
    return NULL;
  }
  proj_forward(&p, g.heap + g.x / 4, g.heap + g.out / 4, 0, g.heap + g.xa / 4, g.n, buf);
  return NULL;
}

/*
 * loraLinearGrad(heap, which, dyOffset, xOffset, wOffset, aOffset, bOffset, maskOffset,
 * xaOffset, outOffset, n, in, out, r, hasMask, scaling): the gradient of loraLinear's y, for
 * dy [n, out], with respect to x (which 0: dy W + (scaling (dy B) A) * mask), A (which 1:
 * scaling (dy B)^T (x * mask)), B (which 2: dy^T xa) or W (which 3: dy^T x).
 */
napi_value lora_linear_grad(napi_env env, napi_callback_info info) {
  void *heap = NULL;
  size_t heap_bytes = 0;
  int64_t v[14];
  double scaling = 0;
  if (!heap_args(env, info, "loraLinearGrad: (ArrayBuffer, which, 8 offsets, n, in, out, r, hasMask, scaling) expected", &heap, &heap_bytes, 14, v, 1, &scaling)) return NULL;
  const int64_t which = v[0], dy_off = v[1];
  const lora_args g = {heap, v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13] != 0, scaling};
  const int64_t sizes[4] = {g.n * g.in, g.r * g.in, g.outs * g.r, g.outs * g.in};
  if (which > 3) {
    napi_throw_range_error(env, NULL, "loraLinearGrad: which must be 0-3");
    return NULL;
  }
  if (!operands_inside(&g, heap_bytes, sizes[which]) || !inside((uint64_t)dy_off, (uint64_t)(g.n * g.outs), heap_bytes)) {
    napi_throw_range_error(env, NULL, "loraLinearGrad: an operand lies outside the heap or is misaligned");
    return NULL;
  }
  const float *dy = g.heap + dy_off / 4, *x = g.heap + g.x / 4;
  float *out = g.heap + g.out / 4;
  if (which == 3) {
    if (sizes[which] > 0 && g.n == 0) memset(out, 0, 4u * (size_t)sizes[which]);
    else if (sizes[which] > 0) SGEMM(T, N, g.outs, g.in, g.n, 1.0f, dy, g.outs, x, g.in, 0.0f, out, g.in);
    return NULL;
  }
  const proj_t p = proj_of(&g);
  float *buf = scratch((size_t)(g.n * g.r + (g.has_mask || merges(&p, g.n) ? g.n * g.in : 0)));
  if (!buf) {
    napi_throw_error(env, NULL, "loraLinearGrad: out of memory");
    return NULL;
  }
  proj_backward(&p, dy, x, g.heap + g.xa / 4, which == 0 ? out : NULL, 0, which == 1 ? out : NULL, which == 2 ? out : NULL, g.n, buf);
  return NULL;
}
