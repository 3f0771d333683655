"""Train a masked diffusion LM on countdown with DiPOD: `accelerate launch examples/countdown.py --config recipes/countdown/fpo_dipod.yaml`.

All options: `python examples/countdown.py --help` (script, DiPODConfig and ModelConfig fields; YAML keys alike).
"""

from pathlib import Path

from tiny import save_tiny  # examples/tiny.py: the model of --create_tiny_model smoke runs

from dipod_trl.runner import cli

if __name__ == "__main__":
    # no arguments: the paper's recipe recipes/countdown/fpo_dipod.yaml where it can run, else the offline command
    cli("countdown", tiny_model_builder=save_tiny, recipes=Path(__file__).resolve().parents[1] / "recipes" / "countdown")
