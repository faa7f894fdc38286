/* ----------------------------------------------------------------------------------------------
   pair_style mlpot: see pair_mlpot.h and docs/lammps_plugin.md.

   Per step: (1) local + ghost atoms of mapped types become graph nodes and every pair of the
   full+ghost neighbour list closer than the model cutoff a directed edge (minus what no local
   energy can depend on, see build_graph()); (2) the model returns
   E and g_e = dE/dr_e (r_e = x_j - x_i); (3) F_i += g_e, F_j -= g_e, W -= r_e (x) g_e, the per-atom
   virial split half to i and half to j. Ghost forces and per-atom tallies are summed onto their
   owners by LAMMPS' reverse communication (newton_pair on).
------------------------------------------------------------------------------------------------ */

#include "pair_mlpot.h"

#include "deployed_model.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <numeric>

using namespace LAMMPS_NS;

namespace {
constexpr const char *SYNTAX = "syntax: pair_style mlpot [device cpu|cuda|cuda:N] [threads N] "
    "[prune yes|no] [fold_ghosts yes|no] [deviation_file FILE] [deviation_every N] [calibrated yes|no] "
    "[calibration S|FILE] [deviation_warn X] [deviation_harvest FILE] [deviation_stop Y]";

// Atoms closer than this (Å) are refused, as by the ASE calculator (mlpot.calculator.MIN_DISTANCE):
// no model was trained there, and its energy would be a meaningless extrapolation.
constexpr double MIN_DISTANCE = 0.25;

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b)
{
  return std::chrono::duration<double>(b - a).count();
}
}    // namespace

/* ---------------------------------------------------------------------------------------------- */

PairMLPot::PairMLPot(LAMMPS *lmp) :
    Pair(lmp), threads_requested(0), prune(true), fold_ghosts(true), fold(false),
    message_hops(1), cutoff(0.0),
    interaction_range(0.0), energy_factor(1.0), n_edges(0), members(0), deviation_scale(1.0),
    use_calibration(true), deviation_every(1), deviation_warn(0.0), deviation_stop(0.0),
    outputs_open(false), deviation_fp(nullptr), harvest_fp(nullptr), last_written_step(-1),
    warn_frames(0), first_warn_step(-1), last_warn_step(-1), harvested_frames(0),
    nmax_deviation(0), member_f(nullptr), forces_std(nullptr), energies_std(nullptr),
    deviation{0.0, 0.0, 0.0, 0.0}, mean_energy(0.0), deviation_atoms(0.0), time_model(0.0),
    time_other(0.0), ncalls(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;                  // neighbours of ghosts: message passing updates them too
  centroidstressflag = CENTROID_AVAIL;
  no_virial_fdotr_compute = 1;     // the virial is summed over edges, exactly as in ASE
  device = "cpu";
  nextra = 4;    // compute pair mlpot: max, min, avg force deviation, energy std (committees)
  pvector = new double[nextra]();
}

PairMLPot::~PairMLPot()
{
  if (copymode) return;
  if (deviation_fp) fclose(deviation_fp);
  if (harvest_fp) fclose(harvest_fp);
  delete[] pvector;
  memory->destroy(member_f);
  memory->destroy(forces_std);
  memory->destroy(energies_std);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairMLPot::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* ----------------------------------------------------------------------------------------------
   pair_style mlpot [device cpu|cuda|cuda:N] [threads N] [prune yes|no] [fold_ghosts yes|no]
                    [committee keywords]
------------------------------------------------------------------------------------------------ */

void PairMLPot::settings(int narg, char **arg)
{
  device = "cpu";
  threads_requested = 0;
  prune = true;
  fold_ghosts = true;
  use_calibration = true;
  calibration_value.clear();
  deviation_every = 1;
  deviation_warn = deviation_stop = 0.0;
  deviation_path.clear();
  harvest_path.clear();
  if (deviation_fp) fclose(deviation_fp);
  if (harvest_fp) fclose(harvest_fp);
  deviation_fp = harvest_fp = nullptr;
  outputs_open = false;
  for (int iarg = 0; iarg < narg; iarg += 2) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "pair_style mlpot: keyword {} needs a value; {}", key, SYNTAX);
    const char *value = arg[iarg + 1];
    if (key == "device") {
      device = arg[iarg + 1];
      const bool cuda = device == "cuda" ||
          (device.rfind("cuda:", 0) == 0 && utils::is_integer(device.substr(5)));
      if (device != "cpu" && !cuda)
        error->all(FLERR, "pair_style mlpot: unknown device {}; use cpu, cuda or cuda:N", device);
    } else if (key == "prune") {
      prune = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else if (key == "fold_ghosts") {
      fold_ghosts = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "threads") {
      threads_requested = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (threads_requested < 1)
        error->all(FLERR, "pair_style mlpot: threads must be at least 1, got {}",
                   threads_requested);
    } else if (key == "deviation_file") {
      deviation_path = value;
    } else if (key == "deviation_every") {
      deviation_every = utils::inumeric(FLERR, value, false, lmp);
      if (deviation_every < 1)
        error->all(FLERR, "pair_style mlpot: deviation_every must be at least 1, got {}",
                   deviation_every);
    } else if (key == "calibrated") {
      use_calibration = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "calibration") {
      calibration_value = value;
    } else if (key == "deviation_harvest") {
      harvest_path = value;
    } else if (key == "deviation_warn" || key == "deviation_stop") {
      const double threshold = utils::numeric(FLERR, value, false, lmp);
      if (!(threshold > 0.0))
        error->all(FLERR, "pair_style mlpot: {} must be a positive force deviation, got {}", key,
                   value);
      (key == "deviation_warn" ? deviation_warn : deviation_stop) = threshold;
    } else {
      error->all(FLERR, "pair_style mlpot: unknown keyword {}; {}", key, SYNTAX);
    }
  }
  if (!harvest_path.empty() && deviation_warn <= 0.0)
    error->all(FLERR, "pair_style mlpot: deviation_harvest needs deviation_warn X, the max force "
               "deviation above which frames are harvested");
}

