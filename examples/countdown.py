"""Train a masked diffusion LM on countdown with DiPOD: `accelerate launch examples/countdown.py --config recipes/countdown/fpo_dipod.yaml`.

All options: `python examples/countdown.py --help` (script, DiPODConfig and ModelConfig fields; YAML keys alike).
"""

from dipod_trl.runner import main

if __name__ == "__main__":
    main("countdown")
