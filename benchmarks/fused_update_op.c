/* edgeseq: a fused Mamba selective-state update as an ONNX Runtime custom op (prototype, CPU).
 *
 * Op "SelectiveStateUpdate", domain "edgeseq.proto", float32:
 *   inputs   dt [B, Di] (after dt_proj and its bias, before softplus), x [B, Di], A [Di, N] (negative),
 *            Bm [B, N], C [B, N], D [Di], h [B, Di, N]
 *   outputs  y [B, Di] = C . h' + D * x,   h' [B, Di, N] = exp(softplus(dt) * A) * h + softplus(dt) * x * Bm
 * One pass over the state per layer instead of ~36 graph kernels (benchmarks/fused_update_op.py).
 *
 * Built against ONNX Runtime's C API without its headers: the API's function table only grows, so
 * the indices below (version 13 of the table, the one targets/ort_capi.py counts from) hold for every
 * later library, and a custom op that says version 13 is read only up to the fields that version had.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void OrtStatus;
typedef struct { const void **(*GetApi)(uint32_t version); const char *(*GetVersionString)(void); } ApiBase;

enum { CREATE_DOMAIN = 26, DOMAIN_ADD = 27, ADD_DOMAIN = 28, TENSOR_DATA = 51, DIMS_COUNT = 61, DIMS = 62,
       TYPE_AND_SHAPE = 65, CONTEXT_INPUT = 90, CONTEXT_OUTPUT = 91, RELEASE_SHAPE = 99 };
static const void **api;
#define CALL(index, type, ...) (((type)api[index])(__VA_ARGS__))
typedef OrtStatus *(*fn_create_domain)(const char *, void **);
typedef OrtStatus *(*fn_domain_add)(void *, const void *);
typedef OrtStatus *(*fn_add_domain)(void *, void *);
typedef OrtStatus *(*fn_data)(void *, void **);
typedef OrtStatus *(*fn_dims_count)(const void *, size_t *);
typedef OrtStatus *(*fn_dims)(const void *, int64_t *, size_t);
typedef OrtStatus *(*fn_type_shape)(const void *, void **);
typedef OrtStatus *(*fn_input)(const void *, size_t, const void **);
typedef OrtStatus *(*fn_output)(void *, size_t, const int64_t *, size_t, void **);
typedef void (*fn_release)(void *);

typedef struct CustomOp {  /* struct OrtCustomOp as of API version 13 */
  uint32_t version;
  void *(*CreateKernel)(const struct CustomOp *, const void *api, const void *info);
  const char *(*GetName)(const struct CustomOp *);
  const char *(*GetExecutionProviderType)(const struct CustomOp *);
  int (*GetInputType)(const struct CustomOp *, size_t);
  size_t (*GetInputTypeCount)(const struct CustomOp *);
  int (*GetOutputType)(const struct CustomOp *, size_t);
  size_t (*GetOutputTypeCount)(const struct CustomOp *);
  void (*KernelCompute)(void *kernel, void *context);
  void (*KernelDestroy)(void *kernel);
  int (*GetInputCharacteristic)(const struct CustomOp *, size_t);
  int (*GetOutputCharacteristic)(const struct CustomOp *, size_t);
  int (*GetInputMemoryType)(const struct CustomOp *, size_t);
} CustomOp;