/* ----------------------------------------------------------------------------------------------
   pair_coeff * * model.pt Sym1 ... SymN   (N = number of atom types; NULL = not this style's)
------------------------------------------------------------------------------------------------ */

void PairMLPot::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3)
    error->all(FLERR, "pair_coeff for mlpot: expected `pair_coeff * * model.pt Sym1 ... Sym{}`",
               ntypes);
  // the last ntypes words are species, the words before them model files (several: a committee)
  std::vector<std::string> files;
  bool all_files = narg >= 3 + ntypes;
  for (int k = 2; k < narg - ntypes && all_files; k++) {
    files.emplace_back(arg[k]);
    all_files = k == 2 || std::ifstream(arg[k]).good();
    if (!all_files && utils::strmatch(arg[k], "\\.pth?$"))
      error->all(FLERR, "pair_coeff for mlpot: cannot read the model file {} (committee member "
                 "{}); check the path", arg[k], k - 1);
  }
  if (!all_files || narg < 3 + ntypes)
    error->all(FLERR, "pair_coeff for mlpot: type count mismatch: {} atom types need {} species "
               "symbols (or NULL) after the model file(s), got {}", ntypes, ntypes, narg - 3);
  check_units();
  if (!model || model_path != utils::join_words(files, " ") || model_device != device)
    load(files);

  const std::vector<std::string> &known = model->info().species;
  type_species.assign(ntypes + 1, -1);
  for (int itype = 1; itype <= ntypes; itype++) {
    const std::string symbol = arg[narg - ntypes - 1 + itype];
    if (symbol == "NULL") continue;
    int index = -1;
    for (std::size_t k = 0; k < known.size(); k++)
      if (known[k] == symbol) index = static_cast<int>(k);
    if (index < 0)
      error->all(FLERR, "pair_coeff for mlpot: unknown species {} for atom type {}; the model "
                 "{} knows: {}", symbol, itype, model_path, utils::join_words(known, " "));
    type_species[itype] = index;
  }

  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = setflag[j][i] = (type_species[i] >= 0 && type_species[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff for mlpot: every atom type is NULL");
}

void PairMLPot::check_units()
{
  const std::string units = update->unit_style;
  if (units == "metal") {
    energy_factor = 1.0;
  } else if (units == "real") {
    energy_factor = utils::get_conversion_factor(utils::ENERGY, utils::METAL2REAL);
  } else {
    error->all(FLERR, "pair_style mlpot does not support units {}: models are in eV and "
               "Angstrom; use `units metal` (or `units real`, converted)", units);
  }
}

int PairMLPot::resolve_threads() const
{
  if (threads_requested > 0) return threads_requested;
  const char *env = std::getenv("OMP_NUM_THREADS");
  if (env && *env) {
    char *end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && n > 0) return static_cast<int>(n);
  }
  return comm->nprocs > 1 ? 1 : 0;    // 0: leave torch's default (all cores) on a single rank
}

// Every rank loads its own copy; a failure is reported once if it happened everywhere.
void PairMLPot::load(const std::vector<std::string> &files)
{
  mlpot::LoadOptions options;
  options.device = device;
  options.num_threads = resolve_threads();
  std::string message;
  model.reset();
  try {
    model = mlpot::load_committee(files, options);
  } catch (const std::exception &e) {
    message = e.what();
  }
  int failed = message.empty() ? 0 : 1, nfailed = 0;
  MPI_Allreduce(&failed, &nfailed, 1, MPI_INT, MPI_SUM, world);
  if (nfailed == comm->nprocs) error->all(FLERR, "pair_style mlpot: " + message);
  if (failed) error->one(FLERR, "pair_style mlpot: " + message);
  if (nfailed) error->all(FLERR, "pair_style mlpot: loading the model failed on another rank");

  model_files = files;
  model_path = utils::join_words(files, " ");
  model_device = device;
  const mlpot::ModelInfo &info = model->info();
  cutoff = info.cutoff;
  interaction_range = info.interaction_range;
  // message-passing hops: what the ghost shell was sized for (interaction range / cutoff)
  message_hops = std::max(info.num_interactions,
                          static_cast<int>(std::ceil(info.interaction_range / info.cutoff - 1e-6)));
  message_hops = std::max(message_hops, 1);
  members = info.members;
  comm_reverse = 3 * members;    // member forces of ghosts, summed onto their owners
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style mlpot: {} ({} model, species {}, cutoff {} A, {} "
                   "interaction(s), range {} A; exported with mlpot {}, torch {}): {}\n", model_path,
                   info.kind, utils::join_words(info.species, " "), info.cutoff,
                   info.num_interactions, info.interaction_range, info.mlpot_version,
                   info.torch_version, model->description());
}

