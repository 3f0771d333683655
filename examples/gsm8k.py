"""Train a masked diffusion LM on gsm8k with DiPOD: `accelerate launch examples/gsm8k.py --config recipes/gsm8k/fpo_dipod.yaml`.

All options: `python examples/gsm8k.py --help` (script, DiPODConfig and ModelConfig fields; YAML keys alike).
"""

from dipod_trl.runner import main

if __name__ == "__main__":
    main("gsm8k")
