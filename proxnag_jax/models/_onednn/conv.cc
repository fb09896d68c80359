// 2-D convolutions (NHWC activations, HWIO kernels, float32) for XLA:CPU as
// XLA FFI custom calls into oneDNN: the forward pass, the input gradient and
// the kernel gradient. Built by `python -m proxnag_jax.models.onednn build`;
// used by proxnag_jax/models/conv.py when built (see its docstring).
//
// Each distinct shape gets its oneDNN primitive once (a cache keyed by the
// shapes and the window); the kernel is reordered to and from the layout the
// primitive picks on every call (kernels are small). Scratchpads are the
// caller's (one per thread, reused), so XLA may run calls concurrently.
#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, ho, wo;
  int64_t sh, sw, pt, pb, pl, pr;
  std::string Key(const char* op) const {
    std::ostringstream s;
    s << op << ':' << n << ',' << h << ',' << w << ',' << c << ',' << kh << ','
      << kw << ',' << o << ',' << ho << ',' << wo << ',' << sh << ',' << sw
      << ',' << pt << ',' << pb << ',' << pl << ',' << pr;
    return s.str();
  }
  memory::desc Src() const { return {{n, c, h, w}, dt::f32, tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, ho, wo}, dt::f32, tag::nhwc}; }
  memory::desc UserWeights() const {
    return {{o, c, kh, kw}, dt::f32, tag::hwio};
  }
  memory::desc AnyWeights() const { return {{o, c, kh, kw}, dt::f32, tag::any}; }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
  static dnnl::primitive_attr Attr() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
  }
  dnnl::convolution_forward::primitive_desc Forward() const {
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training,
        dnnl::algorithm::convolution_direct, Src(), AnyWeights(), Dst(),
        Strides(), PadL(), PadR(), Attr());
  }
  dnnl::convolution_backward_data::primitive_desc BackwardData() const {
    return dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Src(), AnyWeights(),
        Dst(), Strides(), PadL(), PadR(), Forward(), Attr());
  }
  dnnl::convolution_backward_weights::primitive_desc BackwardWeights() const {
    return dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Src(), AnyWeights(),
        Dst(), Strides(), PadL(), PadR(), Forward(), Attr());
  }
};

struct Entry {
  dnnl::primitive prim;
  memory::desc weights;  // the layout the primitive wants its kernel in
  memory::desc scratchpad;
};

// The calling thread's scratchpad, grown as needed: a call runs on one
// thread, so two calls at once never share one.
memory Scratchpad(const memory::desc& desc) {
  thread_local std::vector<uint8_t> buffer;
  size_t size = desc.get_size();
  if (buffer.size() < size) buffer.resize(size);
  return memory(desc, Engine(), size ? buffer.data() : nullptr);
}

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Entry>> cache;

std::shared_ptr<Entry> Lookup(const std::string& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  return it == cache.end() ? nullptr : it->second;
}

std::shared_ptr<Entry> Store(const std::string& key, std::shared_ptr<Entry> e) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return cache.emplace(key, std::move(e)).first->second;
}

// The cached primitive of ``key``, made by ``make()`` on first use.
template <typename Make>
std::shared_ptr<Entry> Cached(const std::string& key, Make&& make) {
  auto e = Lookup(key);
  return e ? e : Store(key, std::make_shared<Entry>(make()));
}

// The user's HWIO kernel in the layout the primitive wants (reordered into a
// new buffer when they differ).
memory KernelFor(const Entry& e, const Geometry& g, float* w,
                 dnnl::stream& s) {
  memory user(g.UserWeights(), Engine(), w);
  if (e.weights == g.UserWeights()) return user;
  memory wm(e.weights, Engine());
  dnnl::reorder(user, wm).execute(s, user, wm);
  return wm;
}

ffi::Error Check(const Geometry& g) {
  if (g.n <= 0 || g.c <= 0 || g.o <= 0 || g.ho <= 0 || g.wo <= 0)
    return ffi::Error::InvalidArgument("onednn conv: empty shape");
  if (g.pt < 0 || g.pb < 0 || g.pl < 0 || g.pr < 0)
    return ffi::Error::InvalidArgument("onednn conv: negative padding");
  return ffi::Error::Success();
}

Geometry Make(ffi::Span<const int64_t> x, ffi::Span<const int64_t> wt,
              ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt,
              int64_t pb, int64_t pl, int64_t pr) {
  return Geometry{x[0],  x[1],  x[2],  x[3], wt[0], wt[1], wt[3], y[1],
                  y[2],  sh,    sw,    pt,   pb,    pl,    pr};
}