/* ---------------------------------------------------------------------------------------------- */

void PairMLPot::init_style()
{
  if (!model) error->all(FLERR, "pair_style mlpot: no model; use pair_coeff * * model.pt Sym ...");
  check_units();
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style mlpot requires newton_pair on; add `newton on` to the input "
               "(ghost atoms carry forces that LAMMPS must sum onto their owners)");
  if (comm->mode != Comm::SINGLE)
    error->all(FLERR, "pair_style mlpot requires comm_modify mode single");
  if (model_device != device) load(model_files);    // pair_style re-issued with another device
  const int threads = model->set_num_threads(resolve_threads());

  // One rank owns every atom: each ghost is a periodic image of a local atom, so the graph can
  // be the local atoms with edges to images (as in ASE) instead of a ghost shell as deep as the
  // interaction range, whose atoms the model would evaluate as well (see build_graph).
  fold = fold_ghosts && comm->nprocs == 1 && atom->tag_enable;
  ghostneigh = fold ? 0 : 1;
  neighbor->add_request(this, fold ? NeighConst::REQ_FULL
                                   : NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // Message passing: a local atom's energy depends on atoms up to interaction_range away, so
  // ghosts must reach that far (+ skin: atoms move up to skin/2 each between rebuilds). The
  // neighbour lists themselves stay at cutoff + skin: only the ghost shell grows.
  const double needed = interaction_range + neighbor->skin;
  if (fold) {
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style mlpot: one rank, ghost atoms folded onto their owners "
                     "(the model sees the local atoms only), {} torch thread(s)\n", threads);
  } else if (comm->cutghostuser < needed) {
    comm->cutghostuser = needed;
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style mlpot: communication cutoff set to {:.6g} A (interaction "
                     "range {:.6g} A + skin {:.6g} A), {} torch thread(s) per rank\n", needed,
                     interaction_range, neighbor->skin, threads);
  }
  time_model = time_other = 0.0;
  ncalls = 0;

  // committee deviation: scale, output files (rank 0), per-run warning counters
  const bool wanted = !deviation_path.empty() || deviation_warn > 0.0 || deviation_stop > 0.0 ||
      !calibration_value.empty();
  if (wanted && members == 0)
    error->all(FLERR, "pair_style mlpot: deviation_file/deviation_warn/deviation_harvest/"
               "deviation_stop/calibration need a committee model file, but {} is a single "
               "model (see docs/committee.md)", model_path);
  const double scale = calibration_scale();
  deviation_scale = scale > 0.0 ? scale : 1.0;
  const std::string how = scale > 0.0 ? fmt::format("calibrated (x {})", deviation_scale)
                                      : std::string("raw (no calibration scale)");
  if (members > 0 && comm->me == 0)
    utils::logmesg(lmp, "pair_style mlpot: committee of {} members, force deviations {}\n",
                   members, how);
  if (!outputs_open) {
    if (!deviation_path.empty()) deviation_fp = open_output(deviation_path, "deviation_file");
    if (!harvest_path.empty()) harvest_fp = open_output(harvest_path, "deviation_harvest");
    outputs_open = true;
    if (deviation_fp) {
      fmt::print(deviation_fp, "# mlpot committee of {} members ({}): force deviations {} in "
                 "force units, devi_e = std of the total energy / atoms (energy units per atom)\n"
                 "#{:>11} {:>24} {:>24} {:>24} {:>24}\n", members, model_path, how, "step",
                 "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e");
      fflush(deviation_fp);
    }
  }
  warn_frames = harvested_frames = 0;
  first_warn_step = last_warn_step = -1;
}

// The conformal scale of the force deviations, 0 for raw ones: a committee file's own, or
// `calibration S|FILE` for several files (which have none); `calibrated no` gives raw ones.
double PairMLPot::calibration_scale()
{
  const bool several = model_files.size() > 1;
  if (!calibration_value.empty() && !several)
    error->all(FLERR, "pair_style mlpot: calibration is for several model files run as one "
               "committee; {} carries its own calibration (calibrated yes|no)", model_path);
  if (!use_calibration) return 0.0;
  if (!several) return model->info().calibration_scale;
  if (calibration_value.empty()) return 0.0;
  try {
    return mlpot::committee_calibration(calibration_value, model_files);
  } catch (const std::exception &e) {
    error->all(FLERR, std::string("pair_style mlpot: calibration: ") + e.what());
  }
  return 0.0;
}

// Rank 0 opens (truncates) an output file; one that cannot be written stops every rank.
FILE *PairMLPot::open_output(const std::string &path, const char *keyword)
{
  FILE *fp = comm->me == 0 ? fopen(path.c_str(), "w") : nullptr;
  const std::string why = comm->me == 0 && !fp ? utils::getsyserror() : "";
  int opened = fp ? 1 : 0;
  MPI_Bcast(&opened, 1, MPI_INT, 0, world);
  if (!opened)
    error->all(FLERR, "pair_style mlpot: cannot open {} {}: {}", keyword, path, why);
  return fp;
}

