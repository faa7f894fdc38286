// Each kernel adds its Python functions to the `mlpot._kernel` module through one bind_* function,
// called from module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace mlpot::python {

void bind_neighbour_list(pybind11::module_& m);
void bind_symmetry_functions(pybind11::module_& m);

}  // namespace mlpot::python
