// The fastmtl._C Python module. It holds no functions: importing it loads this shared
// library, whose static TORCH_LIBRARY registrations make the ops appear under torch.ops.fastmtl.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastmtl compiled ops", -1, nullptr};
  return PyModule_Create(&module);
}