double PairMLPot::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  cutghost[i][j] = cutghost[j][i] = cutoff;
  return cutoff;
}

/* ---------------------------------------------------------------------------------------------- */

void PairMLPot::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const auto t0 = Clock::now();

  int64_t n_local_nodes = 0;
  const int64_t n_nodes = build_graph(n_local_nodes);
  if (members > 0) {    // member forces are summed like f, over local and ghost atoms
    if (atom->nmax > nmax_deviation) {
      nmax_deviation = atom->nmax;
      memory->destroy(member_f);
      memory->destroy(forces_std);
      memory->destroy(energies_std);
      memory->create(member_f, nmax_deviation, 3 * members, "pair:member_f");
      memory->create(forces_std, nmax_deviation, "pair:forces_std");
      memory->create(energies_std, nmax_deviation, "pair:energies_std");
    }
    const int nall = atom->nlocal + atom->nghost;
    if (nall > 0) std::fill(&member_f[0][0], &member_f[0][0] + 3 * members * nall, 0.0);
  }
  if (n_local_nodes == 0) {    // nothing local to this rank's energy: no forces either
    if (members > 0) committee_deviation(nullptr, nullptr, 0);    // collective: all ranks
    if (!update->setupflag) {
      time_other += seconds(t0, Clock::now());
      ncalls++;
    }
    return;
  }

  mlpot::ModelInput in;
  in.n_atoms = n_nodes;
  in.n_local = n_local_nodes;
  in.species = species.data();
  in.positions = positions.data();
  in.n_edges = n_edges;
  in.edge_index = edge_index.data();
  in.edge_vectors = edge_vectors.data();

  const auto t1 = Clock::now();
  mlpot::ModelOutput out;
  try {
    out = model->compute(in);
  } catch (const std::exception &e) {
    error->one(FLERR, std::string("pair_style mlpot: ") + e.what());
  }
  const auto t2 = Clock::now();

  if (members > 0 &&
      !(out.member_energies && out.member_atom_energies && out.member_edge_gradients))
    error->one(FLERR, "pair_style mlpot: the committee model returned no member outputs");
  check_finite(out);
  accumulate(out.edge_gradient, out.atom_energies, out.energy, n_local_nodes,
             out.member_edge_gradients);
  if (members > 0)
    committee_deviation(out.member_energies, out.member_atom_energies, n_local_nodes);
  const auto t3 = Clock::now();
  if (!update->setupflag) {    // time the MD/minimisation loop only, like LAMMPS' own timers
    time_model += seconds(t1, t2);
    time_other += seconds(t0, t1) + seconds(t2, t3);
    ncalls++;
  }
}

// The graph of this step.
// Candidate edges: every pair of the full+ghost neighbour list closer than the cutoff, grouped by
// centre. With pruning (default), a breadth-first search from the local atoms over these edges
// gives each atom its hop count h; the model gets the atoms with h <= H (H = message-passing
// layers) and the edges whose centre has h <= H - 1. A local atom's energy after H layers only
// reads features that travelled at most H hops, so this is exact (and the sums that matter keep
// their order); it spares the model the outer ghost shell's edges, most of its work on small
// domains. Nodes: local atoms first, then ghosts, both in LAMMPS order; NULL types are left out.
int64_t PairMLPot::build_graph(int64_t &n_local_nodes)
{
  if (fold) return build_folded_graph(n_local_nodes);
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  const int *type = atom->type;

  // 1. candidate edges, as (centre atom, neighbour atom), in neighbour-list order
  const int ntotal = list->inum + list->gnum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  int64_t bound = 0;
  for (int ii = 0; ii < ntotal; ii++) bound += numneigh[ilist[ii]];
  if (static_cast<int64_t>(candidate.size()) < bound) candidate.resize(bound);
  if (static_cast<int64_t>(edge_vectors.size()) < 3 * bound) edge_vectors.resize(3 * bound);
  edge_begin.assign(nall + 1, 0);
  edge_end.assign(nall + 1, 0);
  const double cutsq_model = cutoff * cutoff;
  double *vec = edge_vectors.data();
  int64_t e = 0;
  Closest closest;
  for (int ii = 0; ii < ntotal; ii++) {
    const int i = ilist[ii];
    edge_begin[i] = e;
    if (type_species[type[i]] >= 0) {
      const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
      const int *jlist = firstneigh[i];
      const int jnum = numneigh[i];
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        if (type_species[type[j]] < 0) continue;
        const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
        const double rsq = dx * dx + dy * dy + dz * dz;
        if (rsq >= cutsq_model) continue;
        closest.update(rsq, i, j);
        candidate[e] = j;
        vec[3 * e] = dx;
        vec[3 * e + 1] = dy;
        vec[3 * e + 2] = dz;
        e++;
      }
    }
    edge_end[i] = e;
  }
  check_overlap(closest);

  // 2. hop counts from the local atoms (breadth first, H layers)
  constexpr int FAR = 1 << 30;
  const int hops = prune ? message_hops : FAR;
  hop.assign(nall, prune ? FAR : 0);
  if (prune) {
    frontier.clear();
    for (int i = 0; i < nlocal; i++)
      if (type_species[type[i]] >= 0) {
        hop[i] = 0;
        frontier.push_back(i);
      }
    std::size_t layer_begin = 0;
    for (int h = 1; h <= hops; h++) {
      const std::size_t layer_end = frontier.size();
      for (std::size_t k = layer_begin; k < layer_end; k++) {
        const int i = frontier[k];
        for (int64_t c = edge_begin[i]; c < edge_end[i]; c++) {
          const int j = candidate[c];
          if (hop[j] == FAR) {
            hop[j] = h;
            frontier.push_back(j);
          }
        }
      }
      layer_begin = layer_end;
    }
  }

  // 3. nodes: mapped atoms within reach, locals first
  node_of_atom.resize(nall);
  atom_of_node.resize(nall);
  species.resize(nall);
  int64_t n_nodes = 0;
  n_local_nodes = 0;
  for (int i = 0; i < nall; i++) {
    if (i == nlocal) n_local_nodes = n_nodes;
    const int s = type_species[type[i]];
    if (s >= 0 && hop[i] <= hops) {
      node_of_atom[i] = static_cast<int>(n_nodes);
      atom_of_node[n_nodes] = i;
      species[n_nodes++] = s;
    } else {
      node_of_atom[i] = -1;
    }
  }
  if (nlocal == nall) n_local_nodes = n_nodes;
  species.resize(n_nodes);
  positions.resize(3 * n_nodes);
  for (int64_t k = 0; k < n_nodes; k++)
    for (int d = 0; d < 3; d++) positions[3 * k + d] = x[atom_of_node[k]][d];

  // 4. edges into centres with h <= H - 1, in candidate order, as node indices [2][n_edges]
  if (static_cast<int64_t>(edge_index.size()) < 2 * bound) edge_index.resize(2 * bound);
  int64_t *centre = edge_index.data();
  int64_t *neighbour = centre + bound;
  int64_t kept = 0;
  for (int ii = 0; ii < ntotal; ii++) {
    const int i = ilist[ii];
    if (node_of_atom[i] < 0 || hop[i] > hops - 1) continue;
    for (int64_t c = edge_begin[i]; c < edge_end[i]; c++) {
      centre[kept] = node_of_atom[i];
      neighbour[kept] = node_of_atom[candidate[c]];
      if (kept != c)
        for (int d = 0; d < 3; d++) vec[3 * kept + d] = vec[3 * c + d];
      kept++;
    }
  }
  if (kept < bound) std::memmove(centre + kept, neighbour, kept * sizeof(int64_t));
  n_edges = kept;
  return n_nodes;
}

