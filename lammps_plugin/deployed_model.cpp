/* mlpot: reading model files and running them: the TorchScript "edge_gradient" interface (e.g.
 * PaiNN) and the "descriptor" interface (Behler-Parrinello: symmetry functions from the C++
 * kernel, scripted per-species networks, chain rule back onto the edges).
 *
 * The only translation unit of the plugin that includes torch headers (the kernel,
 * symmetry_functions.hpp, is plain C++). See deployed_model.h for the interface,
 * docs/model_format.md for the file format and docs/behler_parrinello.md for the descriptor one.
 */

#include "deployed_model.h"

// torch's headers are not -Wextra clean; keep the build log about our own code
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wpedantic"
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wc++20-extensions"
#endif
#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#pragma GCC diagnostic pop

#include "nlohmann/json.hpp"    // header-only; ships with the LAMMPS headers (namespace nlohmann_lmp)
#include "archive_check.h"
#include "symmetry_functions.hpp"    // the C++ kernel shared with mlpot._kernel

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>
#include <utility>

namespace mlpot {

namespace {

using json = ::nlohmann_lmp::basic_json<>;

constexpr const char *FORMAT_NAME = "mlpot-model";
constexpr int FORMAT_VERSION = 1;
constexpr const char *METADATA_RECORD = "mlpot_metadata.json";

// First line of an exception message: torch's c10::Error carries a long C++ backtrace.
std::string first_line(const std::string &text)
{
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

std::string path_str(const std::string &path) { return "'" + path + "'"; }

bool file_readable(const std::string &path)
{
  std::ifstream stream(path, std::ios::binary);
  return stream.good();
}

bool starts_like_zip(const std::string &path)
{
  std::ifstream stream(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  stream.read(magic, 4);
  return stream.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K';
}

// The raw metadata record, read from the zip archive without loading the module.
std::string read_record(const std::string &path)
{
  if (!file_readable(path))
    throw ModelError("model file " + path_str(path) +
                     " does not exist or cannot be read; check the path");
  if (!starts_like_zip(path))
    throw ModelError(path_str(path) +
                     " is not a TorchScript archive (truncated, corrupted, or not a model file); "
                     "re-export it with `mlpot export`");
  try {
    const std::string damaged = first_damaged_record(path);
    if (!damaged.empty())
      throw ModelError(path_str(path) + " is corrupted (checksum mismatch in " + damaged +
                       "); re-export it with `mlpot export` or download it again");
  } catch (const std::runtime_error &error) {
    if (dynamic_cast<const ModelError *>(&error)) throw;
    throw ModelError(path_str(path) + " is corrupted (" + error.what() +
                     "); re-export it with `mlpot export`");
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string name = std::string("extra/") + METADATA_RECORD;
    if (!reader.hasRecord(name))
      throw ModelError(path_str(path) + " is a TorchScript file but not an mlpot model (it has no " +
                       METADATA_RECORD + " record); export models with `mlpot export`");
    auto record = reader.getRecord(name);
    const auto *bytes = static_cast<const char *>(std::get<0>(record).get());
    return std::string(bytes, bytes + std::get<1>(record));
  } catch (const c10::Error &error) {
    throw ModelError(path_str(path) + " is corrupted (" + first_line(error.what_without_backtrace()) +
                     "); re-export it with `mlpot export`");
  }
}

template <typename T> T required(const json &record, const char *key, const std::string &path)
{
  if (!record.contains(key))
    throw ModelError(path_str(path) + ": metadata record lacks '" + key +
                     "'; re-export the model with `mlpot export`");
  try {
    return record.at(key).get<T>();
  } catch (const std::exception &) {
    throw ModelError(path_str(path) + ": metadata field '" + key + "' has the wrong type (" +
                     record.at(key).dump() + "); re-export the model with `mlpot export`");
  }
}

ModelInfo parse_record(const std::string &text, const std::string &path)
{
  json record;
  try {
    record = json::parse(text);
  } catch (const std::exception &error) {
    throw ModelError(path_str(path) + ": metadata record is not valid JSON (" +
                     first_line(error.what()) + "); re-export it with `mlpot export`");
  }
  if (!record.is_object() || !record.contains("format") || !record["format"].is_string() ||
      record["format"].get<std::string>() != FORMAT_NAME)
    throw ModelError(path_str(path) + " is not an mlpot model file (wrong 'format' in " +
                     METADATA_RECORD + "); export models with `mlpot export`");

  ModelInfo info;
  info.path = path;
  info.record = text;
  if (!record.contains("format_version") || !record["format_version"].is_number_integer())
    throw ModelError(path_str(path) + " has an invalid format_version; re-export it");
  info.format_version = record["format_version"].get<int>();
  if (info.format_version < 1)
    throw ModelError(path_str(path) + " has an invalid format_version " +
                     std::to_string(info.format_version) + "; re-export it");
  if (info.format_version > FORMAT_VERSION)
    throw ModelError(path_str(path) + " uses model format version " +
                     std::to_string(info.format_version) + ", but this pair_style mlpot reads up "
                     "to version " + std::to_string(FORMAT_VERSION) +
                     "; upgrade mlpot (pip install -U mlpot) and rebuild the plugin");

  info.artifact = required<std::string>(record, "artifact", path);
  if (info.artifact != "torchscript")
    throw ModelError(path_str(path) + " holds a '" + info.artifact +
                     "' artifact; this pair_style mlpot loads 'torchscript' only; upgrade mlpot");
  info.kind = required<std::string>(record, "model_kind", path);
  info.species = required<std::vector<std::string>>(record, "species", path);
  if (info.species.empty()) throw ModelError(path_str(path) + ": the model has no species");
  info.cutoff = required<double>(record, "cutoff", path);
  if (!(info.cutoff > 0.0)) throw ModelError(path_str(path) + ": cutoff must be positive");
  info.num_interactions = required<int>(record, "num_interactions", path);
  info.interaction_range = record.contains("interaction_range")
      ? required<double>(record, "interaction_range", path)
      : info.cutoff * std::max(1, info.num_interactions);
  if (info.interaction_range < info.cutoff) info.interaction_range = info.cutoff;
  info.dtype = required<std::string>(record, "dtype", path);
  if (info.dtype != "float32" && info.dtype != "float64")
    throw ModelError(path_str(path) + " has an unsupported dtype '" + info.dtype +
                     "' (float32 or float64 expected)");
  const json units = record.value("units", json::object());
  if (!units.is_object() || units.value("energy", "") != "eV" ||
      units.value("length", "") != "\xc3\x85")
    throw ModelError(path_str(path) + " declares units " + units.dump() +
                     "; mlpot models must be in eV and \xc3\x85");
  // Which front-end contract the file follows (the same rule as mlpot.model_file.check_metadata).
  info.interface = required<std::string>(record, "interface", path);
  if (record.contains("committee") && !record["committee"].is_null()) {
    const json &committee = record["committee"];
    bool calibrated = false;
    try {
      info.members = committee.at("members").get<int>();
      const json calibration = committee.value("calibration", json());
      calibrated = !calibration.is_null();
      if (calibrated) info.calibration_scale = calibration.at("scale").get<double>();
    } catch (const std::exception &error) {
      throw ModelError(path_str(path) + ": metadata field 'committee' is malformed (" +
                       first_line(error.what()) + "); re-export the model with `mlpot export`");
    }
    if (info.members < 2)
      throw ModelError(path_str(path) + ": metadata field 'committee' has " +
                       std::to_string(info.members) + " member(s); a committee needs at least 2: "
                       "re-export it with `mlpot export`");
    if (calibrated && !(info.calibration_scale > 0.0 && std::isfinite(info.calibration_scale)))
      throw ModelError(path_str(path) + " has an invalid committee calibration scale " +
                       std::to_string(info.calibration_scale) +
                       "; calibrate it again with `mlpot calibrate`");
  }
  info.mlpot_version = record.value("mlpot_version", std::string("?"));
  info.torch_version = record.value("torch_version", std::string("?"));
  return info;
}

/* ---------------------------------------------------------------------------------------------
   What both interfaces share: a TorchScript module on a device, in a dtype, with CPU threads.
------------------------------------------------------------------------------------------------ */

class TorchScriptModel : public DeployedModel {
 public:
  TorchScriptModel(ModelInfo info, const LoadOptions &options)
      : DeployedModel(std::move(info)), device_(torch::kCPU)
  {
    try {
      device_ = torch::Device(options.device);
    } catch (const c10::Error &) {
      throw ModelError("unknown device '" + options.device + "'; use cpu or cuda");
    }
    if (device_.is_cuda()) {
      if (!torch::cuda::is_available())
        throw ModelError("device '" + options.device + "' requested, but this torch (" +
                         std::string(TORCH_VERSION) +
                         ") sees no CUDA GPU (CPU-only build or no driver); use `device cpu`");
      if (device_.has_index() && device_.index() >= static_cast<int>(torch::cuda::device_count()))
        throw ModelError("device '" + options.device + "' requested, but only " +
                         std::to_string(torch::cuda::device_count()) + " CUDA device(s) exist");
    } else if (!device_.is_cpu()) {
      throw ModelError("device '" + options.device + "' is not supported; use cpu or cuda");
    }
    dtype_ = info_.dtype == "float32" ? torch::kFloat32 : torch::kFloat64;
    set_num_threads(options.num_threads);

    try {
      torch::jit::ExtraFilesMap extra{{METADATA_RECORD, ""}};
      module_ = torch::jit::load(info_.path, device_, extra);
    } catch (const c10::Error &error) {
      throw ModelError(path_str(info_.path) + " could not be loaded as TorchScript (" +
                       first_line(error.what_without_backtrace()) +
                       "); the file is probably corrupted or was written by a newer torch than " +
                       TORCH_VERSION + ": re-export it with `mlpot export`");
    }
    module_.eval();
  }

  int set_num_threads(int num_threads) override
  {
    if (num_threads > 0) {
      at::set_num_threads(num_threads);
      // Inter-op threads can only be set once per process, before any parallel work ran.
      try {
        at::set_num_interop_threads(1);
      } catch (const c10::Error &) {
      }
    }
    return at::get_num_threads();
  }

  std::string description() const override
  {
    std::ostringstream text;
    text << "TorchScript (" << info_.interface << extra_description() << ") on " << device_.str()
         << ", " << info_.dtype;
    if (device_.is_cpu()) text << ", " << at::get_num_threads() << " thread(s)";
    return text.str();
  }

 protected:
  virtual std::string extra_description() const { return ""; }

  static void check_sizes(const ModelInput &in)
  {
    if (in.n_local < 0 || in.n_local > in.n_atoms || in.n_edges < 0)
      throw ModelError("mlpot: inconsistent graph sizes (n_atoms " + std::to_string(in.n_atoms) +
                       ", n_local " + std::to_string(in.n_local) + ", n_edges " +
                       std::to_string(in.n_edges) + ")");
  }

  std::string failure(const ModelInput &in, const std::exception &error) const
  {
    return "mlpot: the model failed on a graph of " + std::to_string(in.n_atoms) + " atoms (" +
        std::to_string(in.n_local) + " local) and " + std::to_string(in.n_edges) + " edges: " +
        first_line(error.what());
  }

  torch::Device device_;
  torch::Dtype dtype_ = torch::kFloat64;
  torch::jit::Module module_;
};

/* ---------------------------------------------------------------------------------------------
   The "edge_gradient" interface: forward(positions, species, edge_index, edge_vectors, n_local)
   -> {"energy", "atom_energies", "edge_gradient"}, with the gradient taken inside forward.
------------------------------------------------------------------------------------------------ */

class TorchScriptEdgeModel final : public TorchScriptModel {
 public:
  using TorchScriptModel::TorchScriptModel;

  ModelOutput compute(const ModelInput &in) override
  {
    check_sizes(in);
    // Autograd runs inside the scripted forward: gradient mode must be on, inference mode off.
    c10::InferenceMode inference_off(false);
    torch::AutoGradMode grad_on(true);

    const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    // Borrow the caller's arrays (no copy when they already have the model's dtype on the CPU).
    auto borrow = [](const void *data, std::vector<int64_t> shape, torch::TensorOptions options) {
      return torch::from_blob(const_cast<void *>(data), shape, options);
    };
    torch::Tensor species = in.n_atoms
        ? borrow(in.species, {in.n_atoms}, i64)
        : torch::empty({0}, i64);
    torch::Tensor edge_index = in.n_edges
        ? borrow(in.edge_index, {2, in.n_edges}, i64)
        : torch::empty({2, 0}, i64);
    torch::Tensor edge_vectors = in.n_edges
        ? borrow(in.edge_vectors, {in.n_edges, 3}, f64)
        : torch::empty({0, 3}, f64);
    torch::Tensor positions = (in.positions && in.n_atoms)
        ? borrow(in.positions, {in.n_atoms, 3}, f64)
        : torch::zeros({in.n_atoms, 3}, f64);

    species = species.to(device_);
    edge_index = edge_index.to(device_);
    edge_vectors = edge_vectors.to(device_, dtype_);
    positions = positions.to(device_, dtype_);

    c10::IValue result;
    try {
      result = module_.forward({positions, species, edge_index, edge_vectors, in.n_local});
    } catch (const std::exception &error) {
      throw ModelError(failure(in, error));
    }
    if (!result.isGenericDict())
      throw ModelError(path_str(info_.path) + ": forward() did not return a Dict[str, Tensor]; "
                       "re-export the model with `mlpot export`");
    auto outputs = result.toGenericDict();
    auto take = [&](const char *key) {
      if (!outputs.contains(key))
        throw ModelError(path_str(info_.path) + ": forward() returned no '" + key +
                         "'; re-export the model with `mlpot export`");
      return outputs.at(key).toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
    };
    energy_ = take("energy");
    atom_energies_ = take("atom_energies");
    edge_gradient_ = take("edge_gradient");
    if (energy_.numel() != 1 || atom_energies_.numel() != in.n_local ||
        edge_gradient_.numel() != 3 * in.n_edges)
      throw ModelError(path_str(info_.path) + ": forward() returned outputs of unexpected shapes "
                       "(energy " + std::to_string(energy_.numel()) + " values, atom_energies " +
                       std::to_string(atom_energies_.numel()) + " for " +
                       std::to_string(in.n_local) + " local atoms, edge_gradient " +
                       std::to_string(edge_gradient_.numel()) + " for " +
                       std::to_string(in.n_edges) + " edges)");
    ModelOutput out;
    out.energy = energy_.item<double>();
    out.atom_energies = atom_energies_.data_ptr<double>();
    out.edge_gradient = edge_gradient_.data_ptr<double>();
    if (info_.members > 0) {    // a committee file: forward() also returns the members' outputs
      member_energies_ = take("member_energies");
      member_atom_energies_ = take("member_atom_energies");
      member_gradients_ = take("member_edge_gradients");
      if (member_energies_.numel() != info_.members ||
          member_atom_energies_.numel() != info_.members * in.n_local ||
          member_gradients_.numel() != 3 * info_.members * in.n_edges)
        throw ModelError(path_str(info_.path) + ": forward() returned member outputs of "
                         "unexpected shapes for a committee of " + std::to_string(info_.members) +
                         " members, " + std::to_string(in.n_local) + " local atoms and " +
                         std::to_string(in.n_edges) + " edges");
      out.member_energies = member_energies_.data_ptr<double>();
      out.member_atom_energies = member_atom_energies_.data_ptr<double>();
      out.member_edge_gradients = member_gradients_.data_ptr<double>();
    }
    return out;
  }

 private:
  torch::Tensor energy_, atom_energies_, edge_gradient_;    // keep the outputs alive
  torch::Tensor member_energies_, member_atom_energies_, member_gradients_;
};

/* ---------------------------------------------------------------------------------------------
   The "descriptor" interface (Behler-Parrinello). The file's module is only the networks,
   forward(descriptors[N, F], species[N]) -> atom_energies[N]; the symmetry-function set is in
   the metadata record ("symmetry_functions", SymmetryFunctionSet.to_dict() form). Per call, for
   the local atoms 0 .. n_local-1 (the centres):
     1. G[n_local, F] with the kernel (edges centred on ghosts are ignored, and get g_e = 0);
     2. E_i = forward(G, species[0:n_local]); dE/dG by autograd;
     3. g_e = sum_f dE/dG[i(e), f] dG_{i(e), f}/dr_e with the kernel's fused chain rule.
   The same steps as mlpot.models.behler_parrinello.DescriptorDeployedModel (ASE).
------------------------------------------------------------------------------------------------ */

// The kernel's parameters from record["symmetry_functions"]; entries as objects ({"eta", "r_s"},
// {"kind", "eta", "zeta", "lambda"}) or lists ([eta, r_s], [kind, eta, zeta, lambda]).
SymmetryFunctionParameters parse_symmetry_functions(const ModelInfo &info)
{
  const std::string where = path_str(info.path) + ": metadata field 'symmetry_functions'";
  const std::string fix = "; re-export the model with `mlpot export`";
  json record;
  try {
    record = json::parse(info.record);
  } catch (const std::exception &error) {
    throw ModelError(path_str(info.path) + ": metadata record is not valid JSON (" +
                     first_line(error.what()) + ")" + fix);
  }
  if (!record.contains("symmetry_functions") || !record["symmetry_functions"].is_object())
    throw ModelError(path_str(info.path) + " is a '" + info.kind + "' model (descriptor "
                     "interface) but its metadata record has no 'symmetry_functions' object" + fix);
  const json &r = record["symmetry_functions"];
  SymmetryFunctionParameters p;
  try {
    const auto species = r.at("species").get<std::vector<std::string>>();
    if (species != info.species)
      throw ModelError(where + " is defined for species " + r.at("species").dump() +
                       ", not the model's species" + fix);
    p.num_species = static_cast<int>(species.size());
    p.cutoff = r.at("cutoff").get<double>();
    p.angular_cutoff = (r.contains("angular_cutoff") && !r["angular_cutoff"].is_null())
        ? r["angular_cutoff"].get<double>()
        : p.cutoff;
    p.cutoff_function = parse_cutoff_function(r.value("cutoff_function", std::string("cosine")));
    for (const auto &f : r.value("radial", json::array())) {
      if (f.is_array())
        p.radial.push_back({f.at(0).get<double>(), f.at(1).get<double>()});
      else
        p.radial.push_back({f.at("eta").get<double>(), f.value("r_s", 0.0)});
    }
    for (const auto &f : r.value("angular", json::array())) {
      const bool list = f.is_array();
      const std::string kind = list ? f.at(0).get<std::string>()
                                    : f.value("kind", std::string("G4"));
      if (kind != "G4" && kind != "G5")
        throw ModelError(where + ": unknown angular kind '" + kind + "' (G4 or G5)" + fix);
      p.angular.push_back({kind == "G5" ? AngularSymmetryFunction::Kind::G5
                                        : AngularSymmetryFunction::Kind::G4,
                           (list ? f.at(1) : f.at("eta")).get<double>(),
                           (list ? f.at(2) : f.at("zeta")).get<double>(),
                           (list ? f.at(3) : f.at("lambda")).get<double>()});
    }
  } catch (const ModelError &) {
    throw;
  } catch (const std::invalid_argument &error) {    // parse_cutoff_function
    throw ModelError(where + ": " + first_line(error.what()) + fix);
  } catch (const std::exception &error) {    // missing keys, wrong types (nlohmann)
    throw ModelError(where + " is malformed (" + first_line(error.what()) + ")" + fix);
  }
  // The front end provides edges up to the model's cutoff: the functions must not reach further.
  if (p.cutoff > info.cutoff * (1.0 + 1e-12))
    throw ModelError(where + " has cutoff " + std::to_string(p.cutoff) +
                     " A, beyond the model's cutoff " + std::to_string(info.cutoff) + " A" + fix);
  return p;
}

class DescriptorModel final : public TorchScriptModel {
 public:
  DescriptorModel(ModelInfo info, const LoadOptions &options)
      : TorchScriptModel(std::move(info), options)
  {
    // The parameters are checked after the module loaded, so that a damaged file says so first.
    const SymmetryFunctionParameters parameters = parse_symmetry_functions(info_);
    try {
      sf_.reset(new SymmetryFunctions(parameters));
    } catch (const std::invalid_argument &error) {
      throw ModelError(path_str(info_.path) + ": metadata field 'symmetry_functions' is invalid (" +
                       first_line(error.what()) + "); re-export the model with `mlpot export`");
    }
  }

  ModelOutput compute(const ModelInput &in) override
  {
    check_sizes(in);
    const int64_t n = in.n_local;
    const int64_t F = sf_->num_features();
    const EdgeList edges{in.n_atoms, in.species, in.n_edges, in.edge_index,
                         in.edge_index + in.n_edges, in.edge_vectors};
    centres_.resize(n);
    std::iota(centres_.begin(), centres_.end(), int64_t(0));
    descriptors_.resize(n * F);
    gradient_.assign(3 * in.n_edges, 0.0);
    ModelOutput out;
    if (n == 0) {    // no local atoms: no energy, no gradient
      atom_energies_ = torch::zeros({0}, torch::kFloat64);
      out.atom_energies = atom_energies_.data_ptr<double>();
      out.edge_gradient = gradient_.data();
      if (info_.members > 0) {
        member_energies_ = torch::zeros({info_.members}, torch::kFloat64);
        member_atom_energies_ = torch::zeros({info_.members, 0}, torch::kFloat64);
        member_gradients_.assign(3 * info_.members * in.n_edges, 0.0);
        out.member_energies = member_energies_.data_ptr<double>();
        out.member_atom_energies = member_atom_energies_.data_ptr<double>();
        out.member_edge_gradients = member_gradients_.data();
      }
      return out;
    }

    // 1. descriptors of the local atoms
    try {
      sf_->compute(edges, centres_.data(), n, descriptors_.data(), nullptr);
    } catch (const std::invalid_argument &error) {
      throw ModelError(failure(in, error));
    }

    // 2. atom energies and dE/dG (autograd: gradient mode on, inference mode off)
    torch::Tensor dE_dG;
    try {
      c10::InferenceMode inference_off(false);
      torch::AutoGradMode grad_on(true);
      const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
      const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
      torch::Tensor G = torch::from_blob(descriptors_.data(), {n, F}, f64)
                            .to(device_, dtype_)
                            .detach()
                            .requires_grad_(true);
      torch::Tensor species = torch::from_blob(const_cast<int64_t *>(in.species), {n}, i64)
                                  .to(device_);
      if (info_.members > 0) {
        committee_energies(G, species, n);
      } else {
        torch::Tensor energies = module_.forward({G, species}).toTensor();
        if (energies.numel() != n)
          throw ModelError(path_str(info_.path) + ": forward() returned " +
                           std::to_string(energies.numel()) + " atom energies for " +
                           std::to_string(n) + " atoms; re-export the model with `mlpot export`");
        torch::Tensor energy = energies.sum();
        dE_dG = torch::autograd::grad({energy}, {G}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                      /*create_graph=*/false, /*allow_unused=*/true)[0];
        dE_dG = dE_dG.defined() ? dE_dG.detach().to(torch::kCPU, torch::kFloat64).contiguous()
                                : torch::zeros({n, F}, f64);
        energy_ = energy.detach().to(torch::kCPU, torch::kFloat64);
        atom_energies_ = energies.detach().to(torch::kCPU, torch::kFloat64).contiguous();
      }
    } catch (const ModelError &) {
      throw;
    } catch (const std::exception &error) {
      throw ModelError(failure(in, error));
    }

    // 3. chain rule onto the edges (derivatives recomputed centre by centre, never stored);
    //    a committee: once per member, the mean edge gradient is the members' mean
    try {
      if (info_.members > 0) {
        const int64_t M = info_.members, size = 3 * in.n_edges;
        member_gradients_.assign(M * size, 0.0);
        for (int64_t k = 0; k < M; k++) {
          double *g = member_gradients_.data() + k * size;
          sf_->gradient(edges, centres_.data(), n, member_dE_dG_[k].data_ptr<double>(), g);
          for (int64_t a = 0; a < size; a++) gradient_[a] += g[a] / M;
        }
        out.member_energies = member_energies_.data_ptr<double>();
        out.member_atom_energies = member_atom_energies_.data_ptr<double>();
        out.member_edge_gradients = member_gradients_.data();
      } else {
        sf_->gradient(edges, centres_.data(), n, dE_dG.data_ptr<double>(), gradient_.data());
      }
    } catch (const std::invalid_argument &error) {
      throw ModelError(failure(in, error));
    }

    out.energy = energy_.item<double>();
    out.atom_energies = atom_energies_.data_ptr<double>();
    out.edge_gradient = gradient_.data();
    return out;
  }

 protected:
  std::string extra_description() const override
  {
    return ": " + std::to_string(sf_->num_features()) + " symmetry functions, " +
        cutoff_function_name(sf_->parameters().cutoff_function) + " cutoff, C++ kernel";
  }

 private:
  // A committee's member energies and dE_k/dG: the exported member_atom_energies(G, species)
  // [M, n], one autograd call per member on the shared G.
  void committee_energies(const torch::Tensor &G, const torch::Tensor &species, int64_t n)
  {
    const int64_t M = info_.members;
    torch::Tensor members = module_.get_method("member_atom_energies")({G, species}).toTensor();
    if (members.dim() != 2 || members.size(0) != M || members.size(1) != n)
      throw ModelError(path_str(info_.path) + ": member_atom_energies() returned shape " +
                       c10::str(members.sizes()) + ", expected [" + std::to_string(M) + ", " +
                       std::to_string(n) + "]; re-export the model with `mlpot export`");
    const torch::Tensor energies = members.sum(1);
    member_dE_dG_.clear();
    for (int64_t k = 0; k < M; k++) {
      torch::Tensor dE_dG = torch::autograd::grad({energies[k]}, {G}, {}, /*retain_graph=*/k + 1 < M,
                                                  false, /*allow_unused=*/true)[0];
      member_dE_dG_.push_back(dE_dG.defined()
                                  ? dE_dG.detach().to(torch::kCPU, torch::kFloat64).contiguous()
                                  : torch::zeros({n, G.size(1)}, torch::kFloat64));
    }
    member_atom_energies_ = members.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    member_energies_ = energies.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    atom_energies_ = member_atom_energies_.mean(0).contiguous();
    energy_ = atom_energies_.sum();
  }

  std::unique_ptr<SymmetryFunctions> sf_;
  std::vector<torch::Tensor> member_dE_dG_;    // committees: [M] of [n_local][F]
  std::vector<double> member_gradients_;       // committees: [M][n_edges][3]
  torch::Tensor member_energies_;              // committees: [M]
  torch::Tensor member_atom_energies_;         // committees: [M][n_local]
  std::vector<int64_t> centres_;       // 0 .. n_local-1
  std::vector<double> descriptors_;    // [n_local][F]
  std::vector<double> gradient_;       // [n_edges][3]
  torch::Tensor energy_, atom_energies_;    // keep the outputs alive
};

/* ---------------------------------------------------------------------------------------------
   Several files as one committee: each runs as usual on the same graph.
------------------------------------------------------------------------------------------------ */

class FileCommittee final : public DeployedModel {
 public:
  FileCommittee(ModelInfo info, std::vector<std::unique_ptr<DeployedModel>> models)
      : DeployedModel(std::move(info)), models_(std::move(models))
  {
  }

  ModelOutput compute(const ModelInput &in) override
  {
    const int64_t M = static_cast<int64_t>(models_.size()), size = 3 * in.n_edges;
    member_energies_.assign(M, 0.0);
    member_atom_energies_.assign(M * in.n_local, 0.0);
    member_gradients_.assign(M * size, 0.0);
    atom_energies_.assign(in.n_local, 0.0);
    gradient_.assign(size, 0.0);
    ModelOutput out;
    for (int64_t k = 0; k < M; k++) {
      const ModelOutput member = models_[k]->compute(in);
      member_energies_[k] = member.energy;
      out.energy += member.energy / M;
      std::copy(member.atom_energies, member.atom_energies + in.n_local,
                member_atom_energies_.begin() + k * in.n_local);
      for (int64_t a = 0; a < in.n_local; a++) atom_energies_[a] += member.atom_energies[a] / M;
      std::copy(member.edge_gradient, member.edge_gradient + size,
                member_gradients_.begin() + k * size);
      for (int64_t a = 0; a < size; a++) gradient_[a] += member.edge_gradient[a] / M;
    }
    out.atom_energies = atom_energies_.data();
    out.edge_gradient = gradient_.data();
    out.member_energies = member_energies_.data();
    out.member_atom_energies = member_atom_energies_.data();
    out.member_edge_gradients = member_gradients_.data();
    return out;
  }

  int set_num_threads(int num_threads) override
  {
    int used = 0;
    for (auto &model : models_) used = model->set_num_threads(num_threads);
    return used;
  }

  std::string description() const override
  {
    return "committee of " + std::to_string(models_.size()) + " files, each " +
        models_.front()->description();
  }

 private:
  std::vector<std::unique_ptr<DeployedModel>> models_;
  std::vector<double> member_energies_, member_atom_energies_, member_gradients_, atom_energies_,
      gradient_;
};

}    // namespace

std::unique_ptr<DeployedModel> load_committee(const std::vector<std::string> &paths,
                                              const LoadOptions &options)
{
  if (paths.size() == 1) return load_model(paths.front(), options);
  if (paths.empty()) throw ModelError("no model file given");
  std::vector<std::unique_ptr<DeployedModel>> models;
  for (const auto &path : paths) {
    models.push_back(load_model(path, options));
    const ModelInfo &first = models.front()->info(), &info = models.back()->info();
    if (info.members > 0)
      throw ModelError(path_str(path) + " is itself a committee file; give either one committee "
                       "file or several single-model files");
    if (info.species != first.species || info.cutoff != first.cutoff)
      throw ModelError("committee members must share species and cutoff: " + path_str(path) +
                       " differs from " + path_str(first.path) + " (species, cutoff " +
                       std::to_string(info.cutoff) + " vs " + std::to_string(first.cutoff) +
                       " A)");
  }
  ModelInfo info = models.front()->info();
  info.members = static_cast<int>(models.size());
  info.kind = "committee of " + info.kind;
  info.calibration_scale = 0.0;
  for (const auto &model : models) {
    info.num_interactions = std::max(info.num_interactions, model->info().num_interactions);
    info.interaction_range = std::max(info.interaction_range, model->info().interaction_range);
    if (&model != &models.front()) info.path += " " + model->info().path;
  }
  return std::unique_ptr<DeployedModel>(new FileCommittee(std::move(info), std::move(models)));
}

double committee_calibration(const std::string &value, const std::vector<std::string> &paths)
{
  const char *text = value.c_str();
  char *end = nullptr;
  const double number = std::strtod(text, &end);
  if (end != text && *end == '\0') {
    if (!(number > 0.0) || !std::isfinite(number))
      throw ModelError("calibration must be a positive scale or a calibrated committee file, got " +
                       value);
    return number;
  }
  const ModelInfo info = read_model_info(value);
  if (info.members == 0 || !(info.calibration_scale > 0.0))
    throw ModelError(path_str(value) + " has no calibration scale; make one with `mlpot calibrate " +
                     "FILE ... --data ... --output " + value + "`");
  // the scale is only valid for the members it was fitted on: compare the file names it records
  auto base = [](const std::string &path) { return path.substr(path.find_last_of('/') + 1); };
  std::vector<std::string> given, recorded;
  for (const auto &path : paths) given.push_back(base(path));
  const json metadata = json::parse(info.record).value("metadata", json::object());
  if (metadata.contains("committee_of_files") && metadata["committee_of_files"].is_array())
    for (const auto &name : metadata["committee_of_files"])
      if (name.is_string()) recorded.push_back(base(name.get<std::string>()));
  if (recorded.empty())
    throw ModelError(path_str(value) + " records no member files (metadata committee_of_files): "
                     "its scale belongs to its own members; run that file itself, or give the "
                     "scale as a number");
  std::sort(given.begin(), given.end());
  std::sort(recorded.begin(), recorded.end());
  if (given != recorded) {
    std::string names;
    for (const auto &name : recorded) names += (names.empty() ? "" : " ") + name;
    throw ModelError(path_str(value) + " was calibrated for the files [" + names + "], not for " +
                     "the files given; calibrate these files together with `mlpot calibrate`, " +
                     "or give the scale as a number");
  }
  return info.calibration_scale;
}

ModelInfo read_model_info(const std::string &path)
{
  return parse_record(read_record(path), path);
}

std::unique_ptr<DeployedModel> load_model(const std::string &path, const LoadOptions &options)
{
  ModelInfo info = read_model_info(path);
  if (info.interface == "edge_gradient")
    return std::unique_ptr<DeployedModel>(new TorchScriptEdgeModel(std::move(info), options));
  if (info.interface == "descriptor")
    return std::unique_ptr<DeployedModel>(new DescriptorModel(std::move(info), options));
  throw ModelError(path_str(path) + " uses the unknown interface '" + info.interface +
                   "'; upgrade mlpot");
}

}    // namespace mlpot
