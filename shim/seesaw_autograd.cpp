// The autograd node of the fused Seesaw loss.
//
// tch cannot define an autograd Function, so this file subclasses libtorch's
// torch::autograd::Function and hands the work back to Rust through two
// callbacks (src/autograd.rs):
//   forward  computes the loss (per row, or reduced) and per-row statistics
//            without writing any N x C tensor;
//   backward recomputes the adjusted softmax from the saved logits and those
//            statistics and writes the gradient times the upstream gradient.
// Between the two the node keeps the logits (which autograd holds anyway),
// the labels, weights, log counts and O(N) statistics.
//
// It also lends the CPU mirror libtorch's thread pool (seesaw_parallel_for),
// gives the CUDA path libtorch's current stream (seesaw_current_cuda_stream),
// reports the parameter block's layout for a test, and, built for the
// `testing` feature (SEESAW_TESTING), counts libtorch operator calls.
//
// Tensors cross the boundary as heap-allocated at::Tensor handles, the
// representation tch uses: each handle passed to Rust is owned by Rust, each
// handle Rust returns is owned here. Errors come back as text and are thrown
// as c10::Error, so they surface as errors of forward or of backward().

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "../kernels/seesaw_params.h"

extern "C" {

enum { SEESAW_ERR_LEN = 4096 };

// Returns 0, or non-zero with a message in `err`. `weights` and `state` may be null.
// `outputs` receives the class loss, then the objectness loss (detection).
typedef int (*seesaw_forward_fn)(const SeesawParams* params, at::Tensor* scores, at::Tensor* labels,
                                 at::Tensor* weights, at::Tensor* log_counts, at::Tensor* state,
                                 at::Tensor** class_loss,
                                 at::Tensor** objectness_loss, at::Tensor** saved, char* err);
// `g_classes` / `g_objectness` may be null: that output did not reach the loss.
typedef int (*seesaw_backward_fn)(const SeesawParams* params, at::Tensor* scores, at::Tensor* labels,
                                  at::Tensor* weights, at::Tensor* log_counts, at::Tensor* state,
                                  at::Tensor* saved,
                                  at::Tensor* g_classes, at::Tensor* g_objectness, at::Tensor** grad, char* err);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor* handle(const at::Tensor& t) { return t.defined() ? new at::Tensor(t) : nullptr; }

at::Tensor take(at::Tensor* t) {
    if (t == nullptr) return at::Tensor();
    at::Tensor out = std::move(*t);
    delete t;
    return out;
}

// The parameter block travels through saved_data whole, as the bytes of a
// string IValue, and the backward callback as an integer: adding a parameter
// touches only its declaration.
struct Saved {
    static void put(AutogradContext* ctx, const SeesawParams& params, seesaw_backward_fn backward) {
        auto& d = ctx->saved_data;
        d["params"] = std::string(reinterpret_cast<const char*>(&params), sizeof params);
        d["backward"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(backward));
    }
    static SeesawParams params(AutogradContext* ctx) {
        const std::string bytes = ctx->saved_data["params"].toStringRef();
        TORCH_CHECK(bytes.size() == sizeof(SeesawParams), "the Seesaw node lost its parameters");
        SeesawParams params;
        std::memcpy(&params, bytes.data(), sizeof params);
        return params;
    }
    static seesaw_backward_fn backward(AutogradContext* ctx) {
        return reinterpret_cast<seesaw_backward_fn>(static_cast<intptr_t>(ctx->saved_data["backward"].toInt()));
    }
};

struct SeesawFunction : public torch::autograd::Function<SeesawFunction> {
    static variable_list forward(AutogradContext* ctx, const at::Tensor& scores, const at::Tensor& labels,
                                 const std::optional<at::Tensor>& weights, const at::Tensor& log_counts,
                                 const std::optional<at::Tensor>& state, SeesawParams params,
                                 seesaw_forward_fn forward_fn,
                                 seesaw_backward_fn backward_fn) {
        char err[SEESAW_ERR_LEN] = {0};
        at::Tensor* class_loss = nullptr;
        at::Tensor* objectness_loss = nullptr;
        at::Tensor* saved = nullptr;
        // Autograd records an input's metadata, so absent weights travel as an
        // empty optional rather than an undefined tensor.
        const at::Tensor w = weights.has_value() ? *weights : at::Tensor();
        const at::Tensor st = state.has_value() ? *state : at::Tensor();
        int rc = forward_fn(&params, handle(scores), handle(labels), handle(w), handle(log_counts), handle(st),
                            &class_loss, &objectness_loss, &saved, err);
        at::Tensor classes = take(class_loss), objectness = take(objectness_loss), stats = take(saved);
        TORCH_CHECK(rc == 0, err);
        ctx->save_for_backward({scores, labels, w, log_counts, st, stats});
        Saved::put(ctx, params, backward_fn);
        if (params.detection) return {classes, objectness};
        return {classes};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        TORCH_CHECK(!at::GradMode::is_enabled(),
                    "the fused Seesaw loss has no double backward (backward was called with create_graph); "
                    "use Backend::Reference for higher-order gradients");
        SeesawParams params = Saved::params(ctx);
        variable_list saved = ctx->get_saved_variables();
        at::Tensor g_classes = grad_outputs.size() > 0 ? grad_outputs[0] : at::Tensor();
        at::Tensor g_objectness = grad_outputs.size() > 1 ? grad_outputs[1] : at::Tensor();
        char err[SEESAW_ERR_LEN] = {0};
        at::Tensor* grad = nullptr;
        int rc = Saved::backward(ctx)(&params, handle(saved[0]), handle(saved[1]), handle(saved[2]),
                                      handle(saved[3]), handle(saved[4]), handle(saved[5]), handle(g_classes),
                                      handle(g_objectness), &grad, err);
        at::Tensor scores_grad = take(grad);
        TORCH_CHECK(rc == 0, err);
        // One entry per argument of forward: only the scores get a gradient.
        return {scores_grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

void copy_message(const char* what, char* err) {
    std::strncpy(err, what, SEESAW_ERR_LEN - 1);
    err[SEESAW_ERR_LEN - 1] = '\0';
}

// Runs `body`; returns 0, or 1 with libtorch's (or the standard library's)
// message in `err`: nothing throws across the C boundary.
template <class Body>
int guarded(char* err, Body&& body) {
    try {
        body();
        return 0;
    } catch (const c10::Error& e) {
        copy_message(e.what_without_backtrace(), err);
    } catch (const std::exception& e) {
        copy_message(e.what(), err);
    }
    return 1;
}

}  // namespace

extern "C" int seesaw_autograd_apply(const SeesawParams* params, const at::Tensor* scores, const at::Tensor* labels,
                                     const at::Tensor* weights, const at::Tensor* log_counts,
                                     const at::Tensor* state, seesaw_forward_fn forward_fn,
                                     seesaw_backward_fn backward_fn, at::Tensor** class_loss,
                                     at::Tensor** objectness_loss, char* err) {
    return guarded(err, [&] {
        std::optional<at::Tensor> w = weights ? std::optional<at::Tensor>(*weights) : std::nullopt;
        std::optional<at::Tensor> st = state ? std::optional<at::Tensor>(*state) : std::nullopt;
        variable_list out =
            SeesawFunction::apply(*scores, *labels, w, *log_counts, st, *params, forward_fn, backward_fn);
        *class_loss = new at::Tensor(out[0]);
        *objectness_loss = out.size() > 1 ? new at::Tensor(out[1]) : nullptr;
    });
}

// Runs f(ctx, begin, end) over chunks of [0, n) on libtorch's intra-op thread
// pool, so that the CPU mirror shares threads with the rest of the step
// instead of competing with them. f must not unwind (the Rust side catches).
extern "C" void seesaw_parallel_for(int64_t n, int64_t grain, void (*f)(void*, int64_t, int64_t), void* ctx) {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { f(ctx, begin, end); });
}

// libtorch's current CUDA stream for the device (a cudaStream_t, which the
// driver API takes as a CUstream), found through c10's device guard
// interface so that no CUDA header is needed. Returns 0, or non-zero with a
// message in `err` (SEESAW_ERR_LEN bytes).
extern "C" int seesaw_current_cuda_stream(int64_t device_index, void** stream, char* err) {
    return guarded(err, [&] {
        const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
        const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
        *stream = impl->getStream(device).native_handle();
    });
}

// Size, alignment and field offsets of SeesawParams in declaration order, for
// the test that holds the Rust declaration to this one. Returns how many
// values it wrote.
extern "C" int64_t seesaw_params_layout(int64_t* out, int64_t len) {
    const int64_t values[] = {
        (int64_t)sizeof(SeesawParams),
        (int64_t)alignof(SeesawParams),
        (int64_t)offsetof(SeesawParams, rows),
        (int64_t)offsetof(SeesawParams, row_stride),
        (int64_t)offsetof(SeesawParams, avg_factor),
        (int64_t)offsetof(SeesawParams, classes),
        (int64_t)offsetof(SeesawParams, detection),
        (int64_t)offsetof(SeesawParams, reduction),
        (int64_t)offsetof(SeesawParams, has_avg_factor),
        (int64_t)offsetof(SeesawParams, p),
        (int64_t)offsetof(SeesawParams, q),
        (int64_t)offsetof(SeesawParams, log_eps),
        (int64_t)offsetof(SeesawParams, loss_weight),
    };
    const int64_t n = std::min<int64_t>(len, sizeof values / sizeof values[0]);
    for (int64_t i = 0; i < n; ++i) out[i] = values[i];
    return n;
}

// The header's constants as the C++ compiler reads them.
extern "C" int64_t seesaw_shared_constants(double* out, int64_t len) {
    const double values[] = {SEESAW_WARPS_PER_BLOCK, SEESAW_COUNT_BLOCK, SEESAW_UNDERFLOW, SEESAW_PREPARE_THREADS,
                             SEESAW_STATE_LEN, SEESAW_ERROR_LEN};
    const int64_t n = std::min<int64_t>(len, sizeof values / sizeof values[0]);
    for (int64_t i = 0; i < n; ++i) out[i] = values[i];
    return n;
}

#ifdef SEESAW_TESTING
#include <ATen/record_function.h>

#include <atomic>
#include <vector>

// Operator counter of seesaw_loss::testing::libtorch_ops: a global
// RecordFunction observer (it sees every dispatcher call on every thread,
// nested ones included). An aten operator is a launch, as it would be on
// CUDA, when it is not a view, an allocation or a no-op conversion, and none
// of its nested calls is a launch: so `cross_entropy` counts as its parts,
// and `_log_softmax` (whose only nested call allocates its output) as one.
namespace {

std::atomic<uint64_t> op_calls{0};
std::atomic<uint64_t> op_launches{0};
// Per thread: whether each open call has a nested call that launched.
thread_local std::vector<bool> open_calls;

bool launches_nothing(const char* name) {
    static const char* const names[] = {
        "aten::empty",      "aten::empty_strided", "aten::empty_like", "aten::view",      "aten::_reshape_alias",
        "aten::reshape",    "aten::as_strided",    "aten::detach",     "aten::detach_",   "aten::alias",
        "aten::t",          "aten::transpose",     "aten::select",     "aten::narrow",    "aten::slice",
        "aten::unsqueeze",  "aten::squeeze",       "aten::expand",     "aten::permute",   "aten::lift_fresh",
        "aten::resize_",    "aten::set_",          "aten::_unsafe_view", "aten::contiguous", "aten::to",
        "aten::_to_copy",   "aten::requires_grad_", "aten::set_requires_grad", "aten::result_type",
        "aten::is_nonzero", "aten::_local_scalar_dense", "aten::item", "aten::size", "aten::stride",
    };
    if (std::strncmp(name, "aten::", 6) != 0) return true;  // autograd's own records, tch's
    for (const char* n : names)
        if (std::strcmp(n, name) == 0) return true;
    return false;
}

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction&) {
    op_calls.fetch_add(1);
    open_calls.push_back(false);
    return nullptr;
}

void on_exit(const at::RecordFunction& fn, at::ObserverContext*) {
    if (open_calls.empty()) return;  // entered before the observer was installed
    const bool nested_launched = open_calls.back();
    open_calls.pop_back();
    const bool launches = !nested_launched && !launches_nothing(fn.name());
    if (launches) op_launches.fetch_add(1);
    if (!open_calls.empty() && (launches || nested_launched)) open_calls.back() = true;
}

}  // namespace

// The GPU tests' streams, through c10's device guard interface (no CUDA
// header): a new stream from libtorch's pool (non-blocking, so not ordered
// with the legacy default stream) made current for the device, or the
// default stream made current again.
extern "C" int seesaw_testing_set_stream(int64_t device_index, int32_t side, char* err) {
    return guarded(err, [&] {
        const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
        const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
        impl->exchangeStream(side ? impl->getNewStream(device) : impl->getDefaultStream(device));
    });
}

extern "C" void seesaw_testing_op_counts(uint64_t* calls, uint64_t* launches) {
    static const bool installed = [] {
        at::addGlobalCallback(at::RecordFunctionCallback(on_enter, on_exit).scopes({at::RecordScope::FUNCTION}));
        return true;
    }();
    (void)installed;
    *calls = op_calls.load();
    *launches = op_launches.load();
}
#endif