// The graph of this step on one rank: the local atoms are the nodes, and an edge to a ghost
// atom points to the ghost's owner (found by its tag) with the ghost's own edge vector, exactly
// like ASE's periodic edge list. Forces on the owner and the edge virials are then the same sums
// as with the ghost shell, without evaluating the model on the shell's atoms.
int64_t PairMLPot::build_folded_graph(int64_t &n_local_nodes)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  const int *type = atom->type;
  const tagint *tag = atom->tag;

  tagint max_tag = 0;
  for (int i = 0; i < nlocal; i++) max_tag = std::max(max_tag, tag[i]);
  local_of_tag.assign(static_cast<std::size_t>(max_tag) + 1, -1);
  for (int i = 0; i < nlocal; i++) local_of_tag[tag[i]] = i;

  node_of_atom.resize(nall);
  atom_of_node.resize(nlocal);
  species.resize(nlocal);
  int64_t n_nodes = 0;
  for (int i = 0; i < nlocal; i++) {
    const int s = type_species[type[i]];
    node_of_atom[i] = s >= 0 ? static_cast<int>(n_nodes) : -1;
    if (s >= 0) {
      atom_of_node[n_nodes] = i;
      species[n_nodes++] = s;
    }
  }
  for (int j = nlocal; j < nall; j++) {
    const int owner = tag[j] <= max_tag ? local_of_tag[tag[j]] : -1;
    if (owner < 0)
      error->one(FLERR, "pair_style mlpot: ghost atom {} has no local owner on one rank; use "
                 "pair_style mlpot ... fold_ghosts no", tag[j]);
    node_of_atom[j] = node_of_atom[owner];
  }
  species.resize(n_nodes);
  positions.resize(3 * n_nodes);
  for (int64_t k = 0; k < n_nodes; k++)
    for (int d = 0; d < 3; d++) positions[3 * k + d] = x[atom_of_node[k]][d];

  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  int64_t bound = 0;
  for (int ii = 0; ii < inum; ii++) bound += numneigh[ilist[ii]];
  if (static_cast<int64_t>(edge_index.size()) < 2 * bound) edge_index.resize(2 * bound);
  if (static_cast<int64_t>(edge_vectors.size()) < 3 * bound) edge_vectors.resize(3 * bound);
  int64_t *centre = edge_index.data();
  int64_t *neighbour = centre + bound;
  double *vec = edge_vectors.data();
  const double cutsq_model = cutoff * cutoff;
  int64_t e = 0;
  Closest closest;
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (node_of_atom[i] < 0) continue;
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (node_of_atom[j] < 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      closest.update(rsq, i, j);
      centre[e] = node_of_atom[i];
      neighbour[e] = node_of_atom[j];
      vec[3 * e] = dx;
      vec[3 * e + 1] = dy;
      vec[3 * e + 2] = dz;
      e++;
    }
  }
  check_overlap(closest);
  if (e < bound) std::memmove(centre + e, neighbour, e * sizeof(int64_t));
  n_edges = e;
  n_local_nodes = n_nodes;
  return n_nodes;
}

