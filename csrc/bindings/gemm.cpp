// pybind11 glue for matmul and the fused linear layer: argument checks and GIL release; the
// passes, keep bits and scratch are csrc/cpu/linear.cpp's.
#include <algorithm>
#include <cmath>
#include <string>

#include <vector>

#include "bindings/common.h"
#include "bindings/loss_sums.h"
#include "bindings/optim_args.h"
#include "cpu/kernels.h"
#include "cpu/linear.h"
#include "cpu/metrics.h"
#include "cpu/train.h"

namespace fastnn {

namespace {

void require_2d(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + ": expected a 2-D array, got shape " + shape_str(a));
}

void require_shape(const py::array& a, const char* name, int64_t r, int64_t c) {
  require_2d(a, name);
  if (a.shape(0) != r || a.shape(1) != c)
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(r) + ", " + std::to_string(c) +
                          "), got " + shape_str(a));
}

// Element strides of a 2-D operand (any strides that are whole elements, the data aligned).
void element_strides(const py::array& a, const char* name, int64_t* rs, int64_t* cs) {
  const auto item = static_cast<int64_t>(a.itemsize());
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || a.strides(0) % item || a.strides(1) % item)
    throw py::value_error(std::string(name) + ": expected strides that are whole elements and aligned data");
  *rs = a.strides(0) / item;
  *cs = a.strides(1) / item;
}

// An optional 1-D C-contiguous array of the operands' dtype with n elements; null data if None.
const void* optional_vector(const py::object& o, const py::array& like, const char* name, int64_t n,
                            py::array* keep) {
  if (o.is_none()) return nullptr;
  *keep = o.cast<py::array>();
  if (!like.dtype().equal(keep->dtype()))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(like) + ", got " + dtype_str(*keep));
  if (keep->ndim() != 1 || keep->shape(0) != n)
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(n) + ",), got " +
                          shape_str(*keep));
  require_c_contiguous(*keep, name);
  return keep->data();
}

// An optional C-contiguous output of the operands' dtype and shape (r, c).
void* optional_output(const py::object& o, const py::array& like, const char* name, int64_t r, int64_t c,
                      py::array* keep) {
  if (o.is_none()) return nullptr;
  *keep = o.cast<py::array>();
  if (!like.dtype().equal(keep->dtype()))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(like) + ", got " + dtype_str(*keep));
  require_shape(*keep, name, r, c);
  require_c_contiguous(*keep, name);
  require_writeable(*keep, name);
  return keep->mutable_data();
}

// An optional 1-D C-contiguous writeable output of the operands' dtype with n elements.
void* optional_out_vector(const py::object& o, const py::array& like, const char* name, int64_t n, py::array* keep) {
  if (o.is_none()) return nullptr;
  const void* p = optional_vector(o, like, name, n, keep);
  require_writeable(*keep, name);
  return const_cast<void*>(p);
}

uint8_t* optional_bits(const py::object& o, const char* name, int64_t rows, int64_t n, bool writeable,
                       py::array* keep) {
  if (o.is_none()) return nullptr;
  *keep = o.cast<py::array>();
  if (!keep->dtype().is(py::dtype::of<uint8_t>()))
    throw py::type_error(std::string(name) + ": expected uint8, got " + dtype_str(*keep));
  require_shape(*keep, name, rows, cpu::pos_row_bytes(n));
  require_c_contiguous(*keep, name);
  if (writeable) require_writeable(*keep, name);
  return static_cast<uint8_t*>(keep->mutable_data());
}

void check_act(int act) {
  if (act < 0 || act >= kActCount) throw py::value_error("act: unknown activation id " + std::to_string(act));
}

ActParams act_params(double slope, double alpha, double scale) {
  ActParams p;
  p.slope = slope;
  p.alpha = alpha;
  p.scale = scale;
  return p;
}

cpu::LinearRandom linear_random(bool dropout, uint32_t drop_thr, double drop_scale, bool dropconnect, uint32_t dc_thr,
                                double dc_scale, uint64_t seed, uint64_t offset) {
  cpu::LinearRandom r;
  r.seed = seed;
  r.offset = offset;
  r.dropout = dropout;
  r.drop_thr = drop_thr;
  r.drop_scale = drop_scale;
  r.dropconnect = dropconnect;
  r.dc_thr = dc_thr;
  r.dc_scale = dc_scale;
  return r;
}

void check_positions(uint64_t offset, uint64_t n) {
  if (n > 0 && offset > UINT64_MAX - (n - 1))
    throw py::value_error("offset: offset + the number of random positions must be at most 2**64");
}

// precision= of the GEMM bindings: "fp32" or "bf16" (operands rounded to bfloat16 while packed,
// float32 accumulation; float32 operands only). True for bf16.
bool parse_precision(const std::string& precision, DType dt) {
  if (precision == "fp32") return false;
  if (precision != "bf16") throw py::value_error("precision: expected 'fp32' or 'bf16', got '" + precision + "'");
  if (dt != DType::F32) throw py::type_error("precision: 'bf16' needs float32 operands, got float64");
  return true;
}

// linear_backward's update= argument (see its docstring), checked: the state arrays like the
// weight, which must be C-contiguous and writeable (it is updated in place).
struct FusedUpdateSpec {
  int kind = 0;
  py::object s1 = py::none(), s2 = py::none();  // (kept alive for the call)
  void *p1 = nullptr, *p2 = nullptr;
  SgdArgs sgd;
  AdamArgs adam;
  bool sumsq = false;
};

// arg: "update" (the weight w, (N, K)) or "update_bias" (the bias w, (N,)).
FusedUpdateSpec fused_update_spec(const py::object& update, const py::array& w, const char* arg, const char* wname,
                                  int64_t N, int64_t K) {
  FusedUpdateSpec u;
  if (update.is_none()) return u;
  if (!py::isinstance<py::tuple>(update))
    throw py::type_error(std::string(arg) + ": expected None or a tuple ('sgd', ...) / ('adam', ...), got " +
                         std::string(py::str(py::type::of(update).attr("__name__"))));
  const auto t = update.cast<py::tuple>();
  const std::string kind = t.size() ? std::string(py::str(t[0])) : std::string();
  require_c_contiguous(w, wname);
  require_writeable(w, wname);
  auto state = [&](const py::object& o, const char* name) {
    py::array a = o.cast<py::array>();
    if (!a.dtype().equal(w.dtype()))
      throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(w) + " like " + wname + ", got " +
                           dtype_str(a));
    if (K >= 0) require_shape(a, name, N, K);
    else if (a.ndim() != 1 || a.shape(0) != N)
      throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(N) + ",) like " + wname);
    require_c_contiguous(a, name);
    require_writeable(a, name);
    return a;
  };
  if (kind == "sgd" && t.size() == 10) {
    u.kind = FusedUpdate<float>::kSgd;
    const double momentum = t[3].cast<double>();
    if (momentum != 0.0) {
      if (t[1].is_none()) throw py::value_error("momentum_buffer: required when momentum != 0");
      py::array a = state(t[1], "momentum_buffer");
      u.p1 = a.mutable_data();
      u.s1 = a;
    }
    u.sgd = sgd_args(t[2].cast<double>(), momentum, t[4].cast<double>(), t[5].cast<double>(), t[6].cast<double>(),
                     t[7].cast<bool>(), t[8].cast<bool>());
    u.sumsq = t[9].cast<bool>();
  } else if (kind == "adam" && t.size() == 12) {
    u.kind = FusedUpdate<float>::kAdam;
    py::array a1 = state(t[1], "exp_avg"), a2 = state(t[2], "exp_avg_sq");
    u.p1 = a1.mutable_data();
    u.p2 = a2.mutable_data();
    u.s1 = a1;
    u.s2 = a2;
    u.adam = adam_args(t[3].cast<double>(), t[4].cast<double>(), t[5].cast<double>(), t[6].cast<double>(),
                       t[7].cast<double>(), t[8].cast<double>(), t[9].cast<double>(), t[10].cast<int64_t>());
    u.sumsq = t[11].cast<bool>();
  } else {
    throw py::value_error(std::string(arg) + ": expected ('sgd', 9 arguments) or ('adam', 11 arguments), got " +
                          std::string(py::str(py::repr(update))));
  }
  return u;
}

