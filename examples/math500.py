"""Train a masked diffusion LM on math500 with DiPOD: `accelerate launch examples/math500.py --config recipes/math500/fpo_dipod.yaml`.

All options: `python examples/math500.py --help` (script, DiPODConfig and ModelConfig fields; YAML keys alike).
"""

from dipod_trl.runner import main

if __name__ == "__main__":
    main("math500")