void PairMLPot::check_overlap(const Closest &closest)
{
  if (!(closest.rsq < MIN_DISTANCE * MIN_DISTANCE)) return;
  error->one(FLERR, "pair_style mlpot: atoms {} and {} are {:.3g} \xc3\x85 apart (< {} \xc3\x85): "
             "overlapping atoms; fix the structure (or shorten the time step if they ran into "
             "each other)", atom->tag[closest.i], atom->tag[closest.j], std::sqrt(closest.rsq),
             MIN_DISTANCE);
}

// A NaN or infinite energy or gradient would propagate silently through the MD; stop instead.
void PairMLPot::check_finite(const mlpot::ModelOutput &out)
{
  bool finite = std::isfinite(out.energy);
  for (int64_t k = 0; finite && k < 3 * n_edges; k++) finite = std::isfinite(out.edge_gradient[k]);
  if (!finite)
    error->one(FLERR, "pair_style mlpot: the model returned a non-finite (NaN or inf) energy or "
               "force on this rank: the structure is far outside what {} was trained on (atoms "
               "crashing together: check the structure and the time step), or the file's weights "
               "are damaged (re-export it)", model_path);
}

// Energies, forces and virials from the edge gradient (the sums of mlpot/edge_sums.py).
void PairMLPot::accumulate(const double *gradient, const double *atom_energies, double energy,
                           int64_t n_local_nodes, const double *member_gradients)
{
  const double c = energy_factor;
  if (eflag_global) eng_vdwl += c * energy;
  if (eflag_atom)
    for (int64_t k = 0; k < n_local_nodes; k++) eatom[atom_of_node[k]] += c * atom_energies[k];

  double **f = atom->f;
  const int64_t *centre = edge_index.data();
  const int64_t *neighbour = centre + n_edges;
  const double *vec = edge_vectors.data();
  const bool any_virial = vflag_global || vflag_atom || cvflag_atom;
  for (int64_t e = 0; e < n_edges; e++) {
    const int i = atom_of_node[centre[e]];
    const int j = atom_of_node[neighbour[e]];
    const double g[3] = {c * gradient[3 * e], c * gradient[3 * e + 1], c * gradient[3 * e + 2]};
    f[i][0] += g[0];
    f[i][1] += g[1];
    f[i][2] += g[2];
    f[j][0] -= g[0];
    f[j][1] -= g[1];
    f[j][2] -= g[2];
    // committee members: the same sums, member k's forces in columns 3k .. 3k+2
    if (member_gradients)
      for (int k = 0; k < members; k++) {
        const double *gk = member_gradients + 3 * (k * n_edges + e);
        for (int d = 0; d < 3; d++) {
          member_f[i][3 * k + d] += c * gk[d];
          member_f[j][3 * k + d] -= c * gk[d];
        }
      }
    if (!any_virial) continue;

    // w_ab = -r_a g_b: the virial of this edge's force pair (LAMMPS' "r_a f_b" convention)
    const double *r = vec + 3 * e;
    const double w[9] = {-r[0] * g[0], -r[1] * g[1], -r[2] * g[2],     // xx yy zz
                         -r[0] * g[1], -r[0] * g[2], -r[1] * g[2],     // xy xz yz
                         -r[1] * g[0], -r[2] * g[0], -r[2] * g[1]};    // yx zx zy
    const double sym[6] = {w[0], w[1], w[2], 0.5 * (w[3] + w[6]), 0.5 * (w[4] + w[7]),
                           0.5 * (w[5] + w[8])};
    if (vflag_global)
      for (int k = 0; k < 6; k++) virial[k] += sym[k];
    if (vflag_atom)
      for (int k = 0; k < 6; k++) {
        vatom[i][k] += 0.5 * sym[k];
        vatom[j][k] += 0.5 * sym[k];
      }
    if (cvflag_atom)
      for (int k = 0; k < 9; k++) {
        cvatom[i][k] += 0.5 * w[k];
        cvatom[j][k] += 0.5 * w[k];
      }
  }
}

/* ----------------------------------------------------------------------------------------------
   Committee deviation, after the member forces of ghosts are summed onto their owners:
   sigma_i = s sqrt((1/M) sum_k |F_ik - mean_k F_ik|^2) per local atom (s: calibration scale),
   its max/min/mean over all atoms of the model's types, the std of the members' total energies
   and of each local atom's energy (population, as DeePMD's model deviation and mlpot's ASE
   calculator).
------------------------------------------------------------------------------------------------ */