// cpu::linear_backward with the optimizer's fused updates (specs parsed with the GIL held; w and
// bias: the arrays they update): b holds everything else. *ws / *bs: the float64 sums of the
// squared new weight / bias when the specs ask for them (the weight's from one slot per tile of
// GemmArgs::update's grid, added in order). Runs with the GIL released.
template <class T>
void backward_updated(cpu::LinearBackwardArgs<T>& b, const FusedUpdateSpec& up, T* w, const FusedUpdateSpec& ub,
                      T* bias, double* ws, double* bs) {
  FusedUpdate<T> fu, fb;
  std::vector<double> sumsq;
  if (up.kind) {
    fu.kind = up.kind;
    fu.w = w;
    fu.s1 = static_cast<T*>(up.p1);
    fu.s2 = static_cast<T*>(up.p2);
    fu.ld = b.K;
    fu.sgd = up.sgd;
    fu.adam = up.adam;
    if (up.sumsq) {
      const auto& gk = gemm_kernels_for<T>();
      fu.sumsq_ld = (b.K + gk.nr - 1) / gk.nr;
      sumsq.assign(static_cast<size_t>((b.N + gk.mr - 1) / gk.mr * fu.sumsq_ld), 0.0);
      fu.sumsq = sumsq.data();
    }
    b.update = &fu;
  }
  if (ub.kind) {
    fb.kind = ub.kind;
    fb.w = bias;
    fb.s1 = static_cast<T*>(ub.p1);
    fb.s2 = static_cast<T*>(ub.p2);
    fb.sgd = ub.sgd;
    fb.adam = ub.adam;
    fb.sumsq = ub.sumsq ? bs : nullptr;
    b.update_bias = &fb;
  }
  cpu::linear_backward(b);
  if (up.sumsq) {
    double total = 0.0;
    for (double v : sumsq) total += v;
    *ws = total;
  }
}

// What linear_backward returns: the weight's sum or None, or with a bias update (that, the bias's).
py::object update_result(const FusedUpdateSpec& up, double ws, const FusedUpdateSpec& ub, double bs) {
  py::object w = up.sumsq ? py::object(py::float_(ws)) : py::object(py::none());
  if (!ub.kind) return w;
  return py::make_tuple(w, ub.sumsq ? py::object(py::float_(bs)) : py::object(py::none()));
}

// ---- LinearChain: the training forward and backward of a stack of Linear layers, one call each ----
// fastnn.nn.Sequential's CPU path for a network of Linear layers (what an MLP is): the layers'
// kernel calls in a loop here instead of one Python call per layer and direction, which cost more
// than the small layers' kernels (a bf16 step of a 784-512-256-10 MLP spent ~15 % in Python). Each
// layer runs cpu::linear_forward / cpu::linear_backward with exactly the arguments that
// linear_forward / linear_backward above would get from fastnn.nn.Linear: the same bits.
class LinearChain {
 public:
  // layers: one tuple per layer, (weight (N, K), bias (N,) or None, act, slope, alpha, scale, dropout,
  // drop_threshold, drop_scale, dropconnect, dc_threshold, dc_scale); layer l's K is layer l-1's N.
  explicit LinearChain(const py::list& layers) {
    if (py::len(layers) == 0) throw py::value_error("layers: expected at least one layer");
    for (size_t l = 0; l < py::len(layers); ++l) {
      const auto t = layers[l].cast<py::tuple>();
      if (t.size() != 12) throw py::value_error("layers: expected tuples of 12 items");
      Layer L;
      L.w = t[0].cast<py::array>();
      const std::string name = "layers[" + std::to_string(l) + "] weight";
      const DType dt = float_dtype(L.w, name.c_str());
      if (l == 0) dt_ = dt;
      else if (dt != dt_) throw py::type_error(name + ": expected the first layer's dtype");
      require_2d(L.w, name.c_str());
      require_c_contiguous(L.w, name.c_str());
      require_writeable(L.w, name.c_str());
      L.N = L.w.shape(0);
      L.K = L.w.shape(1);
      if (l > 0 && L.K != layers_.back().N)
        throw py::value_error(name + ": expected in_features " + std::to_string(layers_.back().N) +
                              " (the previous layer's out_features), got " + std::to_string(L.K));
      if (!t[1].is_none()) {
        L.b = t[1].cast<py::array>();
        L.bias = optional_vector(t[1], L.w, "bias", L.N, &L.b);
      }
      L.act = t[2].cast<int>();
      check_act(L.act);
      if (L.act == kActPrelu) throw py::value_error("layers: PReLU layers go through linear_forward");
      L.params = act_params(t[3].cast<double>(), t[4].cast<double>(), t[5].cast<double>());
      L.rnd = linear_random(t[6].cast<bool>(), t[7].cast<uint32_t>(), t[8].cast<double>(), t[9].cast<bool>(),
                            t[10].cast<uint32_t>(), t[11].cast<double>(), 0, 0);
      L.signs = cpu::act_needs_signs(L.act);
      L.keep_y = cpu::act_needs_output(L.act);
      layers_.push_back(std::move(L));
    }
  }

  // The training forward of x (M, K0), C-contiguous: returns the last layer's output (a new array);
  // keeps what the backward needs. seeds: one (seed, offset) per layer (None for a layer without
  // dropout or DropConnect), the positions its forward draws, as linear_forward's.
  py::array forward(const py::array& x, const py::list& seeds, const std::string& precision) {
    const bool bf16 = parse_precision(precision, dt_);
    check_batch(x, "x", layers_[0].K);
    if (py::len(seeds) != layers_.size()) throw py::value_error("seeds: expected one entry per layer");
    const int64_t M = x.shape(0);
    py::object in = x;
    for (size_t l = 0; l < layers_.size(); ++l) {
      Layer& L = layers_[l];
      L.rnd.seed = L.rnd.offset = 0;
      if (L.rnd.dropout || L.rnd.dropconnect) {
        const auto so = seeds[l].cast<py::tuple>();
        L.rnd.seed = so[0].cast<uint64_t>();
        L.rnd.offset = so[1].cast<uint64_t>();
        check_positions(L.rnd.offset, static_cast<uint64_t>(M) * static_cast<uint64_t>(L.N) +
                                          static_cast<uint64_t>(L.N) * static_cast<uint64_t>(L.K));
      }
      L.x = in;
      L.y = host_empty({M, L.N}, L.w.dtype());
      L.pos = L.signs ? host_empty({M, cpu::pos_row_bytes(L.N)}, py::dtype::of<uint8_t>()) : py::object(py::none());
      in = L.y;
    }
    M_ = M;
    std::vector<void*> ys(layers_.size()), pos(layers_.size());
    for (size_t l = 0; l < layers_.size(); ++l) {
      ys[l] = data_of(layers_[l].y);
      pos[l] = layers_[l].signs ? data_of(layers_[l].pos) : nullptr;
    }
    const void* x0 = data_of(x);
    {
      py::gil_scoped_release nogil;
      dispatch_float(dt_, [&](auto zero) {
        using T = decltype(zero);
        forward_kernels<T>(M, static_cast<const T*>(x0), ys, pos, bf16);
      });
    }
    return layers_.back().y.cast<py::array>();
  }

