"""The PULSE latent search: `solve(prior, lowres, SolveConfig(...))` -> SolveResult (see pulse.py)."""

from .pulse import CandidateResult, Progress, SolveConfig, SolveResult, candidate_seeds, solve

__all__ = ["solve", "SolveConfig", "SolveResult", "CandidateResult", "Progress", "candidate_seeds"]
