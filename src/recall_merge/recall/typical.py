"""Stage 1 of RECALL: typical samples of the newest task, picked by clustering in M_N's space."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch


def select_typical(features: torch.Tensor, count: int, *, seed: int,
                   selection: Literal["kmeans", "random"] = "kmeans") -> list[int]:
    """Indices of ``count`` representative rows of ``features`` (n, d).

    K-means with ``count`` clusters; from each cluster the sample nearest its centroid. A sample
    is never picked twice (with duplicate texts two centroids can share a nearest point). The
    result is sorted by cluster order, deterministic for a seed.
    """
    n = features.shape[0]
    if count >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    if selection == "random":
        return sorted(rng.choice(n, size=count, replace=False).tolist())
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    data = features.to(torch.float64).numpy()
    with warnings.catch_warnings():
        if len(np.unique(data, axis=0)) < count:
            # sklearn's "Number of distinct clusters found smaller than n_clusters": the inputs
            # are the same after truncation, which the merge's RecallSampleWarning names with
            # its fix; one warning, ours, instead of two
            warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=count, n_init=10, random_state=seed).fit(data)
    distances = ((data[:, None, :] - kmeans.cluster_centers_[None, :, :]) ** 2).sum(-1)  # (n, count)
    chosen: list[int] = []
    for cluster in range(count):
        for index in np.argsort(distances[:, cluster], kind="stable"):
            if int(index) not in chosen:
                chosen.append(int(index))
                break
    return chosen