void PairMLPot::committee_deviation(const double *member_energies,
                                    const double *member_atom_energies, int64_t n_local_nodes)
{
  comm->reverse_comm(this);
  const int nlocal = atom->nlocal;
  const int *type = atom->type;
  const int M = members;
  double local_max = 0.0, local_min = DBL_MAX, sum_count[2] = {0.0, 0.0};
  for (int i = 0; i < nlocal; i++) {
    forces_std[i] = energies_std[i] = 0.0;
    if (type_species[type[i]] < 0) continue;
    double mean[3], spread = 0.0;
    member_mean(i, mean);
    for (int k = 0; k < M; k++)
      for (int d = 0; d < 3; d++) {
        const double delta = member_f[i][3 * k + d] - mean[d];
        spread += delta * delta;
      }
    const double sigma = deviation_scale * std::sqrt(spread / M);
    forces_std[i] = sigma;
    local_max = std::max(local_max, sigma);
    local_min = std::min(local_min, sigma);
    sum_count[0] += sigma;
    sum_count[1] += 1.0;
  }
  for (int64_t node = 0; node < n_local_nodes; node++) {    // member_atom_energies: [M][nodes]
    double mean = 0.0, var = 0.0;
    for (int k = 0; k < M; k++) mean += member_atom_energies[k * n_local_nodes + node] / M;
    for (int k = 0; k < M; k++) {
      const double delta = member_atom_energies[k * n_local_nodes + node] - mean;
      var += delta * delta / M;
    }
    energies_std[atom_of_node[node]] = energy_factor * std::sqrt(var);
  }
  double total[2];
  MPI_Allreduce(&local_max, &deviation[0], 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(&local_min, &deviation[1], 1, MPI_DOUBLE, MPI_MIN, world);
  MPI_Allreduce(sum_count, total, 2, MPI_DOUBLE, MPI_SUM, world);
  if (total[1] == 0.0) deviation[1] = 0.0;
  deviation[2] = total[1] > 0.0 ? total[0] / total[1] : 0.0;
  deviation_atoms = total[1];

  std::vector<double> local_e(M, 0.0), energies(M);
  if (member_energies)
    for (int k = 0; k < M; k++) local_e[k] = energy_factor * member_energies[k];
  MPI_Allreduce(local_e.data(), energies.data(), M, MPI_DOUBLE, MPI_SUM, world);
  double mean_e = 0.0, var_e = 0.0;
  for (int k = 0; k < M; k++) mean_e += energies[k] / M;
  for (int k = 0; k < M; k++) var_e += (energies[k] - mean_e) * (energies[k] - mean_e) / M;
  deviation[3] = std::sqrt(var_e);
  mean_energy = mean_e;

  // compute pair sums pvector over the ranks: the global values on rank 0 only
  for (int k = 0; k < 4; k++) pvector[k] = comm->me == 0 ? deviation[k] : 0.0;
  step_outputs();
}

// The committee-mean force on local atom i, from the reverse-communicated member forces.
void PairMLPot::member_mean(int i, double mean[3]) const
{
  mean[0] = mean[1] = mean[2] = 0.0;
  for (int k = 0; k < members; k++)
    for (int d = 0; d < 3; d++) mean[d] += member_f[i][3 * k + d] / members;
}

// Once per time step (its first evaluation): the deviation file line, the warning count, the
// harvested frame and the stop threshold, in this order (a frame that stops the run is kept).
void PairMLPot::step_outputs()
{
  const bigint step = update->ntimestep;
  if (step == last_written_step) return;
  last_written_step = step;
  const bool due = step % deviation_every == 0;
  if (deviation_fp && due) {
    fmt::print(deviation_fp, "{:>12} {:>24.17g} {:>24.17g} {:>24.17g} {:>24.17g}\n", step,
               deviation[0], deviation[1], deviation[2],
               deviation_atoms > 0 ? deviation[3] / deviation_atoms : 0.0);
    fflush(deviation_fp);
  }
  const bool above = deviation_warn > 0.0 && deviation[0] > deviation_warn;
  if (above) {
    if (warn_frames++ == 0) first_warn_step = step;
    last_warn_step = step;
  }
  if (above && due && !harvest_path.empty()) harvest_frame();    // collective
  if (deviation_stop > 0.0 && deviation[0] > deviation_stop)
    error->all(FLERR, "pair_style mlpot: max force deviation {:.6g} above deviation_stop {:.6g} "
               "at step {}: the committee disagrees, the model is extrapolating", deviation[0],
               deviation_stop, step);
}

/* ----------------------------------------------------------------------------------------------
   deviation_harvest: rank 0 appends the frame to an extended-XYZ file (ase.io.read reads it) in
   the model's units, eV and Angstrom, whatever LAMMPS' units: the cell and pbc, and for every atom
   of the model's types (gathered from all ranks, in atom-ID order) its species, position from the
   box origin, committee-mean force, sigma_i and atom-energy std; the step, committee-mean energy,
   energy std, max sigma and calibration scale in the comment line. The same text as
   mlpot.calculator.DeviationHarvester writes in ASE. The mean is deliberately not called
   "energy"/"forces": ase.io would read it as labels.
------------------------------------------------------------------------------------------------ */

void PairMLPot::harvest_frame()
{
  constexpr int W = 10;    // id, species, x y z, mean force (3), sigma_i, energy std
  const double c = energy_factor;
  std::vector<double> mine;
  for (int i = 0; i < atom->nlocal; i++) {
    const int s = type_species[atom->type[i]];
    if (s < 0) continue;
    double f[3];
    member_mean(i, f);
    const double row[W] = {static_cast<double>(atom->tag[i]), static_cast<double>(s),
                           atom->x[i][0] - domain->boxlo[0], atom->x[i][1] - domain->boxlo[1],
                           atom->x[i][2] - domain->boxlo[2], f[0] / c, f[1] / c, f[2] / c,
                           forces_std[i] / c, energies_std[i] / c};
    mine.insert(mine.end(), row, row + W);
  }
  const int count = static_cast<int>(mine.size());
  std::vector<int> counts(comm->nprocs), offsets(comm->nprocs, 0);
  MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
  std::partial_sum(counts.begin(), counts.end() - 1, offsets.begin() + 1);
  std::vector<double> rows(comm->me == 0 ? offsets.back() + counts.back() : 0);
  MPI_Gatherv(mine.data(), count, MPI_DOUBLE, rows.data(), counts.data(), offsets.data(),
              MPI_DOUBLE, 0, world);
  harvested_frames++;
  if (comm->me != 0) return;

  const std::size_t n = rows.size() / W;
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return rows[W * a] < rows[W * b]; });
  const char *periodic[2] = {"F", "T"};
  fmt::print(harvest_fp, "{}\nLattice=\"{:.17g} 0 0 {:.17g} {:.17g} 0 {:.17g} {:.17g} {:.17g}\" "
             "Properties=species:S:1:pos:R:3:committee_forces:R:3:forces_std:R:1:energies_std:R:1"
             " step={} committee_energy={:.17g} energy_std={:.17g} max_force_deviation={:.17g} "
             "uncertainty_scale={:.17g} pbc=\"{} {} {}\"\n", n, domain->xprd, domain->xy,
             domain->yprd, domain->xz, domain->yz, domain->zprd, update->ntimestep,
             mean_energy / c, deviation[3] / c, deviation[0] / c, deviation_scale,
             periodic[domain->xperiodic], periodic[domain->yperiodic],
             periodic[domain->zperiodic]);
  const std::vector<std::string> &symbols = model->info().species;
  for (const std::size_t a : order) {
    const double *row = &rows[W * a];
    fmt::print(harvest_fp, "{:<2}", symbols[static_cast<int>(row[1])]);
    for (int k = 2; k < W; k++) fmt::print(harvest_fp, " {:24.17g}", row[k]);
    fmt::print(harvest_fp, "\n");
  }
  fflush(harvest_fp);
}

