// The op's schema (torch.ops.unipercept.*) and the Python module that loading the extension
// needs. Kernels register in cpu/ and cuda/; the fake (meta) kernel and autograd formula are
// registered from Python when unipercept.ops loads this extension.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(unipercept, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

// Importing the module (unipercept.ops.MultiScaleDeformableAttention) runs the static
// registrations above; the module itself holds nothing.
static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "MultiScaleDeformableAttention",
    "Compiled multi-scale deformable attention; see torch.ops.unipercept.", -1, nullptr};

PyMODINIT_FUNC PyInit_MultiScaleDeformableAttention(void) {
  return PyModule_Create(&module_definition);
}