/* exp over 8 lanes (GCC/Clang vector extensions: AVX2 on x86-64, two NEON registers on aarch64),
 * for x <= 88 (both uses here: dt * A <= 0 and softplus's min(v, 20)): 2^k * p(r), r = x - k ln2 in
 * [-ln2/2, ln2/2], k rounded by the 1.5 * 2^23 shift, p of degree 6 (Taylor coefficients; relative
 * error ~2e-7 before rounding). Inputs below -87 give e^-87: the decay exp(dt * A) is in (0, 1], so
 * that only ever stands in for an underflow. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f splat(float v) { return (v8f){v, v, v, v, v, v, v, v}; }

static inline v8f exp8(v8f x) {
  v8i low = x < splat(-87.0f);
  x = (v8f)(((v8i)splat(-87.0f) & low) | ((v8i)x & ~low));
  const v8f shift = splat(12582912.0f);  /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
  v8f k = (x * splat(1.44269504088896341f) + shift) - shift;
  v8f r = x - k * splat(0.693145751953125f) - k * splat(1.428606765330187045e-6f);
  v8f p = splat(0.0013888889f);
  p = p * r + splat(0.008333334f);
  p = p * r + splat(0.041666668f);
  p = p * r + splat(0.16666667f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  return (v8f)((v8i)p + (__builtin_convertvector(k, v8i) << 23));
}

static inline float exp1(float x) {  /* the same function, one lane */
  v8f v = exp8(splat(x));
  return v[0];
}

/* log over 8 lanes, w >= 1 and finite: w = m * 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
 * s = (m - 1) / (m + 1), |s| < 0.172, series to s^9 (error below float rounding). */
static inline v8f log8(v8f w) {
  v8i bits = (v8i)w;
  v8i e = ((bits >> 23) & 0xff) - 127;
  v8f m = (v8f)((bits & 0x007fffff) | 0x3f800000);  /* [1, 2) */
  v8i big = m > splat(1.41421356f);
  m = (v8f)(((v8i)(m * splat(0.5f)) & big) | ((v8i)m & ~big));
  e = e - big;  /* big is -1 where set */
  v8f s = (m - splat(1.0f)) / (m + splat(1.0f)), s2 = s * s;
  v8f series = s2 * (splat(1.0f / 3) + s2 * (splat(1.0f / 5) + s2 * (splat(1.0f / 7) + s2 * splat(1.0f / 9))));
  return __builtin_convertvector(e, v8f) * splat(0.693147180559945f) + splat(2.0f) * (s + s * series);
}

/* softplus over 8 lanes, threshold 20 as torch: v above it, else log1p(e^v) with log1p(u) as
 * log(w) * u / (w - 1), w = 1 + u (where w rounds to 1, u itself): within 2.4e-7 relative of float64 for
 * v > -87; below, e^-87 (1.6e-38) for a value under it. */
static inline v8f softplus8(v8f v) {
  v8i over = v > splat(20.0f);
  v8f u = exp8((v8f)(((v8i)splat(20.0f) & over) | ((v8i)v & ~over)));
  v8f w = u + splat(1.0f), wm1 = w - splat(1.0f);
  v8i tiny = wm1 == splat(0.0f);
  v8f ratio = u / (v8f)(((v8i)splat(1.0f) & tiny) | ((v8i)wm1 & ~tiny));
  v8f r = log8(w) * ratio;
  r = (v8f)(((v8i)u & tiny) | ((v8i)r & ~tiny));
  return (v8f)(((v8i)v & over) | ((v8i)r & ~over));
}

static void shape_of(const void *value, int64_t *dims, size_t *count) {
  void *info;
  CALL(TYPE_AND_SHAPE, fn_type_shape, value, &info);
  CALL(DIMS_COUNT, fn_dims_count, info, count);
  CALL(DIMS, fn_dims, info, dims, *count);
  CALL(RELEASE_SHAPE, fn_release, info);
}

