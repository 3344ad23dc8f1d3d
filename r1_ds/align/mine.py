"""MINE (Belghazi et al. 2018) mutual-information estimates and the pair weights derived from them.

The Donsker-Varadhan bound, with a critic T (a concat MLP) and the product of marginals Q drawn by shuffling
the batch:

    I(X; Y) >= E_P[T(x, y)] - log E_Q[exp T(x, y')]

Its plain gradient is biased by the mini-batch estimate of E_Q[e^T] in the denominator of
grad log E_Q[e^T] = grad E_Q[e^T] / E_Q[e^T]; MINE replaces that denominator by an exponential moving average
(rate `ema_rate`), kept in log space here so that large critic values do not overflow. `variant="smile"` is
SMILE (Song & Ermon 2020): the estimate clips e^T to [e^-clip, e^clip] in the marginal term, and the critic
trains on the Jensen-Shannon bound, which keeps the variance of the DV bound at high MI in check.
Plain torch; the estimator reads detached features, so it is a signal for the loss weights, not a loss term.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=0) - math.log(x.shape[0])


class MineEstimator:
    """A critic, its Adam optimiser and the moving average; `update` trains on a batch, `estimate` reads the bound.

    dim_a, dim_b: feature sizes of the two sides; hidden: critic width (two hidden layers); lr: Adam's step;
    ema_rate: the moving-average rate of E_Q[e^T]; variant: "mine" or "smile"; clip: SMILE's clip; seed:
    critic initialisation and the shuffles (the same seed gives the same estimates on every rank).
    """

    def __init__(
        self,
        dim_a: int,
        dim_b: int,
        *,
        hidden: int = 128,
        lr: float = 1e-3,
        ema_rate: float = 0.01,
        variant: str = "mine",
        clip: float = 5.0,
        seed: int = 0,
    ):
        if variant not in ("mine", "smile"):
            raise ValueError(f"MineEstimator: variant={variant!r} must be 'mine' or 'smile'")
        gen = torch.Generator().manual_seed(seed)
        self.critic = nn.Sequential(
            nn.Linear(dim_a + dim_b, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        with torch.no_grad():
            for p in self.critic.parameters():  # PyTorch's default init, but from our generator
                bound = 1 / math.sqrt(p.shape[-1] if p.dim() > 1 else hidden)
                p.uniform_(-bound, bound, generator=gen)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.ema_rate, self.variant, self.clip, self.seed = ema_rate, variant, clip, seed
        self.log_ema: float | None = None  # log of the moving average of E_Q[e^T]
        self.updates = 0

    def _scores(self, a: torch.Tensor, b: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic values on the joint pairs (a_i, b_i) and on shuffled pairs (a_i, b_perm(i))."""
        joint = self.critic(torch.cat([a, b], dim=1)).squeeze(1)
        marginal = self.critic(torch.cat([a, b[perm]], dim=1)).squeeze(1)
        return joint, marginal

    def _bound(self, joint: torch.Tensor, marginal: torch.Tensor) -> torch.Tensor:
        if self.variant == "smile":
            return joint.mean() - _log_mean_exp(marginal.clamp(-self.clip, self.clip))
        return joint.mean() - _log_mean_exp(marginal)

    def _perm(self, n: int, salt: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + salt)
        return torch.randperm(n, generator=gen)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """One critic step on the batch (a, b) (N, dim) of paired samples; returns the batch's bound (nats)."""
        a, b = a.detach().float(), b.detach().float()
        joint, marginal = self._scores(a, b, self._perm(a.shape[0], self.updates))
        lme = _log_mean_exp(marginal)
        if self.variant == "smile":  # value of the clipped DV bound, gradient of the JS bound
            loss = -(-F.softplus(-joint).mean() - F.softplus(marginal).mean())
        else:
            batch = float(lme.detach())
            r = self.ema_rate
            self.log_ema = (
                batch
                if self.log_ema is None
                else float(
                    torch.logaddexp(torch.tensor(math.log1p(-r) + self.log_ema), torch.tensor(math.log(r) + batch))
                )
            )
            # d/dT of exp(lme - log_ema) is grad E_Q[e^T] / ema: the bias-corrected gradient of log E_Q[e^T]
            loss = -(joint.mean() - torch.exp(lme - self.log_ema))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return float(self._bound(joint.detach(), marginal.detach()))

    @torch.no_grad()
    def estimate(self, a: torch.Tensor, b: torch.Tensor, *, salt: int = -1) -> float:
        """The bound (nats) of the current critic on (a, b), marginals from one fixed shuffle."""
        a, b = a.detach().float(), b.detach().float()
        return float(self._bound(*self._scores(a, b, self._perm(a.shape[0], salt))))

    def state_dict(self) -> dict:
        return {
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "log_ema": self.log_ema,
            "updates": self.updates,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.log_ema, self.updates, self.seed = state["log_ema"], state["updates"], state["seed"]


def pair_weights(
    estimates: dict[str, float], *, temperature: float = 1.0, low: float = 0.5, high: float = 2.0
) -> dict[str, float]:
    """Loss weight per pair from its MI estimate: w_p = P softmax(-I_p / temperature), clipped to [low, high].

    P is the number of pairs. The least-aligned pair (lowest estimate) gets the most weight; equal estimates give
    1 each; the weights sum to P before the clip, and each lies in [low, high] after it. A missing estimate
    (None or not finite) counts as the mean of the others."""
    finite = [v for v in estimates.values() if v is not None and math.isfinite(v)]
    fill = sum(finite) / len(finite) if finite else 0.0
    names = list(estimates)
    vals = torch.tensor(
        [estimates[p] if estimates[p] is not None and math.isfinite(estimates[p]) else fill for p in names],
        dtype=torch.float64,
    )
    w = len(names) * torch.softmax(-vals / temperature, dim=0)
    return {p: float(min(high, max(low, x))) for p, x in zip(names, w.tolist())}


def correlated_gaussians(n: int, d: int, rho: float, *, generator: torch.Generator | None = None):
    """(x, y), each (n, d): y = rho x + sqrt(1 - rho^2) eps per coordinate; true MI = -d/2 log(1 - rho^2) nats."""
    x = torch.randn(n, d, generator=generator)
    eps = torch.randn(n, d, generator=generator)
    return x, rho * x + math.sqrt(1 - rho * rho) * eps


def gaussian_mi(d: int, rho: float) -> float:
    """True mutual information of `correlated_gaussians` (nats)."""
    return -d / 2 * math.log(1 - rho * rho)


def rho_for_mi(d: int, mi: float) -> float:
    """The rho at which `correlated_gaussians` in d dimensions share `mi` nats."""
    return math.sqrt(1 - math.exp(-2 * mi / d))