  // The backward of the last forward (once): g (M, N_last) C-contiguous; grads: per layer
  // (grad_w, grad_b or None), the arrays the gradients go to (a fused update's grad_w is scratch);
  // updates: per layer (update or None, bias update or None), linear_backward's update= tuples.
  // Returns (grad_x of the first layer or None, per layer what linear_backward returns).
  py::tuple backward(const py::array& g, bool need_input_grad, const py::list& grads, const py::list& updates,
                     const std::string& precision) {
    if (M_ < 0) throw std::runtime_error("LinearChain.backward: call forward first (one backward per forward)");
    const bool bf16 = parse_precision(precision, dt_);
    const size_t n = layers_.size();
    check_batch(g, "grad_output", layers_.back().N);
    if (g.shape(0) != M_)
      throw py::value_error("grad_output: expected " + std::to_string(M_) + " rows (the forward's batch), got " +
                            std::to_string(g.shape(0)));
    if (py::len(grads) != n || py::len(updates) != n)
      throw py::value_error("grads, updates: expected one entry per layer");
    std::vector<void*> gw(n), gb(n);
    std::vector<py::array> keep(2 * n);
    std::vector<FusedUpdateSpec> up(n), ub(n);
    std::vector<py::object> gx(n);
    for (size_t l = 0; l < n; ++l) {
      Layer& L = layers_[l];
      const auto gt = grads[l].cast<py::tuple>();
      const auto ut = updates[l].cast<py::tuple>();
      if (gt.size() != 2 || ut.size() != 2) throw py::value_error("grads, updates: expected pairs");
      gw[l] = optional_output(gt[0], L.w, "grad_w", L.N, L.K, &keep[2 * l]);
      if (!gw[l]) throw py::value_error("grad_w: required");
      gb[l] = L.bias ? optional_out_vector(gt[1], L.w, "grad_b", L.N, &keep[2 * l + 1]) : nullptr;
      up[l] = fused_update_spec(ut[0], L.w, "update", "weight", L.N, L.K);
      if (L.bias) ub[l] = fused_update_spec(ut[1], L.b, "update_bias", "bias", L.N, -1);
      if (ub[l].kind && !gb[l]) throw py::value_error("update_bias: needs grad_b (the bias gradient is reduced into it first)");
      gx[l] = l > 0 || need_input_grad ? py::object(host_empty({M_, L.K}, L.w.dtype())) : py::object(py::none());
    }
    std::vector<double> ws(n, 0.0), bs(n, 0.0);
    std::vector<void*> ys(n), pos(n), gxp(n);
    for (size_t l = 0; l < n; ++l) {
      ys[l] = data_of(layers_[l].y);
      pos[l] = layers_[l].signs ? data_of(layers_[l].pos) : nullptr;
      gxp[l] = gx[l].is_none() ? nullptr : data_of(gx[l]);
    }
    const void* x0 = data_of(layers_[0].x);
    {
      py::gil_scoped_release nogil;
      dispatch_float(dt_, [&](auto zero) {
        using T = decltype(zero);
        backward_kernels<T>(M_, cptr<T>(g), static_cast<const T*>(x0), ys, pos, gxp, gw, gb, up, ub, ws, bs, bf16);
      });
    }
    py::list results;
    for (size_t l = 0; l < n; ++l) results.append(update_result(up[l], ws[l], ub[l], bs[l]));
    release();
    return py::make_tuple(gx[0], results);
  }

