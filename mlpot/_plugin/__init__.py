"""Holds the compiled LAMMPS plugin (``mlpotplugin.so``); LAMMPS auto-loads it from here."""
