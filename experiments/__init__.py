"""One file per experiment, each ending with `EXPERIMENT = <its Experiment>()`: the interface
and a template to copy are in g5kdeploy/engine/experiment.py. Files here never import each
other."""
