// Python binding of the neighbour-list kernel. Inputs must already be C-contiguous float64 arrays
// (mlpot.neighbours converts them); outputs are handed to numpy without copying.
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "neighbour_list.hpp"

namespace py = pybind11;

namespace mlpot::python {
namespace {

using Float64Array = py::array_t<double, py::array::c_style>;

// A numpy array that owns `buffer`: the capsule frees it when the array is collected.
template <typename T>
py::array to_numpy(PodBuffer<T>&& buffer, std::vector<py::ssize_t> shape) {
    auto* owner = new PodBuffer<T>(std::move(buffer));
    py::capsule free_buffer(owner, [](void* p) { delete static_cast<PodBuffer<T>*>(p); });
    return py::array_t<T>(std::move(shape), owner->data(), free_buffer);
}

py::tuple neighbour_list(const std::string& quantities, const std::array<bool, 3>& pbc,
                         const Float64Array& cell, const Float64Array& positions, double cutoff,
                         bool self_interaction, std::uint64_t max_memory_bytes) {
    if (cell.ndim() != 2 || cell.shape(0) != 3 || cell.shape(1) != 3) {
        throw py::value_error("cell must have shape (3, 3)");
    }
    if (positions.ndim() != 2 || positions.shape(1) != 3) {
        throw py::value_error("positions must have shape (n_atoms, 3)");
    }
    NeighbourListSettings settings;
    settings.cutoff = cutoff;
    settings.pbc = pbc;
    settings.quantities = Quantities::parse(quantities);
    settings.self_interaction = self_interaction;
    settings.max_memory_bytes = max_memory_bytes;
    std::array<double, 9> cell_values;
    std::copy(cell.data(), cell.data() + 9, cell_values.begin());
    const double* xyz = positions.data();
    const auto n_atoms = static_cast<std::size_t>(positions.shape(0));

    NeighbourList result;
    {
        py::gil_scoped_release release;
        result = compute_neighbour_list(xyz, n_atoms, cell_values, settings);
    }

    const auto n = static_cast<py::ssize_t>(result.n_pairs);
    std::map<char, py::object> arrays;
    for (const char letter : quantities) {
        if (arrays.count(letter) != 0) continue;
        switch (letter) {
            case 'i': arrays[letter] = to_numpy(std::move(result.i), {n}); break;
            case 'j': arrays[letter] = to_numpy(std::move(result.j), {n}); break;
            case 'S': arrays[letter] = to_numpy(std::move(result.S), {n, 3}); break;
            case 'd': arrays[letter] = to_numpy(std::move(result.d), {n}); break;
            case 'D': arrays[letter] = to_numpy(std::move(result.D), {n, 3}); break;
        }
    }
    py::tuple out(quantities.size());
    for (std::size_t k = 0; k < quantities.size(); ++k) out[k] = arrays[quantities[k]];
    return out;
}

}  // namespace

void bind_neighbour_list(py::module_& m) {
    m.def("neighbour_list", &neighbour_list, py::arg("quantities"), py::arg("pbc"),
          py::arg("cell").noconvert(), py::arg("positions").noconvert(), py::arg("cutoff"),
          py::arg("self_interaction") = false, py::arg("max_memory_bytes") = 0,
          "Full neighbour list; returns one array per letter of `quantities` (from \"ijSdD\").\n"
          "cell and positions must be C-contiguous float64 arrays. max_memory_bytes=0 means the\n"
          "memory currently available. Raises ValueError for invalid input and MemoryError when\n"
          "the estimated output does not fit in memory.");
    m.def("set_buffer_cache_limit", &set_buffer_cache_limit, py::arg("max_bytes"),
          "Keep at most this many bytes of freed large result buffers for reuse (0: none).");
    m.def("buffer_cache_limit", &buffer_cache_limit);
}

}  // namespace mlpot::python
