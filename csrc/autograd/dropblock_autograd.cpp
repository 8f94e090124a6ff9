// Autograd of the DropBlock ops at the Autograd dispatch key, for every backend at once.
//
//   drop_block_mask   has no gradient: its outputs depend on the input's shape, not its values.
//   drop_block_apply  is linear in its input, so its backward is drop_block_apply again on the
//                     incoming gradient with the saved packed mask and scale (1 bit per element
//                     kept for backward); calling the op through the dispatcher keeps that
//                     backward differentiable (double backward) and visible to torch.compile.
//
// Only the data input is differentiable. The other tensor arguments (mask, scale, seed, p) get no
// gradient: one that requires grad is refused with an error naming it, rather than left with a
// .grad of None that looks like a zero gradient.
//
// In C++ rather than torch.library.register_autograd because a training step pays it on every
// call: a Python autograd node costs several microseconds per op, about what the CUDA kernels
// of a small feature map take.
//
// Also here, for the same reason: _drop_block_train, the eager training forward of functional.py
// in one call (key, mask, apply), a CompositeImplicitAutograd kernel so that autograd sees the
// very ops (and records the very node) of the separate calls.
#include <cstdint>
#include <limits>
#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace dropblock {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Refuses an argument `name` of `op` that has no gradient formula but would be recorded as one.
void refuse_grad(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && t.requires_grad()), op, ": ", name,
              " requires grad, but the op has no gradient for it (only the input has one); pass ", name, ".detach()");
}

at::Tensor call_apply(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale, bool shared_channels) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dropblock_cuda::drop_block_apply", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(input, mask, scale, shared_channels);
}

const c10::TypedOperatorHandle<void(at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>& inplace_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dropblock_cuda::drop_block_apply_", "")
                             .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op;
}

// The mask and the scale, handed to Function::apply as one argument that is not a tensor: they never
// require grad (refuse_grad), so the node needs neither their edges nor their metadata (Function::apply
// records a VariableInfo, with its own copy of the sizes, for every tensor argument). Saved as before.
struct MaskAndScale {
  const at::Tensor& mask;
  const at::Tensor& scale;
};

class DropBlockApply : public torch::autograd::Function<DropBlockApply> {
 public:
  // Backward calls a registered op on saved tensors: compiled autograd may trace it.
  static constexpr bool is_traceable = true;

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const MaskAndScale& mask_and_scale,
                            bool shared_channels) {
    ctx->save_for_backward({mask_and_scale.mask, mask_and_scale.scale});
    ctx->saved_data["shared_channels"] = shared_channels;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_apply(input, mask_and_scale.mask, mask_and_scale.scale, shared_channels);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const bool shared_channels = ctx->saved_data["shared_channels"].toBool();
    return {call_apply(grad_outputs[0], saved[0], saved[1], shared_channels), at::Tensor(), at::Tensor()};
  }
};

at::Tensor drop_block_apply_autograd(const at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                     bool shared_channels) {
  refuse_grad(mask, "drop_block_apply", "mask");
  refuse_grad(scale, "drop_block_apply", "scale");
  if (!(at::GradMode::is_enabled() && input.requires_grad()) && !input._fw_grad(/*level=*/0).defined()) {
    // Nothing to record: Function::apply would build a node and a context only to drop them (about a
    // microsecond, a fair part of a small map's forward). An input with a tangent keeps the Function's
    // handling of it.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_apply(input, mask, scale, shared_channels);
  }
  return DropBlockApply::apply(input, MaskAndScale{mask, scale}, shared_channels);
}

using MaskOp = c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef, double, bool)>;

const MaskOp& mask_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dropblock_cuda::drop_block_mask", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    c10::IntArrayRef, double, bool)>();
  return op;
}

std::tuple<at::Tensor, at::Tensor> drop_block_mask_autograd(const at::Tensor& input, const at::Tensor& seed,
                                                            const at::Tensor& p, c10::IntArrayRef block_size,
                                                            double eps, bool shared_channels) {
  const MaskOp& op = mask_op();
  // The outputs depend on the input's shape only (no gradient for it); p changes them in steps.
  refuse_grad(seed, "drop_block_mask", "seed");
  refuse_grad(p, "drop_block_mask", "p");
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, seed, p, block_size, eps, shared_channels);
}

// The in-place variant has no gradient formula (functional.py records an in-place write under
// autograd with copy_ instead): refuse an input autograd tracks, and bump the version counter so
// that a tensor saved for another op's backward and then overwritten is detected.
void drop_block_apply_inplace_autograd(at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                       bool shared_channels) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && input.requires_grad()),
              "drop_block_apply_: input requires grad; use drop_block_apply (or drop_block2d(..., inplace=True), "
              "which records the write) instead");
  refuse_grad(mask, "drop_block_apply_", "mask");
  refuse_grad(scale, "drop_block_apply_", "scale");
  const at::AutoDispatchBelowAutograd below_autograd;
  inplace_op().call(input, mask, scale, shared_channels);
}

