/* -*- c++ -*- -----------------------------------------------------------------------------------
   pair_style mlpot: machine-learned potentials exported by mlpot (https://github.com/..., MIT).

   pair_style mlpot [device cpu|cuda|cuda:N] [threads N] [prune yes|no]
   pair_coeff * * model.pt Sym1 Sym2 ...   (one model species or NULL per atom type)

   Local and ghost atoms within the model's interaction range become the nodes of a graph, every
   pair closer than the cutoff a directed edge (both directions); the model returns the local
   energy and dE/d(edge vector), from which forces and (per-atom) virials follow. Ghost forces
   are summed onto their owners by LAMMPS' reverse communication (newton_pair on).
   See docs/lammps_plugin.md.
------------------------------------------------------------------------------------------------ */

#ifndef LMP_PAIR_MLPOT_H
#define LMP_PAIR_MLPOT_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlpot {
class DeployedModel;
}

namespace LAMMPS_NS {

class PairMLPot : public Pair {
 public:
  PairMLPot(class LAMMPS *);
  ~PairMLPot() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void finish() override;
  double memory_usage() override;

 protected:
  std::unique_ptr<mlpot::DeployedModel> model;
  std::string model_path;
  std::string model_device;      // device the loaded model runs on
  std::string device;            // requested by pair_style
  int threads_requested;         // pair_style threads N, or 0
  bool prune;                    // hand the model only what local energies can depend on
  int message_hops;              // message-passing layers of the model
  double cutoff;                 // model cutoff (Å)
  double interaction_range;      // ghost-shell width the model needs (Å)
  double energy_factor;          // eV -> LAMMPS energy units
  std::vector<int> type_species;  // atom type -> model species index, -1 for NULL

  // the graph handed to the model, rebuilt every step (reused storage)
  std::vector<int> candidate;         // neighbour atom of each candidate edge (< cutoff)
  std::vector<int64_t> edge_begin, edge_end;    // candidate edges of each centre atom
  std::vector<int> hop;               // hops from the nearest local atom
  std::vector<int> frontier;          // breadth-first search queue
  std::vector<int> node_of_atom;      // LAMMPS atom index -> node, -1 if left out
  std::vector<int> atom_of_node;
  std::vector<int64_t> species;
  std::vector<double> positions;      // [n_nodes][3]
  std::vector<int64_t> edge_index;    // [2][n_edges]
  std::vector<double> edge_vectors;   // [n_edges][3]
  int64_t n_edges;

  // wall-clock accounting, printed by finish(): model call vs. everything else in compute()
  double time_model, time_other;
  long long ncalls;

  void allocate();
  void check_units();
  int resolve_threads() const;
  void load(const std::string &path);
  int64_t build_graph(int64_t &n_local_nodes);
  void accumulate(const double *gradient, const double *atom_energies, double energy,
                  int64_t n_local_nodes);
};

}    // namespace LAMMPS_NS

#endif
