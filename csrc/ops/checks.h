#pragma once
// Argument checks shared by the op families. Every message names the argument, says what was
// expected and what came.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstddef>
#include <string>

namespace fastmtl {

// The floating dtypes the kernels take: float32, float64, float16 and bfloat16.
inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// "<name> must be float32, float64, float16 or bfloat16, got <dtype>" unless it is one of them.
inline void check_kernel_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_kernel_float(t.scalar_type()), name, " must be float32, float64, float16 or bfloat16, got ",
              t.scalar_type());
}

// The dtype the kernels accumulate in and return half-type results in: float32 for float16 and
// bfloat16, else the input dtype (at::opmath_type<scalar_t> of the kernels, as a ScalarType).
inline at::ScalarType accumulate_type(at::ScalarType t) { return at::toOpMathType(t); }

// One allowed value of a string argument and the enum it stands for.
template <typename E>
struct Choice {
  const char* name;
  E value;
};

// The value named `value` among `choices`; otherwise an error such as
//   Invalid kind 'xiou': expected 'iou', 'giou', 'diou' or 'ciou'
// (the wording of the Python checks, which say "Invalid" as torchvision's do).
template <typename E, std::size_t N>
E parse_choice(c10::string_view value, const char* arg, const Choice<E> (&choices)[N]) {
  for (const Choice<E>& c : choices) {
    if (value == c10::string_view(c.name)) return c.value;
  }
  std::string allowed;
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) allowed += i + 1 == N ? " or " : ", ";
    allowed += std::string("'") + choices[i].name + "'";
  }
  TORCH_CHECK(false, "Invalid ", arg, " '", std::string(value.data(), value.size()), "': expected ", allowed);
}

}  // namespace fastmtl