template <typename F>
ffi::Error Guard(F&& f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// y = conv(x, w)
ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw,
                       int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g = Make(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw,
                    pt, pb, pl, pr);
  if (auto err = Check(g); err.failure()) return err;
  return Guard([&] {
    auto e = Cached(g.Key("fwd"), [&] {
      auto pd = g.Forward();
      return Entry{dnnl::convolution_forward(pd), pd.weights_desc(),
                   pd.scratchpad_desc()};
    });
    dnnl::stream s(Engine());
    memory src(g.Src(), Engine(), x.typed_data());
    memory dst(g.Dst(), Engine(), y->typed_data());
    memory wm = KernelFor(*e, g, w.typed_data(), s);
    memory scratch = Scratchpad(e->scratchpad);
    e->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wm},
                        {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    s.wait();
  });
}

// dx = d conv(x, w) / dx applied to dy (dx's buffer gives x's shape).
ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                           ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                           int64_t pr) {
  Geometry g = Make(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw,
                    pt, pb, pl, pr);
  if (auto err = Check(g); err.failure()) return err;
  return Guard([&] {
    auto e = Cached(g.Key("bwd_data"), [&] {
      auto pd = g.BackwardData();
      return Entry{dnnl::convolution_backward_data(pd), pd.weights_desc(),
                   pd.scratchpad_desc()};
    });
    dnnl::stream s(Engine());
    memory diff_dst(g.Dst(), Engine(), dy.typed_data());
    memory diff_src(g.Src(), Engine(), dx->typed_data());
    memory wm = KernelFor(*e, g, w.typed_data(), s);
    memory scratch = Scratchpad(e->scratchpad);
    e->prim.execute(s, {{DNNL_ARG_DIFF_DST, diff_dst},
                        {DNNL_ARG_WEIGHTS, wm},
                        {DNNL_ARG_DIFF_SRC, diff_src},
                        {DNNL_ARG_SCRATCHPAD, scratch}});
    s.wait();
  });
}

// dw = d conv(x, w) / dw applied to dy.
ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> dy,
                              ffi::ResultBuffer<ffi::F32> dw, int64_t sh,
                              int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                              int64_t pr) {
  Geometry g = Make(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw,
                    pt, pb, pl, pr);
  if (auto err = Check(g); err.failure()) return err;
  return Guard([&] {
    auto e = Cached(g.Key("bwd_weights"), [&] {
      auto pd = g.BackwardWeights();
      return Entry{dnnl::convolution_backward_weights(pd),
                   pd.diff_weights_desc(), pd.scratchpad_desc()};
    });
    dnnl::stream s(Engine());
    memory src(g.Src(), Engine(), x.typed_data());
    memory diff_dst(g.Dst(), Engine(), dy.typed_data());
    memory user_dw(g.UserWeights(), Engine(), dw->typed_data());
    memory dwm = e->weights == g.UserWeights() ? user_dw
                                               : memory(e->weights, Engine());
    memory scratch = Scratchpad(e->scratchpad);
    e->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                        {DNNL_ARG_DIFF_WEIGHTS, dwm},
                        {DNNL_ARG_SCRATCHPAD, scratch}});
    if (e->weights != g.UserWeights())
      dnnl::reorder(dwm, user_dw).execute(s, dwm, user_dw);
    s.wait();
  });
}

// The implementation oneDNN picked for a shape, for diagnostics.
std::string ImplName(const Geometry& g, int which) {
  if (which == 0) return g.Forward().impl_info_str();
  if (which == 1) return g.BackwardData().impl_info_str();
  return g.BackwardWeights().impl_info_str();
}

}  // namespace

#define CONV_ATTRS                                                     \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt")         \
      .Attr<int64_t>("pb").Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(PnjConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PnjConvBwdData, ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PnjConvBwdWeights, ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

// C entry for diagnostics: writes the implementation name for
// (x shape NHWC, kernel HWIO, window) of op 0 fwd / 1 bwd data / 2 bwd weights.
extern "C" int pnj_conv_impl_name(const int64_t* x, const int64_t* wt,
                                  const int64_t* win, int which, char* out,
                                  int size) {
  try {
    int64_t ho = (x[1] + win[2] + win[3] - wt[0]) / win[0] + 1;
    int64_t wo = (x[2] + win[4] + win[5] - wt[1]) / win[1] + 1;
    Geometry g{x[0], x[1], x[2], x[3], wt[0], wt[1], wt[3], ho, wo,
               win[0], win[1], win[2], win[3], win[4], win[5]};
    std::string name = ImplName(g, which);
    snprintf(out, size, "%s", name.c_str());
    return 0;
  } catch (...) {
    return 1;
  }
}