void drop_block_apply_inplace_view(at::Tensor& input, const at::Tensor& mask, const at::Tensor& scale,
                                   bool shared_channels) {
  {
    const at::AutoDispatchBelowADInplaceOrView below_view;
    inplace_op().call(input, mask, scale, shared_channels);
  }
  input.unsafeGetTensorImpl()->bump_version();
}

// Every int64 key, the high end exclusive: functional.py's torch.randint(_KEY_LOW, _KEY_HIGH, ()).
constexpr int64_t kKeyLow = std::numeric_limits<int64_t>::min();
constexpr int64_t kKeyHigh = std::numeric_limits<int64_t>::max();

// The key of one call from the default generator of the input's device, the one functional.py's
// torch.randint draws: the same value, and the generator left in the same state. On the CPU by
// the steps of torch's own kernel (random_from_to_kernel: the generator's lock, one
// uniform_int_from_to_distribution draw) without its dispatch, TensorIterator and output tensor,
// a few microseconds of a small map's forward; elsewhere by at::randint itself (on CUDA a kernel
// that reads the generator's offset at replay, which keeps CUDA graph capture safe).
//
// The direct draw only for a plain CPU tensor outside every tracer, mode and transform, each of which
// works by a dispatch key of its own (in the thread's included set: torch.jit.trace, TorchDispatchModes
// such as FakeTensorMode under torch.compile, torch.func; or on a wrapper tensor: functionalization,
// vmap, subclasses): those see or replay at::randint, and would miss a draw made behind their back.
bool plain_dispatch() {
  return (c10::impl::tls_local_dispatch_key_set().included_ - c10::default_included_set).empty();
}

bool draws_directly(const at::Tensor& input) {
  static const c10::DispatchKeySet plain_cpu({c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                              c10::DispatchKey::AutogradCPU, c10::DispatchKey::AutocastCPU});
  return input.is_cpu() && (input.key_set() - plain_cpu).empty() && plain_dispatch();
}

// A 0-dim CPU tensor holding `value`: at::scalar_tensor, or outside tracers and modes (which must see
// the tensor made) its steps without their two dispatches, a fresh CPU tensor written directly.
template <typename T>
at::Tensor cpu_scalar(T value, at::ScalarType type) {
  if (!plain_dispatch()) {
    return at::scalar_tensor(value, at::TensorOptions(type));
  }
  at::Tensor t = at::detail::empty_cpu({}, type, /*pin_memory=*/false, std::nullopt);
  *t.data_ptr<T>() = value;
  return t;
}

at::Tensor draw_key(const at::Tensor& input) {
  if (!draws_directly(input)) {
    return at::randint(kKeyLow, kKeyHigh, {}, input.options().dtype(at::kLong));
  }
  auto* generator = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  const uint64_t range = static_cast<uint64_t>(kKeyHigh) - static_cast<uint64_t>(kKeyLow);
  int64_t key = 0;
  {
    const std::lock_guard<std::mutex> lock(generator->mutex_);
    key = at::uniform_int_from_to_distribution<int64_t>(range, kKeyLow)(generator);
  }
  return cpu_scalar<int64_t>(key, at::kLong);
}

// functional.py's eager training forward with the default generator, not in place; the caller has
// checked the arguments as functional.py does (p here is the seed rate's p, gamma_scale applied).
// p travels to the mask op as a CPU tensor, as there: the CUDA kernels take it by value.
at::Tensor drop_block_train(const at::Tensor& input, double p, c10::IntArrayRef block_size, double eps,
                            bool shared_channels, bool scale_by_keep) {
  const at::Tensor key = draw_key(input);
  const at::Tensor probability = cpu_scalar<double>(p, at::kDouble);
  auto [mask, scale] = mask_op().call(input, key, probability, block_size, eps, shared_channels);
  if (!scale_by_keep) {
    scale = at::ones({}, input.options().dtype(at::kDouble));
  }
  return call_apply(input, mask, scale, shared_channels);
}

}  // namespace

TORCH_LIBRARY_IMPL(dropblock_cuda, CompositeImplicitAutograd, m) {
  m.impl("_drop_block_train", &drop_block_train);
}

TORCH_LIBRARY_IMPL(dropblock_cuda, Autograd, m) {
  m.impl("drop_block_mask", &drop_block_mask_autograd);
  m.impl("drop_block_apply", &drop_block_apply_autograd);
  m.impl("drop_block_apply_", &drop_block_apply_inplace_autograd);
}

TORCH_LIBRARY_IMPL(dropblock_cuda, ADInplaceOrView, m) {
  m.impl("drop_block_apply_", &drop_block_apply_inplace_view);
}

}  // namespace dropblock
