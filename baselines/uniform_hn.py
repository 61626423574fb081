"""Negatives from the same FAISS pool as BACL, with no policy and no curriculum.

`uniform_hn` draws them uniformly from the k candidates; the `hardest` preset takes the
top boundary scores (VSE++-style max violation over the pool); the `uniform_data` preset
draws them uniformly from the whole training set (Theorem 4.2's uniform sampling).
"""
from dataclasses import dataclass

from bacl.method import Method, MethodConfig


@dataclass
class UniformHardNegativesConfig(MethodConfig):
    negatives: str = "uniform"


class UniformHardNegatives(Method):
    Config = UniformHardNegativesConfig
    NEGATIVES = ("uniform", "hardest", "uniform_data")
