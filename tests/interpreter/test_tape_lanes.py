"""How the tape runs a plan's products (`_tape_products.lanes_for`): one operation a step for a
plan of many small products, lane steps for a plan of a few large dense ones (lattice Boltzmann's
48 products of 16,425 multiplications on average ran 903,720 steps of one operation) or of more
than `SCALAR_STEPS_MAX_MULS` multiplications."""

from alphagrad.interpreter import _tape_products
from alphagrad.interpreter._tape_products import LANE_MIN_MEAN_MULS, lanes_for


def test_many_small_products_run_one_operation_a_step():
    assert lanes_for([16] * 1000 + [240] * 100) == 1
    assert lanes_for([LANE_MIN_MEAN_MULS - 1] * 40) == 1


def test_a_few_large_products_run_lane_steps():
    assert lanes_for([3600] * 20 + [72_000] * 4 + [2 * LANE_MIN_MEAN_MULS] * 24) == 1024
    assert lanes_for([LANE_MIN_MEAN_MULS] * 40) > 1


def test_long_plans_run_lane_steps(monkeypatch):
    monkeypatch.setattr(_tape_products, "SCALAR_STEPS_MAX_MULS", 1000)
    assert lanes_for([16] * 100) == 16