  // Steps [s0, s1) of one epoch of fastnn.train.Trainer.fit on the CPU for this chain (the
  // _CPURun loop's body for a network of Linear layers, a built-in loss and a fused SGD/Adam): per
  // step, the batch (rows [s*bs, min(n, (s+1)*bs)) of X and Y, gathered through `order` when given),
  // the forward, the loss and its gradient, the argmax hits, the backward with each parameter's
  // fused update. The Python loop's per-step work (~75 us a step on Zen 3: the layers' and the
  // optimizer's argument building, the loss and metric calls) done here between the kernels, with
  // the same kernels and the same scalars, so the same bits.
  //   loss_kind 0: softmax cross-entropy of int64 labels Y (n,); 1: squared error of targets Y (n, C)
  //   scaled by 2 / (M C), as fastnn.nn.MSELoss; 2: scikit-learn's MLP output layer (mlp_head, the
  //   estimators' loop) on float64 encoded targets Y (n, C), head = (output activation kind, alpha,
  //   Adam's epsilon or -1 for SGD, beta_2, the optimizer's step count before s0, ||W||^2 of the
  //   weights before s0): per step the weights' l2 is alpha / M, Adam's eps
  //   epsilon / sqrt(1 - beta_2^t), the loss gets 0.5 alpha ||W||^2 / M with ||W||^2 the previous
  //   update's sum (the weight updates return it), and a non-finite loss does not stop the steps
  //   (as that loop). hits: count the argmax hits (kind 0).
  //   updates: per layer (weight update, bias update), the tuples of optim's fused_update for the
  //   first step (s0); step j of the chunk uses lr = lrs[j] * lr_scales[l] (weight, bias), SGD's
  //   `first` only at j = 0, Adam's step t0 + j. seed / offset: fastnn's stream where the first
  //   step's dropout reserves its positions (random.Generator.reserve: 64-position blocks).
  //   out (s1 - s0, 3) float64: per step (the loss, its contribution to the epoch's sum, ||W||^2 of
  //   the updated weights: kind 2).
  //   progress (5,) int64: (steps done, hits, the stream offset after them, the step whose loss was
  //   not finite or -1, stop): the steps stop early when a signal handler run between two of them
  //   sets `stop`; a KeyboardInterrupt raised there propagates. progress tells what ran.
  void train_steps(const py::array& X, const py::array& Y, const py::object& order_obj, int64_t s0, int64_t s1,
                   int64_t bs, int loss_kind, bool hits, const py::list& grads, const py::list& updates,
                   const py::array& lrs, const py::list& lr_scales, uint64_t seed, uint64_t offset,
                   const std::string& precision, py::array out, py::array progress, const py::object& head) {
    const bool bf16 = parse_precision(precision, dt_);
    const size_t nl = layers_.size();
    check_batch(X, "X", layers_[0].K);
    const int64_t n = X.shape(0), d = X.shape(1), C = layers_.back().N;
    if (bs < 1 || s0 < 0 || s1 < s0 || (s1 > 0 && (s1 - 1) * bs >= n))
      throw py::value_error("s0, s1, bs: steps outside the data");
    const int64_t steps = s1 - s0;
    if (loss_kind == 0) {
      if (!Y.dtype().equal(py::dtype::of<int64_t>()) || Y.ndim() != 1 || Y.shape(0) != n)
        throw py::type_error("Y: expected int64 labels of shape (" + std::to_string(n) + ",)");
    } else if (loss_kind == 1) {
      check_batch(Y, "Y", C);
      if (Y.shape(0) != n) throw py::value_error("Y: expected " + std::to_string(n) + " rows like X");
    } else if (loss_kind == 2) {
      if (!Y.dtype().equal(py::dtype::of<double>()) || Y.ndim() != 2 || Y.shape(0) != n || Y.shape(1) != C)
        throw py::type_error("Y: expected float64 encoded targets of shape (" + std::to_string(n) + ", " +
                             std::to_string(C) + ")");
    } else {
      throw py::value_error("loss_kind: expected 0 (cross-entropy), 1 (squared error) or 2 (mlp_head)");
    }
    int head_kind = 0;
    double alpha = 0.0, epsilon = -1.0, beta2 = 0.0, sq = 0.0;
    int64_t step0 = 0;
    if (loss_kind == 2) {
      const auto h = head.cast<py::tuple>();
      if (h.size() != 6) throw py::value_error("head: expected (kind, alpha, epsilon, beta_2, step0, sq)");
      head_kind = h[0].cast<int>();
      alpha = h[1].cast<double>();
      epsilon = h[2].cast<double>();
      beta2 = h[3].cast<double>();
      step0 = h[4].cast<int64_t>();
      sq = h[5].cast<double>();
      if (head_kind < 0 || head_kind > 2) throw py::value_error("head: kind expected 0, 1 or 2");
    }
    require_c_contiguous(Y, "Y");
    const int64_t r0 = s0 * bs, r1 = std::min(n, s1 * bs);  // the chunk's rows
    const int64_t* order = nullptr;
    py::array order_arr;
    if (!order_obj.is_none()) {
      order_arr = order_obj.cast<py::array>();
      if (!order_arr.dtype().equal(py::dtype::of<int64_t>()) || order_arr.ndim() != 1 || order_arr.shape(0) != n)
        throw py::type_error("order: expected an int64 permutation of shape (" + std::to_string(n) + ",)");
      require_c_contiguous(order_arr, "order");
      order = cptr<int64_t>(order_arr);
      for (int64_t i = r0; i < r1; ++i)
        if (order[i] < 0 || order[i] >= n) throw py::index_error("order: index out of range at " + std::to_string(i));
    }
    if (loss_kind == 0) {
      const int64_t* y = cptr<int64_t>(Y);
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t v = y[order ? order[i] : i];
        if (v < 0 || v >= C)
          throw py::value_error("Y: expected class indices in [0, " + std::to_string(C) + "), got " + std::to_string(v));
      }
    }
    if (!lrs.dtype().equal(py::dtype::of<double>()) || lrs.ndim() != 1 || lrs.shape(0) < steps)
      throw py::type_error("lrs: expected float64 learning rates, one per step");
    if (!out.dtype().equal(py::dtype::of<double>()) || out.ndim() != 2 || out.shape(0) < steps || out.shape(1) != 3)
      throw py::type_error("out: expected a float64 (steps, 3) array");
    if (!progress.dtype().equal(py::dtype::of<int64_t>()) || progress.size() != 5)
      throw py::type_error("progress: expected 5 int64");
    require_writeable(out, "out");
    require_writeable(progress, "progress");
    if (py::len(grads) != nl || py::len(updates) != nl || py::len(lr_scales) != nl)
      throw py::value_error("grads, updates, lr_scales: expected one entry per layer");
    // The updates as for backward(); the per-step scalars derived below.
    std::vector<void*> gw(nl), gb(nl);
    std::vector<py::array> keep(2 * nl);
    std::vector<FusedUpdateSpec> up0(nl), ub0(nl);
    std::vector<int64_t> tw(nl, 0), tb(nl, 0);
    std::vector<double> scw(nl), scb(nl);
    for (size_t l = 0; l < nl; ++l) {
      Layer& L = layers_[l];
      const auto gt = grads[l].cast<py::tuple>();
      const auto ut = updates[l].cast<py::tuple>();
      const auto st = lr_scales[l].cast<py::tuple>();
      if (gt.size() != 2 || ut.size() != 2 || st.size() != 2) throw py::value_error("grads, updates, lr_scales: expected pairs");
      gw[l] = optional_output(gt[0], L.w, "grad_w", L.N, L.K, &keep[2 * l]);
      if (!gw[l]) throw py::value_error("grad_w: required");
      gb[l] = L.bias ? optional_out_vector(gt[1], L.w, "grad_b", L.N, &keep[2 * l + 1]) : nullptr;
      up0[l] = fused_update_spec(ut[0], L.w, "update", "weight", L.N, L.K);
      if (L.bias) ub0[l] = fused_update_spec(ut[1], L.b, "update_bias", "bias", L.N, -1);
      if (!up0[l].kind || (L.bias && !ub0[l].kind) || ((up0[l].sumsq || ub0[l].sumsq) && loss_kind != 2))
        throw py::value_error("updates: every parameter needs a fused update (sums of squares: kind 2 only)");
      auto step_of = [](const py::object& u) {
        const auto t = u.cast<py::tuple>();
        return std::string(py::str(t[0])) == "adam" ? t[10].cast<int64_t>() : int64_t(0);
      };
      tw[l] = step_of(ut[0]);
      tb[l] = L.bias ? step_of(ut[1]) : 0;
      scw[l] = st[0].cast<double>();
      scb[l] = st[1].cast<double>();
    }
    // Every step's stream positions, reserved up front (the Python loop reserves them step by step).
    std::vector<uint64_t> offs(static_cast<size_t>(steps) * nl, 0), after(static_cast<size_t>(steps));
    uint64_t cur = offset;
    for (int64_t j = 0; j < steps; ++j) {
      const int64_t M = std::min(n, (s0 + j + 1) * bs) - (s0 + j) * bs;
      for (size_t l = 0; l < nl; ++l) {
        const Layer& L = layers_[l];
        if (!L.rnd.dropout && !L.rnd.dropconnect) continue;
        const uint64_t need = (static_cast<uint64_t>(M) * L.N + static_cast<uint64_t>(L.N) * L.K + 63) / 64 * 64;
        if (cur > ~uint64_t(0) - need) throw py::value_error("the 2**64-position stream is exhausted; re-seed it");
        offs[static_cast<size_t>(j) * nl + l] = cur;
        cur += need;
      }
      after[j] = cur;
    }
    // Buffers for a full batch; a shorter last batch uses their first rows.
    const int64_t B = std::min(bs, n);
    std::vector<py::array> own;
    auto buffer = [&](std::vector<int64_t> shape, py::dtype dt) {
      own.push_back(host_empty(shape, dt));
      return static_cast<void*>(own.back().mutable_data());
    };
    void* xb = order ? buffer({B, d}, X.dtype()) : nullptr;
    void* yb = order ? (loss_kind == 0 ? buffer({B}, Y.dtype()) : buffer({B, C}, Y.dtype())) : nullptr;
    std::vector<void*> ys(nl), pos(nl), gxp(nl, nullptr);
    for (size_t l = 0; l < nl; ++l) {
      ys[l] = buffer({B, layers_[l].N}, X.dtype());
      pos[l] = layers_[l].signs ? buffer({B, cpu::pos_row_bytes(layers_[l].N)}, py::dtype::of<uint8_t>()) : nullptr;
      if (l > 0) gxp[l] = buffer({B, layers_[l].K}, X.dtype());
    }
    void* g = buffer({B, C}, X.dtype());
    const void* Xp = X.data();
    const void* Yp = Y.data();
    const double* lr = cptr<double>(lrs);
    double* res = mptr<double>(out);
    int64_t* prog = mptr<int64_t>(progress);
    prog[0] = 0;
    prog[1] = 0;
    prog[2] = static_cast<int64_t>(offset);
    prog[3] = -1;
    release();  // (a forward kept from before is not this loop's)
    const size_t xrow = static_cast<size_t>(d) * X.itemsize(), yrow = static_cast<size_t>(Y.itemsize()) *
                                                                      (loss_kind == 0 ? 1 : static_cast<size_t>(C));
    std::vector<FusedUpdateSpec> up(nl), ub(nl);
    std::vector<double> ws(nl, 0.0), bsq(nl, 0.0);
    auto at_step = [](FusedUpdateSpec u, double lr_j, int64_t j, int64_t t0) {
      if (u.kind == FusedUpdate<float>::kSgd) {
        u.sgd.lr = lr_j;
        u.sgd.first = u.sgd.first && j == 0;
      } else if (u.kind == FusedUpdate<float>::kAdam) {
        const AdamArgs a = u.adam;
        u.adam = adam_args(lr_j, a.beta1, a.beta2, a.eps, a.l2, a.l1, a.decoupled, t0 + j);
      }
      return u;
    };
    for (int64_t j = 0; j < steps; ++j) {
      const int64_t lo = (s0 + j) * bs, M = std::min(n, lo + bs) - lo;
      if (loss_kind == 2) {  // the estimators' per-step scalars (fastnn.estimators._fit_stochastic)
        for (size_t l = 0; l < nl; ++l) {
          const double l2 = alpha / static_cast<double>(M);
          if (up0[l].kind == FusedUpdate<float>::kSgd) up0[l].sgd.l2 = l2;
          else up0[l].adam.l2 = l2;
          if (epsilon >= 0.0) {
            const double eps = epsilon / std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step0 + j + 1)));
            up0[l].adam.eps = eps;
            if (layers_[l].bias) ub0[l].adam.eps = eps;
          }
        }
      }
      for (size_t l = 0; l < nl; ++l) {
        up[l] = at_step(up0[l], lr[j] * scw[l], j, tw[l]);
        if (layers_[l].bias) ub[l] = at_step(ub0[l], lr[j] * scb[l], j, tb[l]);
        layers_[l].rnd.seed = layers_[l].rnd.dropout || layers_[l].rnd.dropconnect ? seed : 0;
        layers_[l].rnd.offset = offs[static_cast<size_t>(j) * nl + l];
      }
      double value = 0.0, contrib = 0.0;
      bool finite = true;
      {
        py::gil_scoped_release nogil;
        const void* xs = static_cast<const uint8_t*>(Xp) + static_cast<size_t>(lo) * xrow;
        const void* yt = static_cast<const uint8_t*>(Yp) + static_cast<size_t>(lo) * yrow;
        if (order) {
          gather_rows<int64_t>(static_cast<const uint8_t*>(Xp), static_cast<int64_t>(xrow), order + lo, M,
                               static_cast<uint8_t*>(xb));
          if (loss_kind == 0) {
            for (int64_t i = 0; i < M; ++i) static_cast<int64_t*>(yb)[i] = static_cast<const int64_t*>(Yp)[order[lo + i]];
          } else {
            gather_rows<int64_t>(static_cast<const uint8_t*>(Yp), static_cast<int64_t>(yrow), order + lo, M,
                                 static_cast<uint8_t*>(yb));
          }
          xs = xb;
          yt = yb;
        }
        dispatch_float(dt_, [&](auto zero) {
          using T = decltype(zero);
          forward_kernels<T>(M, static_cast<const T*>(xs), ys, pos, bf16);
          const T* o = static_cast<const T*>(ys[nl - 1]);
          if (loss_kind == 0) {
            value = softmax_xent_mean<T>(0, o, yt, static_cast<T*>(g), M, C);
            contrib = value * static_cast<double>(M);
          } else if (loss_kind == 2) {
            const double sw_sum = static_cast<double>(M);
            value = mlp_head_loss<T>(o, static_cast<const double*>(yt), nullptr, head_kind, sw_sum, static_cast<T*>(g),
                                     M, C);
            if (alpha != 0.0) value += 0.5 * alpha * sq / sw_sum;
            contrib = value * static_cast<double>(M);
          } else {
            const double size = static_cast<double>(M * C);
            contrib = squared_error_sum<T>(o, static_cast<const T*>(yt), static_cast<T*>(g), M * C, 2.0 / size);
            value = contrib / size;
          }
          finite = loss_kind == 2 || std::isfinite(value);
          if (!finite) return;
          if (hits && loss_kind == 0) prog[1] += argmax_count_labels(o, M, C, C, static_cast<const int64_t*>(yt));
          backward_kernels<T>(M, static_cast<const T*>(g), static_cast<const T*>(xs), ys, pos, gxp, gw, gb, up, ub,
                              ws, bsq, bf16);
          if (loss_kind == 2 && alpha != 0.0) {  // (opt.step(sumsq=True): the weights' sums, in layer order)
            double total = 0.0;
            for (size_t l = 0; l < nl; ++l) total += ws[l];
            sq = total;
          }
        });
      }
      prog[2] = static_cast<int64_t>(after[j]);  // (this step's forward reserved its positions)
      res[3 * j] = value;
      res[3 * j + 1] = contrib;
      res[3 * j + 2] = sq;
      if (!finite) {
        prog[3] = j;
        break;
      }
      prog[0] = j + 1;
      // Python's signal handlers run here, between steps: the default SIGINT one raises
      // KeyboardInterrupt; fastnn.train's (_Interrupts) sets prog[4] instead, to stop cleanly.
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (prog[4]) break;
    }
  }

  // Drops what the last forward kept (its arrays go back to the block cache).
  void release() {
    for (Layer& L : layers_) L.x = L.y = L.pos = py::none();
    M_ = -1;
  }

  size_t size() const { return layers_.size(); }

 private:
  struct Layer {
    py::array w, b;
    const void* bias = nullptr;
    int64_t N = 0, K = 0;
    int act = 0;
    ActParams params;
    cpu::LinearRandom rnd;
    bool signs = false, keep_y = false;
    py::object x = py::none(), y = py::none(), pos = py::none();  // the last forward's
  };

  // The layers' forward kernels for M rows: x0 the first layer's input, ys[l] layer l's output
  // (M, N_l), pos[l] its saved ReLU/activation sign bits (null where not kept). GIL released.
  template <class T>
  void forward_kernels(int64_t M, const T* x0, const std::vector<void*>& ys, const std::vector<void*>& pos,
                       bool bf16) {
    const T* in = x0;
    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& L = layers_[l];
      cpu::LinearForwardArgs<T> f;
      f.M = M;
      f.N = L.N;
      f.K = L.K;
      f.x = in;
      f.rsx = L.K;
      f.csx = 1;
      f.w = cptr<T>(L.w);
      f.rsw = L.K;
      f.csw = 1;
      f.bias = static_cast<const T*>(L.bias);
      f.act.act = L.act;
      f.act.params = L.params;
      f.rnd = L.rnd;
      f.y = static_cast<T*>(ys[l]);
      f.pos_bits = static_cast<uint8_t*>(pos[l]);
      f.pos_from_y = L.act == kActRelu;
      f.bf16 = bf16;
      cpu::linear_forward(f);
      in = f.y;
    }
  }

  // The layers' backward kernels, last to first, with the fused updates: g (M, N_last); gx[l] layer
  // l's input gradient (gx[0] null: not computed); gw / gb the gradient buffers; ws / bs the
  // updates' sums of squares. GIL released.
  template <class T>
  void backward_kernels(int64_t M, const T* g, const T* x0, const std::vector<void*>& ys,
                        const std::vector<void*>& pos, const std::vector<void*>& gx, const std::vector<void*>& gw,
                        const std::vector<void*>& gb, const std::vector<FusedUpdateSpec>& up,
                        const std::vector<FusedUpdateSpec>& ub, std::vector<double>& ws, std::vector<double>& bs,
                        bool bf16) {
    const T* go = g;
    for (size_t l = layers_.size(); l-- > 0;) {
      Layer& L = layers_[l];
      cpu::LinearBackwardArgs<T> b;
      b.M = M;
      b.N = L.N;
      b.K = L.K;
      b.g = go;
      b.x = l == 0 ? x0 : static_cast<const T*>(ys[l - 1]);
      b.rsx = L.K;
      b.csx = 1;
      b.w = cptr<T>(L.w);
      b.rsw = L.K;
      b.csw = 1;
      b.act.act = L.act;
      b.act.params = L.params;
      b.rnd = L.rnd;
      b.y = L.keep_y ? static_cast<const T*>(ys[l]) : nullptr;
      b.pos_bits = static_cast<const uint8_t*>(pos[l]);
      b.grad_x = static_cast<T*>(gx[l]);
      b.grad_w = static_cast<T*>(gw[l]);
      b.grad_b = static_cast<T*>(gb[l]);
      b.bf16 = bf16;
      backward_updated<T>(b, up[l], up[l].kind ? mptr<T>(L.w) : nullptr, ub[l], ub[l].kind ? mptr<T>(L.b) : nullptr,
                          &ws[l], &bs[l]);
      go = b.grad_x;
    }
  }

  // An array's data pointer, read without the GIL (a struct field of the NumPy object).
  static void* data_of(const py::object& o) { return py::detail::array_proxy(o.ptr())->data; }

  void check_batch(const py::array& a, const char* name, int64_t cols) const {
    if (float_dtype(a, name) != dt_)
      throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(layers_[0].w) + " like the layers, got " +
                           dtype_str(a));
    require_2d(a, name);
    if (a.shape(1) != cols)
      throw py::value_error(std::string(name) + ": expected " + std::to_string(cols) + " columns, got " +
                            shape_str(a));
    require_c_contiguous(a, name);
    if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
      throw py::value_error(std::string(name) + ": expected aligned data");
  }

  std::vector<Layer> layers_;
  DType dt_ = DType::F32;
  int64_t M_ = -1;
};

}  // namespace

