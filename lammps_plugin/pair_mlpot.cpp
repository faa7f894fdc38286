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
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>

using namespace LAMMPS_NS;

namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b)
{
  return std::chrono::duration<double>(b - a).count();
}
}    // namespace

/* ---------------------------------------------------------------------------------------------- */

PairMLPot::PairMLPot(LAMMPS *lmp) :
    Pair(lmp), threads_requested(0), prune(true), message_hops(1), cutoff(0.0),
    interaction_range(0.0), energy_factor(1.0), n_edges(0), time_model(0.0), time_other(0.0),
    ncalls(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;                  // neighbours of ghosts: message passing updates them too
  centroidstressflag = CENTROID_AVAIL;
  no_virial_fdotr_compute = 1;     // the virial is summed over edges, exactly as in ASE
  device = "cpu";
}

PairMLPot::~PairMLPot()
{
  if (copymode) return;
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
   pair_style mlpot [device cpu|cuda|cuda:N] [threads N] [prune yes|no]
------------------------------------------------------------------------------------------------ */

void PairMLPot::settings(int narg, char **arg)
{
  device = "cpu";
  threads_requested = 0;
  prune = true;
  for (int iarg = 0; iarg < narg; iarg += 2) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "pair_style mlpot: keyword {} needs a value; syntax: pair_style mlpot "
                 "[device cpu|cuda] [threads N] [prune yes|no]", key);
    if (key == "device") {
      device = arg[iarg + 1];
      const bool cuda = device == "cuda" ||
          (device.rfind("cuda:", 0) == 0 && utils::is_integer(device.substr(5)));
      if (device != "cpu" && !cuda)
        error->all(FLERR, "pair_style mlpot: unknown device {}; use cpu, cuda or cuda:N", device);
    } else if (key == "prune") {
      prune = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else if (key == "threads") {
      threads_requested = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (threads_requested < 1)
        error->all(FLERR, "pair_style mlpot: threads must be at least 1, got {}",
                   threads_requested);
    } else {
      error->all(FLERR, "pair_style mlpot: unknown keyword {}; syntax: pair_style mlpot "
                 "[device cpu|cuda] [threads N] [prune yes|no]", key);
    }
  }
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
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff for mlpot: type count mismatch: {} atom types need {} species "
               "symbols (or NULL) after the model file, got {}", ntypes, ntypes, narg - 3);
  check_units();
  if (!model || model_path != arg[2] || model_device != device) load(arg[2]);

  const std::vector<std::string> &known = model->info().species;
  type_species.assign(ntypes + 1, -1);
  for (int itype = 1; itype <= ntypes; itype++) {
    const std::string symbol = arg[2 + itype];
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
void PairMLPot::load(const std::string &path)
{
  mlpot::LoadOptions options;
  options.device = device;
  options.num_threads = resolve_threads();
  std::string message;
  model.reset();
  try {
    model = mlpot::load_model(path, options);
  } catch (const std::exception &e) {
    message = e.what();
  }
  int failed = message.empty() ? 0 : 1, nfailed = 0;
  MPI_Allreduce(&failed, &nfailed, 1, MPI_INT, MPI_SUM, world);
  if (nfailed == comm->nprocs) error->all(FLERR, "pair_style mlpot: " + message);
  if (failed) error->one(FLERR, "pair_style mlpot: " + message);
  if (nfailed) error->all(FLERR, "pair_style mlpot: loading the model failed on another rank");

  model_path = path;
  model_device = device;
  const mlpot::ModelInfo &info = model->info();
  cutoff = info.cutoff;
  interaction_range = info.interaction_range;
  // message-passing hops: what the ghost shell was sized for (interaction range / cutoff)
  message_hops = std::max(info.num_interactions,
                          static_cast<int>(std::ceil(info.interaction_range / info.cutoff - 1e-6)));
  message_hops = std::max(message_hops, 1);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style mlpot: {} ({} model, species {}, cutoff {} A, {} "
                   "interaction(s), range {} A; exported with mlpot {}, torch {}): {}\n", path,
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
  if (model_device != device) load(model_path);    // pair_style re-issued with another device
  const int threads = model->set_num_threads(resolve_threads());

  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // Message passing: a local atom's energy depends on atoms up to interaction_range away, so
  // ghosts must reach that far (+ skin: atoms move up to skin/2 each between rebuilds). The
  // neighbour lists themselves stay at cutoff + skin: only the ghost shell grows.
  const double needed = interaction_range + neighbor->skin;
  if (comm->cutghostuser < needed) {
    comm->cutghostuser = needed;
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style mlpot: communication cutoff set to {:.6g} A (interaction "
                     "range {:.6g} A + skin {:.6g} A), {} torch thread(s) per rank\n", needed,
                     interaction_range, neighbor->skin, threads);
  }
  time_model = time_other = 0.0;
  ncalls = 0;
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
  if (n_local_nodes == 0) {    // nothing local to this rank's energy: no forces either
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

  accumulate(out.edge_gradient, out.atom_energies, out.energy, n_local_nodes);
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
        if (dx * dx + dy * dy + dz * dz >= cutsq_model) continue;
        candidate[e] = j;
        vec[3 * e] = dx;
        vec[3 * e + 1] = dy;
        vec[3 * e + 2] = dz;
        e++;
      }
    }
    edge_end[i] = e;
  }

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

// Energies, forces and virials from the edge gradient (the sums of mlpot/edge_sums.py).
void PairMLPot::accumulate(const double *gradient, const double *atom_energies, double energy,
                           int64_t n_local_nodes)
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

/* ---------------------------------------------------------------------------------------------- */

// Called by LAMMPS after a run's timing breakdown; covers the run's loop (not its setup).
void PairMLPot::finish()
{
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
  return bytes;
}
