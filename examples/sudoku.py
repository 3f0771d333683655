"""Train a masked diffusion LM on sudoku with DiPOD: `accelerate launch examples/sudoku.py --config recipes/sudoku/fpo_dipod.yaml`.

All options: `python examples/sudoku.py --help` (script, DiPODConfig and ModelConfig fields; YAML keys alike).
"""

from dipod_trl.runner import main

if __name__ == "__main__":
    main("sudoku")