void register_gemm(py::module_& m) {
  py::class_<LinearChain>(m, "LinearChain",
                          "The training forward and backward of a stack of Linear layers (fastnn.nn.Sequential's "
                          "CPU path for MLPs), each one call; see csrc/bindings/gemm.cpp.")
      .def(py::init<const py::list&>(), py::arg("layers"))
      .def("forward", &LinearChain::forward, py::arg("x"), py::arg("seeds"), py::arg("precision"))
      .def("backward", &LinearChain::backward, py::arg("grad_output"), py::arg("need_input_grad"), py::arg("grads"),
           py::arg("updates"), py::arg("precision"))
      .def("train_steps", &LinearChain::train_steps, py::arg("X"), py::arg("Y"), py::arg("order"), py::arg("s0"),
           py::arg("s1"), py::arg("bs"), py::arg("loss_kind"), py::arg("hits"), py::arg("grads"), py::arg("updates"),
           py::arg("lrs"), py::arg("lr_scales"), py::arg("seed"), py::arg("offset"), py::arg("precision"),
           py::arg("out"), py::arg("progress"), py::arg("head") = py::none())
      .def("release", &LinearChain::release)
      .def("__len__", &LinearChain::size);

  m.def(
      "matmul",
      [](py::array a, py::array b, py::array out, py::object bias, int act, double slope, double alpha,
         double scale, py::object a_row_shift, py::object a_col_shift, py::object b_col_shift, bool upper,
         const std::string& precision) {
        DType dt = float_dtype(a, "a");
        const bool bf16 = parse_precision(precision, dt);
        require_2d(a, "a");
        require_2d(b, "b");
        if (!a.dtype().equal(b.dtype()))
          throw py::type_error("b: expected dtype " + dtype_str(a) + " like a, got " + dtype_str(b));
        if (!a.dtype().equal(out.dtype()))
          throw py::type_error("out: expected dtype " + dtype_str(a) + " like a, got " + dtype_str(out));
        const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
        if (b.shape(0) != K)
          throw py::value_error("matmul: inner dimensions differ: a " + shape_str(a) + ", b " + shape_str(b));
        require_shape(out, "out", M, N);
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        if (upper && M != N) throw py::value_error("upper: needs a square product, got " + std::to_string(M) + " x " +
                                                   std::to_string(N));
        int64_t rsa, csa, rsb, csb;
        element_strides(a, "a", &rsa, &csa);
        element_strides(b, "b", &rsb, &csb);
        py::array keep_bias, keep_rs, keep_cs, keep_bs;
        const void* bias_p = optional_vector(bias, a, "bias", N, &keep_bias);
        const void* rs_p = optional_vector(a_row_shift, a, "a_row_shift", M, &keep_rs);
        const void* cs_p = optional_vector(a_col_shift, a, "a_col_shift", K, &keep_cs);
        const void* bs_p = optional_vector(b_col_shift, a, "b_col_shift", N, &keep_bs);
        check_act(act);
        if (act == kActPrelu) throw py::value_error("act: PReLU needs its weight: use linear_forward");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cpu::MatmulArgs<T> g;
          g.M = M;
          g.N = N;
          g.K = K;
          g.a = cptr<T>(a);
          g.rsa = rsa;
          g.csa = csa;
          g.b = cptr<T>(b);
          g.rsb = rsb;
          g.csb = csb;
          g.c = mptr<T>(out);
          g.bias = static_cast<const T*>(bias_p);
          g.act.act = act;
          g.act.params = act_params(slope, alpha, scale);
          g.a_row_shift = static_cast<const T*>(rs_p);
          g.a_col_shift = static_cast<const T*>(cs_p);
          g.b_col_shift = static_cast<const T*>(bs_p);
          g.upper = upper;
          g.bf16 = bf16;
          cpu::matmul(g);
        });
      },
      py::arg("a"), py::arg("b"), py::arg("out"), py::arg("bias") = py::none(), py::arg("act") = static_cast<int>(kActIdentity),
      py::arg("slope") = 0.01, py::arg("alpha") = 1.0, py::arg("scale") = 1.0, py::kw_only(),
      py::arg("a_row_shift") = py::none(), py::arg("a_col_shift") = py::none(), py::arg("b_col_shift") = py::none(),
      py::arg("upper") = false, py::arg("precision") = "fp32",
      "out[...] = act((a - a_row_shift[:, None] - a_col_shift[None, :]) @ (b - b_col_shift[None, :]) + bias) "
      "for 2-D float32/float64 a (M, K), b (K, N) of any element strides (C- and F-contiguous read as they "
      "lie), out (M, N) C-contiguous and not overlapping a or b; bias and shifts 1-D or None, applied while "
      "packing (no shifted copy); act an ActKind id (ACTIVATION_IDS; identity 0). upper=True (M == N, the product known to be "
      "symmetric) computes the tiles on and above the diagonal and mirrors them. GIL released.");

  m.def(
      "linear_forward",
      [](py::array x, py::array w, py::array out, py::object bias, int act, double slope, double alpha, double scale,
         py::object prelu_w, bool dropout, uint32_t drop_thr, double drop_scale, bool dropconnect, uint32_t dc_thr,
         double dc_scale, uint64_t seed, uint64_t offset, py::object pos_bits, bool pos_from_y, py::object z_out,
         const std::string& precision) {
        DType dt = float_dtype(x, "x");
        const bool bf16 = parse_precision(precision, dt);
        require_2d(x, "x");
        require_2d(w, "weight");
        if (!x.dtype().equal(w.dtype()))
          throw py::type_error("weight: expected dtype " + dtype_str(x) + " like x, got " + dtype_str(w));
        const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(0);
        if (w.shape(1) != K)
          throw py::value_error("linear: x " + shape_str(x) + " and weight " + shape_str(w) +
                                " differ in in_features (x.shape[1] must equal weight.shape[1])");
        if (!x.dtype().equal(out.dtype()))
          throw py::type_error("out: expected dtype " + dtype_str(x) + ", got " + dtype_str(out));
        require_shape(out, "out", M, N);
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        check_act(act);
        int64_t rsx, csx, rsw, csw;
        element_strides(x, "x", &rsx, &csx);
        element_strides(w, "weight", &rsw, &csw);
        py::array keep_bias, keep_pw, keep_pos, keep_z;
        const void* bias_p = optional_vector(bias, x, "bias", N, &keep_bias);
        const void* pw_p = nullptr;
        int64_t prelu_n = 0;
        if (act == kActPrelu) {
          if (prelu_w.is_none()) throw py::value_error("prelu_w: PReLU needs its weight");
          prelu_n = py::cast<py::array>(prelu_w).size() == 1 ? 1 : N;
          pw_p = optional_vector(prelu_w, x, "prelu_w", prelu_n, &keep_pw);
        }
        uint8_t* pos_p = optional_bits(pos_bits, "pos_bits", M, N, true, &keep_pos);
        void* z_p = optional_output(z_out, x, "z_out", M, N, &keep_z);
        const uint64_t mn = static_cast<uint64_t>(M) * static_cast<uint64_t>(N);
        check_positions(offset, mn + static_cast<uint64_t>(N) * static_cast<uint64_t>(K));
        const cpu::LinearRandom rnd = linear_random(dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, seed,
                                                    offset);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cpu::LinearForwardArgs<T> f;
          f.M = M;
          f.N = N;
          f.K = K;
          f.x = cptr<T>(x);
          f.rsx = rsx;
          f.csx = csx;
          f.w = cptr<T>(w);
          f.rsw = rsw;
          f.csw = csw;
          f.bias = static_cast<const T*>(bias_p);
          f.act.act = act;
          f.act.params = act_params(slope, alpha, scale);
          f.act.prelu_w = static_cast<const T*>(pw_p);
          f.act.prelu_n = prelu_n;
          f.rnd = rnd;
          f.y = mptr<T>(out);
          f.pos_bits = pos_p;
          f.pos_from_y = pos_from_y;
          f.z_out = static_cast<T*>(z_p);
          f.bf16 = bf16;
          cpu::linear_forward(f);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("bias"), py::arg("act"), py::arg("slope"),
      py::arg("alpha"), py::arg("scale"), py::arg("prelu_w"), py::arg("dropout"), py::arg("drop_threshold"),
      py::arg("drop_scale"), py::arg("dropconnect"), py::arg("dc_threshold"), py::arg("dc_scale"), py::arg("seed"),
      py::arg("offset"), py::arg("pos_bits"), py::arg("pos_from_y"), py::arg("z_out"), py::arg("precision") = "fp32",
      "out = dropout(act(x @ (weight * dropconnect)^T + bias)) in one GEMM: DropConnect applied while the "
      "weight is packed, bias/activation/dropout in the epilogue. Stream positions: dropout offset + i*N + j, "
      "DropConnect offset + M*N + (C-order index in weight). Optionally saves pos_bits (M, ceil(N/64)*8) "
      "uint8: bit j of row i = (pos_from_y ? out > 0 : pre-activation > 0), and z_out (M, N) the pre-activation.");

  m.def(
      "linear_backward",
      [](py::array g, py::array x, py::array w, py::object grad_x, py::array grad_w, py::object grad_b, int act,
         double slope, double alpha, double scale, py::object y, py::object z, py::object pos_bits,
         py::object prelu_w, py::object grad_prelu, bool dropout, uint32_t drop_thr, double drop_scale,
         bool dropconnect, uint32_t dc_thr, double dc_scale, uint64_t seed, uint64_t offset,
         const std::string& precision, py::object update, py::object update_bias) -> py::object {
        DType dt = float_dtype(x, "x");
        const bool bf16 = parse_precision(precision, dt);
        require_2d(x, "x");
        require_2d(w, "weight");
        require_2d(g, "grad_output");
        const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(0);
        for (auto [arr, name] : {std::pair<py::array*, const char*>{&w, "weight"}, {&g, "grad_output"}})
          if (!x.dtype().equal(arr->dtype()))
            throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(x) + " like x, got " +
                                 dtype_str(*arr));
        if (w.shape(1) != K) throw py::value_error("weight: expected in_features " + std::to_string(K));
        require_shape(g, "grad_output", M, N);
        require_c_contiguous(g, "grad_output");
        check_act(act);
        int64_t rsx, csx, rsw, csw;
        element_strides(x, "x", &rsx, &csx);
        element_strides(w, "weight", &rsw, &csw);
        py::array k_gx, k_gw = grad_w, k_gb, k_y, k_z, k_pos, k_pw, k_gp;
        // grad_x None: the caller does not need it (the first layer of a network, whose input is
        // the data), so its GEMM -- a third of the backward's flops -- is skipped.
        void* gx_p = optional_output(grad_x, x, "grad_x", M, K, &k_gx);
        void* gw_p = optional_output(grad_w, x, "grad_w", N, K, &k_gw);
        void* gb_p = optional_out_vector(grad_b, x, "grad_b", N, &k_gb);
        const void* y_p = nullptr;
        const void* z_p = nullptr;
        if (!y.is_none()) {
          k_y = y.cast<py::array>();
          if (!x.dtype().equal(k_y.dtype())) throw py::type_error("y: expected dtype " + dtype_str(x));
          require_shape(k_y, "y", M, N);
          require_c_contiguous(k_y, "y");
          y_p = k_y.data();
        }
        if (!z.is_none()) {
          k_z = z.cast<py::array>();
          if (!x.dtype().equal(k_z.dtype())) throw py::type_error("z: expected dtype " + dtype_str(x));
          require_shape(k_z, "z", M, N);
          require_c_contiguous(k_z, "z");
          z_p = k_z.data();
        }
        const uint8_t* pos_p = optional_bits(pos_bits, "pos_bits", M, N, false, &k_pos);
        const bool needs_y = cpu::act_needs_output(act);
        const bool needs_pos = cpu::act_needs_signs(act);
        if (needs_y && !y_p) throw py::value_error("y: this activation's gradient needs the saved output");
        if (needs_pos && !pos_p) throw py::value_error("pos_bits: this activation's gradient needs the saved signs");
        const void* pw_p = nullptr;
        void* gp_p = nullptr;
        int64_t prelu_n = 0;
        if (act == kActPrelu) {
          if (!z_p) throw py::value_error("z: PReLU's gradient needs the saved pre-activation");
          if (prelu_w.is_none()) throw py::value_error("prelu_w: PReLU needs its weight");
          prelu_n = py::cast<py::array>(prelu_w).size() == 1 ? 1 : N;
          pw_p = optional_vector(prelu_w, x, "prelu_w", prelu_n, &k_pw);
          gp_p = optional_out_vector(grad_prelu, x, "grad_prelu", prelu_n, &k_gp);
        }
        const uint64_t mn = static_cast<uint64_t>(M) * static_cast<uint64_t>(N);
        check_positions(offset, mn + static_cast<uint64_t>(N) * static_cast<uint64_t>(K));
        const cpu::LinearRandom rnd = linear_random(dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, seed,
                                                    offset);
        const FusedUpdateSpec up = fused_update_spec(update, w, "update", "weight", N, K);
        FusedUpdateSpec ub;
        py::array bias_arr;
        if (!update_bias.is_none()) {
          if (!gb_p) throw py::value_error("update_bias: needs grad_b (the bias gradient is reduced into it first)");
          if (!py::isinstance<py::tuple>(update_bias) || py::len(update_bias) < 2)
            throw py::type_error("update_bias: expected (bias, ('sgd', ...) / ('adam', ...))");
          bias_arr = update_bias.cast<py::tuple>()[0].cast<py::array>();
          if (!bias_arr.dtype().equal(x.dtype()))
            throw py::type_error("bias: expected dtype " + dtype_str(x) + " like x, got " + dtype_str(bias_arr));
          if (bias_arr.ndim() != 1 || bias_arr.shape(0) != N)
            throw py::value_error("bias: expected shape (" + std::to_string(N) + ",)");
          ub = fused_update_spec(update_bias.cast<py::tuple>()[1], bias_arr, "update_bias", "bias", N, -1);
        }
        double ws = 0.0, bs = 0.0;
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            cpu::LinearBackwardArgs<T> b;
            b.M = M;
            b.N = N;
            b.K = K;
            b.g = cptr<T>(g);
            b.x = cptr<T>(x);
            b.rsx = rsx;
            b.csx = csx;
            b.w = cptr<T>(w);
            b.rsw = rsw;
            b.csw = csw;
            b.act.act = act;
            b.act.params = act_params(slope, alpha, scale);
            b.act.prelu_w = static_cast<const T*>(pw_p);
            b.act.prelu_n = prelu_n;
            b.rnd = rnd;
            b.y = static_cast<const T*>(y_p);
            b.z = static_cast<const T*>(z_p);
            b.pos_bits = pos_p;
            b.grad_x = static_cast<T*>(gx_p);
            b.grad_w = static_cast<T*>(gw_p);
            b.grad_b = static_cast<T*>(gb_p);
            b.grad_prelu = static_cast<T*>(gp_p);
            b.bf16 = bf16;
            backward_updated<T>(b, up, up.kind ? mptr<T>(w) : nullptr, ub,
                                ub.kind ? mptr<T>(bias_arr) : nullptr, &ws, &bs);
          });
        }
        return update_result(up, ws, ub, bs);
      },
      py::arg("grad_output"), py::arg("x"), py::arg("weight"), py::arg("grad_x"), py::arg("grad_w"),
      py::arg("grad_b"), py::arg("act"), py::arg("slope"), py::arg("alpha"), py::arg("scale"), py::arg("y"),
      py::arg("z"), py::arg("pos_bits"), py::arg("prelu_w"), py::arg("grad_prelu"), py::arg("dropout"),
      py::arg("drop_threshold"), py::arg("drop_scale"), py::arg("dropconnect"), py::arg("dc_threshold"),
      py::arg("dc_scale"), py::arg("seed"), py::arg("offset"), py::arg("precision") = "fp32",
      py::arg("update") = py::none(), py::arg("update_bias") = py::none(),
      "The backward of linear_forward: one pass for gz = grad_output * keep * act' (and grad_b, and PReLU's "
      "weight gradient), then grad_x = gz @ (W * dropconnect) with the mask applied while W is packed, and "
      "grad_w = (gz^T @ x) * dropconnect with the mask in the epilogue. grad_output C-contiguous; outputs "
      "C-contiguous, written in full. grad_x=None skips its GEMM (the input needs no gradient).\n"
      "update: None, or the optimizer's update of weight applied in grad_w's GEMM instead of storing grad_w "
      "(then scratch): ('sgd', momentum_buffer or None, lr, momentum, dampening, l2, l1, nesterov, first, sumsq) "
      "or ('adam', exp_avg, exp_avg_sq, lr, beta1, beta2, eps, l2, l1, decoupled, step, sumsq), the arguments "
      "of sgd_step / adam_step, with the same bits as those kernels on the stored gradient. Returns the float64 "
      "sum of the squared updated weights when sumsq is true, else None.\n"
      "update_bias: None, or (bias, update tuple as above, its state arrays of shape (N,)): the update of the "
      "bias applied from grad_b (which must be given) by the sgd_step / adam_step kernels; the call then returns "
      "(the weight's sum or None, the bias's sum or None).");

  m.def("gemm_tile", [](const std::string& dtype) {
    const bool f32 = dtype == "float32";
    if (!f32 && dtype != "float64") throw py::value_error("dtype: expected float32 or float64, got " + dtype);
    return f32 ? py::make_tuple(gemm_kernels().f32.mr, gemm_kernels().f32.nr)
               : py::make_tuple(gemm_kernels().f64.mr, gemm_kernels().f64.nr);
  }, py::arg("dtype"), "(MR, NR) of the GEMM micro-tile on the current CPU path.");

  m.attr("POS_ROW_ALIGN_BITS") = 64;
}

}  // namespace fastnn
