/* mlpot: reading model files and running the TorchScript "edge_gradient" interface.
 *
 * The only translation unit of the plugin that includes torch headers. See deployed_model.h for
 * the interface and docs/model_format.md for the file format.
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
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#pragma GCC diagnostic pop

#include "nlohmann/json.hpp"    // header-only; ships with the LAMMPS headers (namespace nlohmann_lmp)

#include <cstring>
#include <fstream>
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
  // Which front-end contract the file follows; older records have no field: a kind list decides.
  info.interface = record.value("interface", std::string());
  if (info.interface.empty())
    info.interface = (info.kind == "behler_parrinello" || info.kind == "bpnn") ? "descriptor"
                                                                              : "edge_gradient";
  info.mlpot_version = record.value("mlpot_version", std::string("?"));
  info.torch_version = record.value("torch_version", std::string("?"));
  return info;
}

/* ---------------------------------------------------------------------------------------------
   The "edge_gradient" interface: forward(positions, species, edge_index, edge_vectors, n_local)
   -> {"energy", "atom_energies", "edge_gradient"}, with the gradient taken inside forward.
------------------------------------------------------------------------------------------------ */

class TorchScriptEdgeModel final : public DeployedModel {
 public:
  TorchScriptEdgeModel(ModelInfo info, const LoadOptions &options)
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
    text << "TorchScript (" << info_.interface << ") on " << device_.str() << ", " << info_.dtype;
    if (device_.is_cpu()) text << ", " << at::get_num_threads() << " thread(s)";
    return text.str();
  }

  ModelOutput compute(const ModelInput &in) override
  {
    if (in.n_local < 0 || in.n_local > in.n_atoms || in.n_edges < 0)
      throw ModelError("mlpot: inconsistent graph sizes (n_atoms " + std::to_string(in.n_atoms) +
                       ", n_local " + std::to_string(in.n_local) + ", n_edges " +
                       std::to_string(in.n_edges) + ")");
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
      throw ModelError("mlpot: the model failed on a graph of " + std::to_string(in.n_atoms) +
                       " atoms (" + std::to_string(in.n_local) + " local) and " +
                       std::to_string(in.n_edges) + " edges: " + first_line(error.what()));
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
    return out;
  }

 private:
  torch::Device device_;
  torch::Dtype dtype_ = torch::kFloat64;
  torch::jit::Module module_;
  torch::Tensor energy_, atom_energies_, edge_gradient_;    // keep the outputs alive
};

}    // namespace

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
    throw ModelError(path_str(path) + " is a '" + info.kind + "' model (descriptor interface), "
                     "which this build of pair_style mlpot cannot run yet; upgrade mlpot");
  throw ModelError(path_str(path) + " uses the unknown interface '" + info.interface +
                   "'; upgrade mlpot");
}

}    // namespace mlpot
