// Python binding of the symmetry-function kernel (mlpot._kernel.SymmetryFunctions).
// Inputs are converted to C-contiguous int64/float64 only when they are not already; outputs are
// numpy arrays the kernel writes into directly (the derivative array may reuse a released
// buffer, see derivative_array). The GIL is released while computing.
// C++ std::invalid_argument becomes ValueError (pybind11's default translation).
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "symmetry_functions.hpp"

namespace py = pybind11;

namespace mlpot::python {
namespace {

using Float64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using Int64 = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

// Uninitialised float64 memory from numpy's allocator, which asks Linux for transparent huge
// pages for large arrays: the derivative array holds E × F × 3 doubles (≈ 30 kB per atom), and
// first-touch faults of 4 kB pages cost about a third of the kernel's own time.
py::array_t<double> new_array(std::vector<py::ssize_t> shape) {
    return py::array_t<double>(std::move(shape));
}

// The derivative array [n_edges, F, 3] as a view of the previous call's buffer when the caller
// has dropped every reference to that (training calls compute() batch after batch): fresh
// memory of ≥ 32 MB (glibc unmaps such blocks on free) costs page faults and zeroing of about a
// quarter of the kernel's time at 4096 atoms. A buffer still referenced (by an array, a view or
// a torch tensor) is never reused; one more than twice the size needed is let go. The GIL
// guards the check.
py::array_t<double> derivative_array(py::ssize_t n_edges, py::ssize_t F) {
    static py::object* recycled = new py::object();  // never destroyed: may outlive Python
    const py::ssize_t size = n_edges * F * 3;
    bool reuse = false;
    if (recycled->ptr() && !recycled->is_none() && Py_REFCNT(recycled->ptr()) == 1) {
        const auto capacity = recycled->cast<py::array_t<double>>().size();
        reuse = capacity >= size && capacity <= 2 * size;
    }
    if (!reuse) *recycled = new_array({std::max<py::ssize_t>(size, 1)});
    auto buffer = recycled->cast<py::array_t<double>>();
    const auto d = static_cast<py::ssize_t>(sizeof(double));
    return py::array_t<double>({n_edges, F, py::ssize_t{3}}, {F * 3 * d, 3 * d, d},
                               buffer.mutable_data(), *recycled);
}

struct Inputs {
    Int64 species, edge_index, centres;
    Float64 vectors;
    EdgeList edges;
    std::int64_t n_centres = 0;
};

Inputs check_inputs(const SymmetryFunctions& self, py::handle species, py::handle edge_index,
                    py::handle edge_vectors, py::handle centres) {
    (void)self;
    Inputs in;
    in.species = Int64::ensure(species);
    in.edge_index = Int64::ensure(edge_index);
    if (!edge_vectors.is_none()) in.vectors = Float64::ensure(edge_vectors);
    if (!in.species || in.species.ndim() != 1) {
        throw py::value_error("species must be a 1-d integer array (one species index per atom)");
    }
    if (!in.edge_index || in.edge_index.ndim() != 2 || in.edge_index.shape(0) != 2) {
        throw py::value_error("edge_index must be an integer array of shape (2, n_edges)");
    }
    const auto n_edges = in.edge_index.shape(1);
    if (!edge_vectors.is_none() && (!in.vectors || in.vectors.ndim() != 2 ||
                                    in.vectors.shape(0) != n_edges || in.vectors.shape(1) != 3)) {
        throw py::value_error("edge_vectors must be a float array of shape (n_edges, 3), "
                              "n_edges = " +
                              std::to_string(n_edges));
    }
    const auto n_atoms = in.species.shape(0);
    if (centres.is_none()) {
        in.centres = Int64(n_atoms);
        auto* c = in.centres.mutable_data();
        for (py::ssize_t a = 0; a < n_atoms; ++a) c[a] = a;
    } else {
        in.centres = Int64::ensure(centres);
        if (!in.centres || in.centres.ndim() != 1) {
            throw py::value_error("centres must be a 1-d integer array of atom indices");
        }
    }
    in.n_centres = in.centres.shape(0);
    in.edges.num_atoms = n_atoms;
    in.edges.species = in.species.data();
    in.edges.num_edges = n_edges;
    in.edges.centre = in.edge_index.data();
    in.edges.neighbour = in.edge_index.data() + n_edges;
    in.edges.vectors = edge_vectors.is_none() ? nullptr : in.vectors.data();
    return in;
}

std::unique_ptr<SymmetryFunctions> make(int num_species, double cutoff, py::object angular_cutoff,
                                        const std::string& cutoff_function,
                                        const std::vector<std::pair<double, double>>& radial,
                                        const std::vector<std::tuple<std::string, double, double,
                                                                     double>>& angular) {
    SymmetryFunctionParameters p;
    p.num_species = num_species;
    p.cutoff = cutoff;
    p.angular_cutoff = angular_cutoff.is_none() ? cutoff : angular_cutoff.cast<double>();
    p.cutoff_function = parse_cutoff_function(cutoff_function);
    for (const auto& [eta, r_s] : radial) p.radial.push_back({eta, r_s});
    for (std::size_t k = 0; k < angular.size(); ++k) {
        const auto& [kind, eta, zeta, lambda] = angular[k];
        AngularSymmetryFunction f{AngularSymmetryFunction::Kind::G4, eta, zeta, lambda};
        if (kind == "G5" || kind == "g5") {
            f.kind = AngularSymmetryFunction::Kind::G5;
        } else if (kind != "G4" && kind != "g4") {
            throw std::invalid_argument("symmetry functions: angular function " +
                                        std::to_string(k) + " has kind '" + kind +
                                        "'; use 'G4' or 'G5'");
        }
        p.angular.push_back(f);
    }
    return std::make_unique<SymmetryFunctions>(std::move(p));
}

py::tuple compute(const SymmetryFunctions& self, py::handle species, py::handle edge_index,
                  py::handle edge_vectors, py::handle centres, bool derivatives) {
    Inputs in = check_inputs(self, species, edge_index, edge_vectors, centres);
    const py::ssize_t F = self.num_features();
    auto G = new_array({static_cast<py::ssize_t>(in.n_centres), F});
    py::object dG = py::none();
    double* dG_data = nullptr;
    if (derivatives) {
        auto array = derivative_array(static_cast<py::ssize_t>(in.edges.num_edges), F);
        dG_data = array.mutable_data();
        dG = std::move(array);
    }
    double* G_data = G.mutable_data();
    {
        py::gil_scoped_release release;
        self.compute(in.edges, in.centres.data(), in.n_centres, G_data, dG_data);
    }
    return py::make_tuple(std::move(G), std::move(dG));
}

// dE/dG as a float64 [n_centres, F] array, or a ValueError naming the expected shape.
Float64 energy_weights(py::handle dE_dG, const Inputs& in, py::ssize_t F) {
    auto weights = Float64::ensure(dE_dG);
    if (!weights || weights.ndim() != 2 || weights.shape(0) != in.n_centres ||
        weights.shape(1) != F) {
        throw py::value_error("dE_dG must have shape (n_centres, n_features) = (" +
                              std::to_string(in.n_centres) + ", " + std::to_string(F) + ")");
    }
    return weights;
}

py::array_t<double> contract(const SymmetryFunctions& self, py::handle species,
                             py::handle edge_index, py::handle derivatives, py::handle dE_dG,
                             py::handle centres) {
    Inputs in = check_inputs(self, species, edge_index, py::none(), centres);
    const py::ssize_t F = self.num_features(), E = in.edges.num_edges;
    auto dG = Float64::ensure(derivatives);
    auto weights = energy_weights(dE_dG, in, F);
    if (!dG || dG.ndim() != 3 || dG.shape(0) != E || dG.shape(1) != F || dG.shape(2) != 3) {
        throw py::value_error("derivatives must have shape (n_edges, n_features, 3) = (" +
                              std::to_string(E) + ", " + std::to_string(F) + ", 3)");
    }
    auto g = new_array({E, 3});
    double* g_data = g.mutable_data();
    {
        py::gil_scoped_release release;
        self.contract(in.edges, in.centres.data(), in.n_centres, dG.data(), weights.data(),
                      g_data);
    }
    return g;
}

py::array_t<double> gradient(const SymmetryFunctions& self, py::handle species,
                             py::handle edge_index, py::handle edge_vectors, py::handle dE_dG,
                             py::handle centres) {
    Inputs in = check_inputs(self, species, edge_index, edge_vectors, centres);
    const py::ssize_t F = self.num_features(), E = in.edges.num_edges;
    auto weights = energy_weights(dE_dG, in, F);
    auto g = new_array({E, 3});
    double* g_data = g.mutable_data();
    {
        py::gil_scoped_release release;
        self.gradient(in.edges, in.centres.data(), in.n_centres, weights.data(), g_data);
    }
    return g;
}

}  // namespace

void bind_symmetry_functions(py::module_& m) {
    m.def("simd_path", &simd_path,
          "The symmetry-function kernel's hand-written version in use: 'avx512', 'avx2' or "
          "'portable' (MLPOT_SIMD selects a lower one)");
    py::class_<SymmetryFunctions>(m, "SymmetryFunctions",
                                  "Atom-centred symmetry functions (G2, G4, G5) with analytic "
                                  "derivatives per edge; used through mlpot.symmetry_functions."
                                  "SymmetryFunctionSet.")
        .def(py::init(&make), py::arg("num_species"), py::arg("cutoff"),
             py::arg("angular_cutoff") = py::none(), py::arg("cutoff_function") = "cosine",
             py::arg("radial") = std::vector<std::pair<double, double>>{},
             py::arg("angular") = std::vector<std::tuple<std::string, double, double, double>>{},
             "radial: [(eta, r_s)], angular: [(kind 'G4'|'G5', eta, zeta, lambda)]")
        .def_property_readonly("num_features", &SymmetryFunctions::num_features)
        .def("compute", &compute, py::arg("species"), py::arg("edge_index"),
             py::arg("edge_vectors"), py::arg("centres") = py::none(),
             py::arg("derivatives") = true,
             "(descriptors[n_centres, F], derivatives[n_edges, F, 3] or None); centres default "
             "to every atom")
        .def("contract", &contract, py::arg("species"), py::arg("edge_index"),
             py::arg("derivatives"), py::arg("dE_dG"), py::arg("centres") = py::none(),
             "edge gradient[n_edges, 3] = Σ_f dE_dG[row(e), f] derivatives[e, f, :]")
        .def("gradient", &gradient, py::arg("species"), py::arg("edge_index"),
             py::arg("edge_vectors"), py::arg("dE_dG"), py::arg("centres") = py::none(),
             "edge gradient[n_edges, 3] from dE_dG[n_centres, F], recomputing the derivatives "
             "one centre at a time (no [n_edges, F, 3] array)");
}

}  // namespace mlpot::python
