"""Train a masked diffusion LM on math500 with DiPOD: `accelerate launch examples/math500.py --config recipes/math500/fpo_dipod.yaml`.

All options: `python examples/math500.py --help` (script, DiPODConfig and ModelConfig fields; YAML keys alike).
"""

from pathlib import Path

from tiny import save_tiny  # examples/tiny.py: the model of --create_tiny_model smoke runs

from dipod_trl.runner import cli

if __name__ == "__main__":
    # no arguments: the paper's recipe recipes/math500/fpo_dipod.yaml where it can run, else the offline command
    cli("math500", tiny_model_builder=save_tiny, recipes=Path(__file__).resolve().parents[1] / "recipes" / "math500")
