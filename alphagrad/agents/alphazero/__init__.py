"""The AlphaZero agent: a permutation-equivariant policy-value network over vertex tokens,
Gumbel MuZero search (mctx) with the env core as a perfect model, and self-play training warm-
started from demonstrations (classic orders and a short plain search; see `_demos`), with
cheap raw-policy games beside the search games. The best order is always one the agent played.

    >>> from alphagrad.agents import alphazero
    >>> from alphagrad.tasks import load_graph
    >>> g = load_graph("ref:PropaneCombustion")
    >>> result = alphazero.train(g, alphazero.AlphaZeroConfig(iterations=50), out_dir="runs/propane")
    >>> result.best_cost, result.baselines["PropaneCombustion"]
    >>> alphazero.solve(load_graph("ref:HumanHeartDipole"), "runs/propane").cost
"""

from alphagrad.agents.alphazero._checkpoints import load_params
from alphagrad.agents.alphazero._config import AlphaZeroConfig, ConfigError
from alphagrad.agents.alphazero._network import PolicyValueNet, inverse_value_transform, value_transform
from alphagrad.agents.alphazero._rundir import best_order_path
from alphagrad.agents.alphazero._solve import SolveResult, solve
from alphagrad.agents.alphazero._train import TrainResult, train

__all__ = [
    "AlphaZeroConfig",
    "ConfigError",
    "PolicyValueNet",
    "SolveResult",
    "TrainResult",
    "best_order_path",
    "inverse_value_transform",
    "load_params",
    "solve",
    "train",
    "value_transform",
]
