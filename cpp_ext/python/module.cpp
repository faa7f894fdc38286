// The one definition of the `mlpot._kernel` extension module; each kernel binds itself.
#include <exception>
#include <stdexcept>

#include <pybind11/pybind11.h>

#include "bindings.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_kernel, m) {
    m.doc() = "Compiled kernels of mlpot; use the wrappers in mlpot.neighbours instead.";

    // Kernels refuse outputs that would not fit in memory with std::length_error, which pybind11
    // would otherwise turn into a ValueError.
    py::register_local_exception_translator([](std::exception_ptr error) {
        try {
            if (error) std::rethrow_exception(error);
        } catch (const std::length_error& e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        }
    });

    mlpot::python::bind_neighbour_list(m);
    mlpot::python::bind_symmetry_functions(m);
}
