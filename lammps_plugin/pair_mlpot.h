/* -*- c++ -*- -----------------------------------------------------------------------------------
   pair_style mlpot: machine-learned potentials exported by mlpot (https://github.com/..., MIT).

   pair_style mlpot [device cpu|cuda|cuda:N] [threads N] [prune yes|no] [fold_ghosts yes|no]
                    [deviation_file FILE] [deviation_every N] [calibrated yes|no]
                    [calibration S|FILE] [deviation_warn X] [deviation_harvest FILE]
                    [deviation_stop Y]
   pair_coeff * * model.pt Sym1 Sym2 ...   (one model species or NULL per atom type)
   pair_coeff * * a.pt b.pt c.pt Sym1 ...  (several files: run as one committee)

   A committee file (docs/committee.md) runs as its mean; the members' forces (same edge sums,
   reverse-communicated) give the per-atom force deviation sigma_i and the members' atom energies
   their std, readable with `fix ID all pair N mlpot forces_std 0 energies_std 0`, and the global
   max/min/avg of sigma and the std of the energy (`compute ID all pair mlpot` vector, and the
   deviation file). Frames with max sigma above deviation_warn can be harvested to an
   extended-XYZ file for labelling.

   Local and ghost atoms within the model's interaction range become the nodes of a graph, every
   pair closer than the cutoff a directed edge (both directions); the model returns the local
   energy and dE/d(edge vector), from which forces and (per-atom) virials follow. Ghost forces
   are summed onto their owners by LAMMPS' reverse communication (newton_pair on). On one rank
   (fold_ghosts yes, the default) the ghosts are folded onto their owners instead: the nodes are
   the local atoms, with edges to periodic images, as in ASE.
   See docs/lammps_plugin.md.
------------------------------------------------------------------------------------------------ */

#ifndef LMP_PAIR_MLPOT_H
#define LMP_PAIR_MLPOT_H

#include "pair.h"

#include <cfloat>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlpot {
class DeployedModel;
struct ModelOutput;
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
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  void *extract_peratom(const char *, int &) override;

 protected:
  std::unique_ptr<mlpot::DeployedModel> model;
  std::vector<std::string> model_files;    // one file, or several run as a committee
  std::string model_path;                 // the files, space-separated (for messages)
  std::string model_device;      // device the loaded model runs on
  std::string device;            // requested by pair_style
  int threads_requested;         // pair_style threads N, or 0
  bool prune;                    // hand the model only what local energies can depend on
  bool fold_ghosts;              // pair_style ... fold_ghosts yes|no
  bool fold;                     // this run folds ghosts onto owners (fold_ghosts, one rank)
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
  std::vector<int> local_of_tag;      // folded graph: atom ID -> local atom index
  std::vector<int> atom_of_node;
  std::vector<int64_t> species;
  std::vector<double> positions;      // [n_nodes][3]
  std::vector<int64_t> edge_index;    // [2][n_edges]
  std::vector<double> edge_vectors;   // [n_edges][3]
  int64_t n_edges;

  // committee deviation (members > 0 when the model is a committee file)
  int members;                    // M
  double deviation_scale;         // calibration scale applied to sigma_i (1 when raw)
  bool use_calibration;           // pair_style ... calibrated yes|no
  std::string calibration_value;  // calibration S|FILE for several files, "" for none
  std::string deviation_path;     // deviation_file, "" for none
  std::string harvest_path;       // deviation_harvest, "" for none
  int deviation_every;
  double deviation_warn, deviation_stop;    // <= 0: off
  bool outputs_open;              // the files above are open (rank 0); reset by pair_style
  FILE *deviation_fp, *harvest_fp;    // rank 0 only
  bigint last_written_step;
  bigint warn_frames, first_warn_step, last_warn_step, harvested_frames;
  int nmax_deviation;
  double **member_f;              // [nmax][3M]: member forces, summed like f
  double *forces_std;             // [nmax]: sigma_i of the local atoms
  double *energies_std;           // [nmax]: std of the members' atom energies, local atoms
  double deviation[4];            // max, min, avg sigma; std of the total energy
  double mean_energy;             // the committee-mean total energy (all ranks)
  double deviation_atoms;         // atoms of the model's types (all ranks): devi_e = std / this

  // wall-clock accounting, printed by finish(): model call vs. everything else in compute()
  double time_model, time_other;
  long long ncalls;

  void allocate();
  void check_units();
  int resolve_threads() const;
  void load(const std::vector<std::string> &files);
  int64_t build_graph(int64_t &n_local_nodes);
  int64_t build_folded_graph(int64_t &n_local_nodes);
  struct Closest {    // the shortest edge seen while building a graph
    double rsq = DBL_MAX;
    int i = 0, j = 0;
    void update(double r2, int a, int b)
    {
      if (r2 < rsq) {
        rsq = r2;
        i = a;
        j = b;
      }
    }
  };
  void check_overlap(const Closest &closest);
  void check_finite(const mlpot::ModelOutput &out);
  void accumulate(const double *gradient, const double *atom_energies, double energy,
                  int64_t n_local_nodes, const double *member_gradients);
  double calibration_scale();
  FILE *open_output(const std::string &path, const char *keyword);
  void member_mean(int i, double mean[3]) const;
  void committee_deviation(const double *member_energies, const double *member_atom_energies,
                           int64_t n_local_nodes);
  void step_outputs();
  void harvest_frame();
};

}    // namespace LAMMPS_NS

#endif