int PairMLPot::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; i++)
    for (int c = 0; c < 3 * members; c++) buf[m++] = member_f[i][c];
  return m;
}

void PairMLPot::unpack_reverse_comm(int n, int *list, double *buf)
{
  int m = 0;
  for (int ii = 0; ii < n; ii++)
    for (int c = 0; c < 3 * members; c++) member_f[list[ii]][c] += buf[m++];
}

// `fix ID group pair N mlpot forces_std 0 energies_std 0`: sigma_i and the std of the atom
// energies of the local atoms (committees only)
void *PairMLPot::extract_peratom(const char *name, int &ncol)
{
  ncol = 0;
  if (members > 0 && strcmp(name, "forces_std") == 0) return forces_std;
  if (members > 0 && strcmp(name, "energies_std") == 0) return energies_std;
  return nullptr;
}

/* ---------------------------------------------------------------------------------------------- */

// Called by LAMMPS after a run's timing breakdown; covers the run's loop (not its setup).
void PairMLPot::finish()
{
  if (warn_frames > 0 && comm->me == 0)
    error->warning(FLERR, "pair_style mlpot: max force deviation above deviation_warn {:.6g} on "
                   "{} evaluated step(s) of this run (steps {} .. {}): the committee disagrees "
                   "there, the model may be extrapolating{}", deviation_warn, warn_frames,
                   first_warn_step, last_warn_step,
                   harvest_path.empty() ? std::string()
                                        : fmt::format("; {} frame(s) harvested to {}",
                                                      harvested_frames, harvest_path));
  double local[3] = {time_model, time_other, static_cast<double>(ncalls)}, total[3];
  MPI_Allreduce(local, total, 3, MPI_DOUBLE, MPI_SUM, world);
  double slowest = 0.0;
  MPI_Allreduce(&time_model, &slowest, 1, MPI_DOUBLE, MPI_MAX, world);
  const double n = comm->nprocs;
  if (comm->me == 0 && total[2] > 0) {
    const double model_s = total[0] / n, other_s = total[1] / n, calls = total[2] / n;
    const double pair_s = model_s + other_s;
    utils::logmesg(lmp, "pair_style mlpot timing (mean over {} rank(s), {} calls): model "
                   "{:.6g} s ({:.4g} ms/call; slowest rank {:.6g} s), graph + force/virial sums "
                   "{:.6g} s ({:.3g}% of the pair time)\n", comm->nprocs,
                   static_cast<long long>(calls + 0.5), model_s, 1e3 * model_s / calls, slowest,
                   other_s, pair_s > 0 ? 100.0 * other_s / pair_s : 0.0);
  }
}

double PairMLPot::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(node_of_atom.capacity() + atom_of_node.capacity() +
                               candidate.capacity() + hop.capacity() + frontier.capacity()) *
      sizeof(int);
  bytes += static_cast<double>(species.capacity() + edge_index.capacity() +
                               edge_begin.capacity() + edge_end.capacity()) * sizeof(int64_t);
  bytes += static_cast<double>(positions.capacity() + edge_vectors.capacity()) * sizeof(double);
  bytes += static_cast<double>(nmax_deviation) * (3 * members + 2) * sizeof(double);
  return bytes;
}
