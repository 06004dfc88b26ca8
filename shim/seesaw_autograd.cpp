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
// It also lends the CPU mirror libtorch's thread pool (seesaw_parallel_for).
//
// Tensors cross the boundary as heap-allocated at::Tensor handles, the
// representation tch uses: each handle passed to Rust is owned by Rust, each
// handle Rust returns is owned here. Errors come back as text and are thrown
// as c10::Error, so they surface as errors of forward or of backward().

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

extern "C" {

// Mirrors `ShimCall` in src/autograd.rs.
struct SeesawShimCall {
    int64_t num_classes;
    int32_t detection;
    int32_t reduction;  // 0 none, 1 sum, 2 mean
    int32_t has_avg_factor;
    double p, q, eps, loss_weight;
    double avg_factor;  // read only when has_avg_factor
    int64_t positive_rows;  // -1: not known on the host
};

enum { SEESAW_ERR_LEN = 4096 };

// Returns 0, or non-zero with a message in `err`. `weights` may be null.
// `outputs` receives the class loss, then the objectness loss (detection).
typedef int (*seesaw_forward_fn)(const SeesawShimCall* call, at::Tensor* scores, at::Tensor* labels,
                                 at::Tensor* weights, at::Tensor* log_counts, at::Tensor** class_loss,
                                 at::Tensor** objectness_loss, at::Tensor** saved, char* err);
// `g_classes` / `g_objectness` may be null: that output did not reach the loss.
typedef int (*seesaw_backward_fn)(const SeesawShimCall* call, at::Tensor* scores, at::Tensor* labels,
                                  at::Tensor* weights, at::Tensor* log_counts, at::Tensor* saved,
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

// Callbacks and call parameters travel through saved_data as integers and
// doubles: the only IValue kinds needed.
struct Saved {
    static void put(AutogradContext* ctx, const SeesawShimCall& call, seesaw_backward_fn backward) {
        auto& d = ctx->saved_data;
        d["num_classes"] = call.num_classes;
        d["detection"] = static_cast<int64_t>(call.detection);
        d["reduction"] = static_cast<int64_t>(call.reduction);
        d["p"] = call.p;
        d["q"] = call.q;
        d["eps"] = call.eps;
        d["loss_weight"] = call.loss_weight;
        d["has_avg_factor"] = static_cast<int64_t>(call.has_avg_factor);
        d["avg_factor"] = call.avg_factor;
        d["positive_rows"] = call.positive_rows;
        d["backward"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(backward));
    }
    static SeesawShimCall call(AutogradContext* ctx) {
        auto& d = ctx->saved_data;
        SeesawShimCall c;
        c.num_classes = d["num_classes"].toInt();
        c.detection = static_cast<int32_t>(d["detection"].toInt());
        c.reduction = static_cast<int32_t>(d["reduction"].toInt());
        c.p = d["p"].toDouble();
        c.q = d["q"].toDouble();
        c.eps = d["eps"].toDouble();
        c.loss_weight = d["loss_weight"].toDouble();
        c.has_avg_factor = static_cast<int32_t>(d["has_avg_factor"].toInt());
        c.avg_factor = d["avg_factor"].toDouble();
        c.positive_rows = d["positive_rows"].toInt();
        return c;
    }
    static seesaw_backward_fn backward(AutogradContext* ctx) {
        return reinterpret_cast<seesaw_backward_fn>(static_cast<intptr_t>(ctx->saved_data["backward"].toInt()));
    }
};

struct SeesawFunction : public torch::autograd::Function<SeesawFunction> {
    static variable_list forward(AutogradContext* ctx, const at::Tensor& scores, const at::Tensor& labels,
                                 const std::optional<at::Tensor>& weights, const at::Tensor& log_counts,
                                 SeesawShimCall call,
                                 seesaw_forward_fn forward_fn, seesaw_backward_fn backward_fn) {
        char err[SEESAW_ERR_LEN] = {0};
        at::Tensor* class_loss = nullptr;
        at::Tensor* objectness_loss = nullptr;
        at::Tensor* saved = nullptr;
        // Autograd records an input's metadata, so absent weights travel as an
        // empty optional rather than an undefined tensor.
        const at::Tensor w = weights.has_value() ? *weights : at::Tensor();
        int rc = forward_fn(&call, handle(scores), handle(labels), handle(w), handle(log_counts),
                            &class_loss, &objectness_loss, &saved, err);
        at::Tensor classes = take(class_loss), objectness = take(objectness_loss), stats = take(saved);
        TORCH_CHECK(rc == 0, err);
        ctx->save_for_backward({scores, labels, w, log_counts, stats});
        Saved::put(ctx, call, backward_fn);
        if (call.detection) return {classes, objectness};
        return {classes};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        TORCH_CHECK(!at::GradMode::is_enabled(),
                    "the fused Seesaw loss has no double backward (backward was called with create_graph); "
                    "use Backend::Reference for higher-order gradients");
        SeesawShimCall call = Saved::call(ctx);
        variable_list saved = ctx->get_saved_variables();
        at::Tensor g_classes = grad_outputs.size() > 0 ? grad_outputs[0] : at::Tensor();
        at::Tensor g_objectness = grad_outputs.size() > 1 ? grad_outputs[1] : at::Tensor();
        char err[SEESAW_ERR_LEN] = {0};
        at::Tensor* grad = nullptr;
        int rc = Saved::backward(ctx)(&call, handle(saved[0]), handle(saved[1]), handle(saved[2]),
                                      handle(saved[3]), handle(saved[4]), handle(g_classes),
                                      handle(g_objectness), &grad, err);
        at::Tensor scores_grad = take(grad);
        TORCH_CHECK(rc == 0, err);
        // One entry per argument of forward: only the scores get a gradient.
        return {scores_grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

void copy_message(const char* what, char* err) {
    std::strncpy(err, what, SEESAW_ERR_LEN - 1);
    err[SEESAW_ERR_LEN - 1] = '\0';
}

}  // namespace

extern "C" int seesaw_autograd_apply(const SeesawShimCall* call, const at::Tensor* scores, const at::Tensor* labels,
                                     const at::Tensor* weights, const at::Tensor* log_counts,
                                     seesaw_forward_fn forward_fn, seesaw_backward_fn backward_fn,
                                     at::Tensor** class_loss, at::Tensor** objectness_loss, char* err) {
    try {
        std::optional<at::Tensor> w = weights ? std::optional<at::Tensor>(*weights) : std::nullopt;
        variable_list out = SeesawFunction::apply(*scores, *labels, w, *log_counts,
                                                  *call, forward_fn, backward_fn);
        *class_loss = new at::Tensor(out[0]);
        *objectness_loss = out.size() > 1 ? new at::Tensor(out[1]) : nullptr;
        return 0;
    } catch (const c10::Error& e) {
        copy_message(e.what_without_backtrace(), err);
    } catch (const std::exception& e) {
        copy_message(e.what(), err);
    }
    return 1;
}

// Runs f(ctx, begin, end) over chunks of [0, n) on libtorch's intra-op thread
// pool, so that the CPU mirror shares threads with the rest of the step
// instead of competing with them. f must not unwind (the Rust side catches).
extern "C" void seesaw_parallel_for(int64_t n, int64_t grain, void (*f)(void*, int64_t, int64_t), void* ctx) {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { f(ctx, begin, end); });
}
