"""How straight a model's ODE trajectories are, on the rectified-flow interpolation (seed 003; Liu et al. 2023)."""

import torch

from ..processes import RectifiedFlow
from ..sampling import ode_step


@torch.no_grad()
def straightness(D, z, *, steps=64, sigma_max=80.0, cond=None):
    """Liu et al.'s S(Z) = int_0^1 E ||(Z1 - Z0) - dZ_t/dt||^2 dt over the model's own Euler trajectories on
    the flow's uniform-t grid, divided by E ||Z1 - Z0||^2: 0 for straight lines, and scale-free. Z_t is the
    flow coordinate (1 - t) x of the VE state x at level sigma = t / (1 - t); any denoiser D(x, sigma) has
    such trajectories (its PF-ODE), so a teacher and its flows compare on one scale. z: unit noise."""
    flow = RectifiedFlow()
    grid = flow.sampling_grid(steps, 0.0, sigma_max, 1.0).to(torch.float64)
    t = flow.t_of_ve_sigma(grid)
    x = (sigma_max * z).double()
    Z = [x * (1 - t[0])]
    for i in range(steps):
        x = ode_step(D, x, grid[i], grid[i + 1], "euler", cond, dtype=z.dtype)
        Z.append(x * (1 - t[i + 1]))
    dt = t[:-1] - t[1:]                                        # > 0: the trajectory runs from t_max to 0
    chord = (Z[0] - Z[-1]) / (t[0] - t[-1])
    bend = sum(dt[i] * ((Z[i] - Z[i + 1]) / dt[i] - chord).square().flatten(1).sum(1) for i in range(steps))
    return float((bend.mean() / ((t[0] - t[-1]) * chord.square().flatten(1).sum(1).mean())))