static void compute(void *kernel, void *context) {
  (void)kernel;
  const void *in[7];
  float *p[7];
  for (size_t i = 0; i < 7; i++) {
    CALL(CONTEXT_INPUT, fn_input, context, i, &in[i]);
    CALL(TENSOR_DATA, fn_data, (void *)in[i], (void **)&p[i]);
  }
  int64_t x_dims[8], h_dims[8];
  size_t x_rank, h_rank;
  shape_of(in[1], x_dims, &x_rank);
  shape_of(in[6], h_dims, &h_rank);
  const int64_t batch = h_dims[0], d_inner = h_dims[1], n_state = h_dims[2];
  void *out_y, *out_h;
  float *y, *h_new;
  CALL(CONTEXT_OUTPUT, fn_output, context, 0, x_dims, x_rank, &out_y);
  CALL(CONTEXT_OUTPUT, fn_output, context, 1, h_dims, h_rank, &out_h);
  CALL(TENSOR_DATA, fn_data, out_y, (void **)&y);
  CALL(TENSOR_DATA, fn_data, out_h, (void **)&h_new);
  const float *dt_in = p[0], *x = p[1], *A = p[2], *Bm = p[3], *C = p[4], *D = p[5], *h = p[6];
  for (int64_t b = 0; b < batch; b++) {
    /* softplus of every channel first: independent vectors, so their long exp/log/divide chains
     * overlap (computed 8 at a time inside the channel loop they serialized: one 1536 x 16 layer took
     * 37 us instead of 21 here, this VM, one thread) */
    float dt_all[d_inner + 8];
    for (int64_t d = 0; d < d_inner; d += 8) {
      v8f v = splat(0.0f);
      memcpy(&v, dt_in + b * d_inner + d, (size_t)(d_inner - d < 8 ? d_inner - d : 8) * 4);
      v = softplus8(v);
      memcpy(dt_all + d, &v, 32);
    }
    for (int64_t d = 0; d < d_inner; d++) {
      const float xv = x[b * d_inner + d];
      const float dt = dt_all[d];
      const float dx = dt * xv;
      const float *a_row = A + d * n_state, *bv = Bm + b * n_state, *cv = C + b * n_state;
      const float *h_row = h + (b * d_inner + d) * n_state;
      float *o_row = h_new + (b * d_inner + d) * n_state;
      v8f acc8 = splat(0.0f);
      int64_t n = 0;
      for (; n + 8 <= n_state; n += 8) {  /* d_state 16: two vectors */
        v8f a, hv, bb, cc;
        memcpy(&a, a_row + n, 32);
        memcpy(&hv, h_row + n, 32);
        memcpy(&bb, bv + n, 32);
        memcpy(&cc, cv + n, 32);
        const v8f hn = exp8(splat(dt) * a) * hv + splat(dx) * bb;
        memcpy(o_row + n, &hn, 32);
        acc8 += hn * cc;
      }
      float acc = 0.0f;
      for (int k = 0; k < 8; k++) acc += acc8[k];
      for (; n < n_state; n++) {
        const float hn = exp1(dt * a_row[n]) * h_row[n] + dx * bv[n];
        o_row[n] = hn;
        acc += hn * cv[n];
      }
      y[b * d_inner + d] = acc + D[d] * xv;
    }
  }
}

static void *create_kernel(const CustomOp *op, const void *api_, const void *info) { (void)op; (void)api_; (void)info; return (void *)1; }
static const char *name(const CustomOp *op) { (void)op; return "SelectiveStateUpdate"; }
static const char *provider(const CustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int float_type(const CustomOp *op, size_t i) { (void)op; (void)i; return 1; /* FLOAT */ }
static size_t inputs(const CustomOp *op) { (void)op; return 7; }
static size_t outputs(const CustomOp *op) { (void)op; return 2; }
static void destroy(void *kernel) { (void)kernel; }
static int required(const CustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int default_memory(const CustomOp *op, size_t i) { (void)op; (void)i; return 0; }

static CustomOp op = {13, create_kernel, name, provider, float_type, inputs, float_type, outputs, compute, destroy,
                      required, required, default_memory};

OrtStatus *RegisterCustomOps(void *options, const ApiBase *base) {
  api = base->GetApi(13);
  void *domain;
  OrtStatus *status = CALL(CREATE_DOMAIN, fn_create_domain, "edgeseq.proto", &domain);
  if (status) return status;
  if ((status = CALL(DOMAIN_ADD, fn_domain_add, domain, &op))) return status;
  return CALL(ADD_DOMAIN, fn_add_domain, options, domain);
}
