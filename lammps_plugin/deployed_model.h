/* mlpot: the one small interface between an MD front end and a deployed model file.
 *
 * Plain C++17, no torch and no LAMMPS headers: pair_mlpot.cpp (and any other front end) sees only
 * this. A model takes a graph (atoms = nodes, directed edges within the cutoff) and returns the
 * energy of the local atoms, their per-atom energies and g_e = dE/d(edge vector e) for every
 * edge; the front end turns g into forces and virials (see docs/model_format.md).
 *
 * Implementations live behind DeployedModel (in deployed_model.cpp) and are picked by
 * load_model() from the file's metadata record: the "edge_gradient" interface (a TorchScript
 * module that returns g itself, e.g. PaiNN) and the "descriptor" interface (Behler-Parrinello:
 * symmetry functions of the local atoms from the C++ kernel, a scripted network per species,
 * dE/dG by autograd, then the kernel's chain rule onto the edges). The front end does not
 * change: both return the same outputs. Descriptor models only read edges centred on local atoms
 * (edges centred on ghosts get g_e = 0), which is what a front end that prunes by hop count
 * (num_interactions = 1) hands them anyway.
 */

#ifndef MLPOT_DEPLOYED_MODEL_H
#define MLPOT_DEPLOYED_MODEL_H

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlpot {

// Every problem with a model file or its evaluation. what() names the problem and the fix.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The checked metadata record of a model file (docs/model_format.md).
struct ModelInfo {
  std::string path;
  int format_version = 0;
  std::string artifact;            // "torchscript"
  std::string interface;           // "edge_gradient" | "descriptor"
  std::string kind;                // model_kind, e.g. "painn"
  std::vector<std::string> species;  // species index -> chemical symbol
  double cutoff = 0.0;             // Å: edges shorter than this must be given, both directions
  int num_interactions = 0;        // message-passing layers
  double interaction_range = 0.0;  // Å: how far an atom's energy reaches (ghost-shell width)
  std::string dtype;               // "float32" | "float64"
  std::string mlpot_version;
  std::string torch_version;
  std::string record;              // the raw JSON record
  int members = 0;                 // committee files (record["committee"]): M >= 2, else 0
  double calibration_scale = 0.0;  // committee.calibration.scale, 0 when uncalibrated
};

struct LoadOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  int num_threads = 0;         // intra-op CPU threads; <= 0 keeps the library's current setting
};

// One evaluation. Nodes 0..n_local-1 are local atoms (their energies are summed), the rest are
// ghosts (periodic images / atoms of other ranks) that carry edges for message passing.
// All pointers are borrowed for the duration of compute().
struct ModelInput {
  int64_t n_atoms = 0;
  int64_t n_local = 0;
  const int64_t *species = nullptr;       // [n_atoms] index into ModelInfo::species
  const double *positions = nullptr;      // [n_atoms][3] Å, or nullptr (shipped kinds ignore it)
  int64_t n_edges = 0;
  const int64_t *edge_index = nullptr;    // [2][n_edges]: all centres i, then all neighbours j
  const double *edge_vectors = nullptr;   // [n_edges][3] Å: x_j - x_i
};

// Results in eV and eV/Å, double precision whatever the model's dtype. The arrays belong to the
// model and stay valid until its next compute() call.
struct ModelOutput {
  double energy = 0.0;                     // sum of the local atoms' energies
  const double *atom_energies = nullptr;   // [n_local]
  const double *edge_gradient = nullptr;   // [n_edges][3]: dE/d(edge_vectors[e])
  // Committees only (info().members = M > 0): the members' outputs; the ones above are their mean.
  const double *member_energies = nullptr;         // [M]
  const double *member_atom_energies = nullptr;    // [M][n_local]
  const double *member_edge_gradients = nullptr;   // [M][n_edges][3]
};

class DeployedModel {
 public:
  virtual ~DeployedModel() = default;
  DeployedModel(const DeployedModel &) = delete;
  DeployedModel &operator=(const DeployedModel &) = delete;

  const ModelInfo &info() const { return info_; }

  // Evaluates the model; throws ModelError with a readable message on failure.
  virtual ModelOutput compute(const ModelInput &input) = 0;

  // Intra-op threads for CPU work (<= 0: leave as is); returns the number now in use.
  virtual int set_num_threads(int num_threads) = 0;

  // One line for logs, e.g. "TorchScript (edge_gradient) on cpu, float64, 4 threads".
  virtual std::string description() const = 0;

 protected:
  explicit DeployedModel(ModelInfo info) : info_(std::move(info)) {}
  ModelInfo info_;
};

// Reads and checks a file's metadata record without running (or loading) the model.
ModelInfo read_model_info(const std::string &path);

// Loads a model file with the implementation its metadata asks for.
std::unique_ptr<DeployedModel> load_model(const std::string &path,
                                          const LoadOptions &options = LoadOptions());

// Several model files (same species and cutoff) run on the same graph as one committee: member
// k's outputs are file k's; the mean is theirs. One path: load_model(path).
std::unique_ptr<DeployedModel> load_committee(const std::vector<std::string> &paths,
                                              const LoadOptions &options = LoadOptions());

// The conformal scale for several files run as one committee (they have none of their own):
// `value` is a positive number, or a committee file that `mlpot calibrate` merged from files of
// these names (metadata "committee_of_files") and whose committee.calibration.scale it returns.
double committee_calibration(const std::string &value, const std::vector<std::string> &paths);

}    // namespace mlpot

#endif
