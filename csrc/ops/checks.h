#pragma once
// Argument checks shared by the op families. Every message names the argument, says what was
// expected and what came.
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstddef>
#include <string>

namespace fastmtl {

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
